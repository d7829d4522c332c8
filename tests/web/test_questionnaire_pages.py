"""The questionnaire on the pages: accessible markup, every text in both languages, the
no-JavaScript result with and without a photo, the guidance page and the privacy note."""

from __future__ import annotations

import re

import pytest
from markupsafe import escape
from web_support import lesion_jpeg

from mpoxscan.questionnaire import default_rules
from mpoxscan.web.i18n import load_catalogues

RULES = default_rules()
CATALOGUES = load_catalogues()


@pytest.fixture(autouse=True)
def fresh_cookies(client):
    client.cookies.clear()


def text_parts(fields: dict[str, str]) -> list[tuple[str, tuple]]:
    return [(name, (None, value)) for name, value in fields.items()]


@pytest.mark.parametrize("lang", ["en", "zh-CN"])
def test_every_question_rule_and_source_has_its_text(lang):
    texts = CATALOGUES[lang]
    for q in RULES.questions:
        assert texts[f"q.{q.id}"].strip()
        for value in q.values:
            assert f"q.{q.id}.{value}" in texts or f"q.answer.{value}" in texts, (q.id, value)
    for rule in RULES.rules:
        assert texts[f"rule.{rule.id}"].strip()
    for source in RULES.sources:
        assert texts[f"source.{source}"].strip()
    for name in RULES.recommendations:
        assert texts[f"advice.rec.{name}"].strip()
    for name in RULES.categories:
        assert texts[f"advice.cat.{name}"].strip()
    for section in {q.section for q in RULES.questions}:
        assert texts[f"q.section.{section}"].strip()


def test_the_questions_are_grouped_and_labelled_for_screen_readers(client):
    html = client.get("/?lang=en").text
    form = html[html.index('<form id="upload-form"') : html.index("</form>")]
    assert form.index('id="file-input"') < form.index('<details class="questions"')
    for q in RULES.questions:
        group = re.search(
            rf'<fieldset class="q [^"]*" data-question="{q.id}"[^>]*>\s*<legend>', form
        )
        assert group, q.id
    inputs = re.findall(r'<input type="(?:radio|checkbox)" id="(q-[\w-]+)"', form)
    assert len(inputs) == sum(len(q.values) for q in RULES.questions)
    for input_id in inputs:
        assert f'<label for="{input_id}">' in form
    assert CATALOGUES["en"]["q.section.exposure"] in form


def test_the_questions_are_in_chinese_on_the_chinese_page(client):
    html = client.get("/?lang=zh-CN").text
    zh = CATALOGUES["zh-CN"]
    for key in ("q.open", "q.contact_case", "q.sites.anogenital", "q.answer.not_sure"):
        assert zh[key] in html


def test_no_js_answers_alone_show_the_advice_first_then_why(client):
    fields = {"q.contact_case": "yes", "q.rash": "yes", "q.sites.face": "on", "explain": "on"}
    html = client.post("/result?lang=en", files=text_parts(fields)).text
    en = CATALOGUES["en"]
    advice = html.index(en["advice.rec.get_tested"])
    assert advice < html.index(en["advice.why"]) < html.index(en["rule.rash-and-contact"])
    assert en["advice.cat.suspected_case"] in html
    assert en["advice.no_photo"] in html
    assert en["result.overall"] not in html  # no photo, no photo result
    assert 'href="/guidance#source-who-case-definitions-2024"' in html


def test_no_js_answers_with_a_photo_put_the_advice_above_the_photo_result(client):
    files = [
        *text_parts({"q.travel": "yes", "q.rash": "no"}),
        ("file", ("photo.jpg", lesion_jpeg(seed=7), "image/jpeg")),
    ]
    html = client.post("/result?lang=zh-CN", files=files).text
    zh = CATALOGUES["zh-CN"]
    assert html.index('class="card advice') < html.index(zh["result.overall"])
    assert zh["rule.exposure-without-rash"] in html
    assert zh["advice.no_photo"] not in html


def test_no_js_form_without_photo_or_answers_is_the_no_file_error(client):
    response = client.post("/result?lang=en", files=text_parts({"explain": "on"}))
    assert response.status_code == 422
    assert CATALOGUES["en"]["error.no_file"] in response.text


@pytest.mark.parametrize("lang", ["en", "zh-CN"])
def test_the_guidance_page_lists_every_source_and_rule(client, lang):
    html = client.get(f"/guidance?lang={lang}").text
    for source in RULES.sources.values():
        assert f'id="source-{source.id}"' in html
        assert f'href="{source.url}"' in html
    for rule in RULES.rules:
        assert str(escape(CATALOGUES[lang][f"rule.{rule.id}"])) in html
    assert RULES.version in html


@pytest.mark.parametrize("lang", ["en", "zh-CN"])
def test_the_privacy_page_says_answers_are_never_kept(client, lang):
    assert CATALOGUES[lang]["privacy.7"] in client.get(f"/privacy?lang={lang}").text
