"""The questionnaire in a real Chromium (Playwright, Debian's /usr/bin/chromium): the questions
filled in English and Chinese, with and without a photo, by mouse, keyboard and without
JavaScript; the recommendation shows first and its reasons underneath.

The app, browser and photos are the fixtures of ``test_browser.py``.
"""

from __future__ import annotations

import pytest
import test_browser
from test_browser import shoot, submit_and_wait, tab_to

from mpoxscan.questionnaire import advise, default_rules, parse_answers
from mpoxscan.web.i18n import load_catalogues

# The app, browser, page and photo fixtures of test_browser.py (pytest finds fixtures by name).
served_bundle = test_browser.served_bundle
base_url = test_browser.base_url
browser = test_browser.browser
console_errors = test_browser.console_errors
page = test_browser.page
photos = test_browser.photos

pytestmark = pytest.mark.browser

RULES = default_rules()
EN, ZH = (load_catalogues()[lang] for lang in ("en", "zh-CN"))


def answer(page, answers: dict) -> None:
    """Open the questions and tap each answer's visible label."""
    page.click("#questions > summary")
    for question, value in answers.items():
        for choice in value if isinstance(value, list) else [value]:
            page.click(f"label[for='q-{question}-{choice}']")


def shown_advice(page) -> tuple[str, list[str]]:
    """The recommendation's text and the ids of the rules listed under "why"."""
    advice = page.locator("#results .advice")
    rules = advice.locator(".advice-rules li")
    ids = [rules.nth(i).get_attribute("data-rule") for i in range(rules.count())]
    return advice.locator(".advice-recommendation").inner_text(), ids


def expected(answers: dict, band: str | None = None):
    return advise(parse_answers(answers, RULES), RULES, photo_band=band)


def shown_band(page, texts: dict[str, str]) -> str:
    badge = page.locator(".overall .band-badge").inner_text()
    return next(b for b in ("low", "uncertain", "high") if texts[f"band.{b}"] == badge)


def test_answers_without_a_photo_in_english(page):
    answers = {"new_partners": "yes", "rash": "yes", "sites": ["anogenital", "trunk"]}
    page.goto("/?lang=en")
    answer(page, answers)
    shoot(page, "20-questions-answered")
    submit_and_wait(page)
    advice = expected(answers)
    recommendation, rules = shown_advice(page)
    assert recommendation == EN[f"advice.rec.{advice.recommendation}"]
    assert advice.recommendation == "get_tested"
    assert rules == [r.id for r in advice.fired]
    why = page.locator("#results .advice").inner_text()
    assert EN["advice.no_photo"] in why
    assert EN["rule.rash-and-new-partners"] in why
    assert (
        why.index(recommendation)
        < why.index(EN["advice.why"])
        < why.index(EN["rule.rash-and-new-partners"])
    )
    assert page.locator("#results .overall").count() == 0
    assert page.evaluate("document.activeElement.id") == "results-title"
    shoot(page, "21-advice-no-photo")


def test_answers_with_a_photo_in_chinese(page, photos):
    answers = {"travel": "yes", "rash": "no", "symptoms": ["sore_throat"]}
    page.goto("/?lang=zh-CN")
    page.set_input_files("#file-input", str(photos["lesion"]))
    answer(page, answers)
    submit_and_wait(page)
    band = shown_band(page, ZH)
    advice = expected(answers, band)
    recommendation, rules = shown_advice(page)
    assert recommendation == ZH[f"advice.rec.{advice.recommendation}"]
    assert rules == [r.id for r in advice.fired]
    assert "exposure-without-rash" in rules
    assert ZH["rule.exposure-without-rash"] in page.locator("#results .advice").inner_text()
    # The recommendation comes first, the photo result after it.
    top = "(s) => document.querySelector(s).getBoundingClientRect().top"
    assert page.evaluate(top, "#results .advice") < page.evaluate(top, "#results .overall")
    shoot(page, "22-advice-with-photo-chinese")


def test_answers_with_a_photo_in_english_never_lower_the_advice(page, photos):
    answers = {"contact_case": "yes", "symptoms": ["fever"]}
    page.goto("/?lang=en")
    page.set_input_files("#file-input", str(photos["lesion"]))
    answer(page, answers)
    submit_and_wait(page)
    band = shown_band(page, EN)
    recommendation, rules = shown_advice(page)
    assert recommendation == EN["advice.rec.get_tested"]  # whatever the photo's band
    assert rules[0] == "contact-with-symptoms"
    assert ("photo-high" in rules) == (band == "high")
    category = page.locator("#results .advice-category").get_attribute("data-category")
    assert category == "suspected_case"


def test_answers_without_a_photo_in_chinese(page):
    answers = {"contact_case": "yes", "rash": "no"}
    page.goto("/?lang=zh-CN")
    answer(page, answers)
    submit_and_wait(page)
    recommendation, rules = shown_advice(page)
    assert recommendation == ZH["advice.rec.watch"]
    assert rules == ["contact-without-rash"]
    advice = page.locator("#results .advice").inner_text()
    assert ZH["advice.cat.contact"] in advice
    assert ZH["rule.contact-without-rash"] in advice
    assert ZH["source.who-surveillance-2024"] in advice


def test_nothing_chosen_and_nothing_answered_asks_for_one(page):
    page.goto("/?lang=en")
    page.click("#submit")
    assert page.locator("#form-message").inner_text() == EN["q.need_input"]
    assert page.locator("#results").is_hidden()


def test_the_questions_work_from_the_keyboard(page):
    page.goto("/?lang=en")
    page.focus("#questions > summary")
    page.keyboard.press("Enter")  # opens the questions
    assert page.evaluate("document.querySelector('#questions').open")
    assert tab_to(page, "q-contact_case-yes", 4) == "solid"  # the ring shows on the answer
    page.keyboard.press("ArrowRight")  # radio groups move with the arrow keys
    assert page.evaluate("document.querySelector('#q-contact_case-no').checked")
    page.keyboard.press("Tab")  # to the next question's group
    page.keyboard.press("Space")
    assert page.evaluate("document.querySelector('#q-new_partners-yes').checked")


def test_the_questions_work_without_javascript(browser, base_url):
    context = browser.new_context(java_script_enabled=False, locale="zh-CN", base_url=base_url)
    page = context.new_page()
    try:
        page.goto("/?lang=zh-CN")
        answer(page, {"rash": "yes", "sites": ["mouth"], "progression": "yes"})
        page.click("#submit")
        page.wait_for_url("**/result**")
        advice = page.locator(".advice")
        assert advice.get_attribute("data-recommendation") == "get_tested"
        assert advice.locator(".advice-recommendation").inner_text() == ZH["advice.rec.get_tested"]
        assert ZH["rule.characteristic-rash"] in advice.inner_text()
        shoot(page, "23-advice-no-js-chinese")
    finally:
        context.close()


def test_the_questions_fit_a_phone(browser, base_url):
    context = browser.new_context(
        viewport={"width": 375, "height": 812}, is_mobile=True, has_touch=True, base_url=base_url
    )
    page = context.new_page()
    try:
        page.goto("/?lang=en")
        answer(page, {"rash": "yes", "sites": ["hands_feet", "face"], "lesion_count": "many"})
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        label = page.locator("label[for='q-lesion_count-many']").bounding_box()
        assert label["height"] >= 44  # a comfortable tap target
        page.locator("#q-section-rash").scroll_into_view_if_needed()
        shoot(page, "24-phone-questions", full_page=False)
    finally:
        context.close()
