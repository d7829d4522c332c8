"""The page in a real Chromium: the app runs under uvicorn, Playwright drives /usr/bin/chromium.

The served model is the trained bundle in ``models/default`` when it exists (then a real MSLD
mpox photo is uploaded, when the data folder is there), otherwise the small real bundle of
``web_support`` with a generated lesion photo. Screenshots go to ``test-output/screenshots/``.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pillow_heif
import pytest
from PIL import Image
from web_support import MSLD_DIR, cat_jpeg, healthy_jpeg, lesion_jpeg

pytestmark = pytest.mark.browser

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REAL_BUNDLE = REPO_ROOT / "models/default"
SCREENSHOTS = REPO_ROOT / "test-output/screenshots"
LOCALES = REPO_ROOT / "src/mpoxscan/web/locales"
PERCENT = re.compile(r"^(<1|>99|\d{1,2})%$")


def catalogue(lang: str) -> dict[str, str]:
    return json.loads((LOCALES / f"{lang}.json").read_text(encoding="utf-8"))


EN, ZH = catalogue("en"), catalogue("zh-CN")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served_bundle(web_bundle) -> tuple[Path, bool]:
    """``(bundle_dir, is_the_trained_model)``."""
    # The trained model refuses generated pictures as out of domain: it is served only when
    # real photos are there to upload.
    if (REAL_BUNDLE / "model.json").is_file() and MSLD_DIR.is_dir():
        return REAL_BUNDLE, True
    return web_bundle, False


@pytest.fixture(scope="module")
def base_url(served_bundle) -> Iterator[str]:
    """The real app under uvicorn on a free local port, in a background thread."""
    yield from _serve(served_bundle[0])


@pytest.fixture(scope="module")
def no_lesion_url(no_lesion_bundle) -> Iterator[str]:
    """The app serving the small bundle with a "no lesion seen" head."""
    yield from _serve(no_lesion_bundle)


def _serve(bundle_dir: Path) -> Iterator[str]:
    import uvicorn

    from mpoxscan.web.app import create_app
    from mpoxscan.web.settings import Settings

    app = create_app(Settings(bundle_dir=bundle_dir, rate_limit_per_minute=0))
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the app did not start under uvicorn")
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=15)


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, driven by Playwright (never a downloaded browser build)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing; install Debian's chromium (make browser)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def console_errors() -> list[str]:
    """Script and console errors of ``page``; a test that expects one removes it."""
    return []


@pytest.fixture
def page(browser, base_url, console_errors):
    """A fresh English page; fails the test on any script error or console error."""
    context = browser.new_context(
        viewport={"width": 1280, "height": 900}, locale="en-US", base_url=base_url
    )
    page = context.new_page()
    problems = console_errors
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: (
            problems.append(f"console {message.type}: {message.text}")
            if message.type == "error"
            else None
        ),
    )
    yield page
    context.close()
    # A CSP violation or a failed request shows up as a console error.
    assert problems == []


@pytest.fixture(scope="module")
def photos(tmp_path_factory, served_bundle) -> dict[str, Path]:
    """The files the tests upload."""
    folder = tmp_path_factory.mktemp("uploads")
    mpox = MSLD_DIR / "Monkey Pox" / "P13_1.jpg"
    if served_bundle[1] and mpox.is_file():
        shutil.copy(mpox, folder / "lesion.jpg")
    else:
        (folder / "lesion.jpg").write_bytes(lesion_jpeg(seed=60, size=224))
    (folder / "lesion2.jpg").write_bytes(lesion_jpeg(seed=61, positive=False, size=224))
    (folder / "cat.jpg").write_bytes(cat_jpeg())
    (folder / "notes.jpg").write_text("These are my notes, not a photo.\n" * 10)
    pillow_heif.register_heif_opener()  # lets Pillow write the iPhone-style HEIC photo
    Image.open(folder / "lesion.jpg").save(folder / "iphone.heic", format="HEIF")
    return {path.stem: path for path in folder.iterdir()}


def shoot(page, name: str, full_page: bool = True) -> None:
    """Save a screenshot (a full-page one re-lays out a mobile page at desktop width, so
    phone screenshots show the viewport only)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)


def submit_and_wait(page) -> None:
    page.click("#submit")
    page.wait_for_selector("#status-text:not(:empty)")
    page.wait_for_function(
        "() => !document.querySelector('#upload-form').hasAttribute('aria-busy')", timeout=60_000
    )


def test_a_lesion_photo_gets_band_probability_and_heat_map(page, photos):
    page.goto("/")
    page.set_input_files("#file-input", str(photos["lesion"]))
    assert page.locator("#previews li").count() == 1
    assert page.locator("#previews img").get_attribute("alt") == "Preview of photo 1"
    shoot(page, "01-photo-chosen")
    submit_and_wait(page)

    results = page.locator("#results")
    assert results.is_visible()
    assert page.evaluate("document.activeElement.id") == "results-title"
    band = page.locator(".overall .band-badge").inner_text()
    assert band in {EN["band.low"], EN["band.uncertain"], EN["band.high"]}
    assert PERCENT.match(page.locator(".overall .score-value").inner_text())
    assert EN["next.always"] in page.locator(".overall").inner_text()

    heatmap = page.locator(".photo-card .heatmap")
    assert heatmap.is_visible()
    assert page.evaluate("document.querySelector('.photo-card .heatmap').naturalWidth") > 0
    shoot(page, "02-result-heatmap")
    page.click(".photo-card .toggle-label")  # the visible heat-map switch
    assert not heatmap.is_visible()
    assert page.locator(".photo-card .photo").is_visible()
    assert page.evaluate("document.querySelector('.photo-card .photo').naturalWidth") > 0
    shoot(page, "03-result-photo")


def test_a_heic_photo_without_a_browser_preview_is_named_and_still_checked(page, photos):
    page.goto("/")
    page.set_input_files("#file-input", str(photos["iphone"]))
    placeholder = page.locator("#previews .no-preview")
    placeholder.wait_for()  # Chromium cannot draw HEIC, so the tile says so instead
    assert "iphone.heic" in placeholder.inner_text()
    assert placeholder.get_attribute("aria-label") == EN["upload.no_preview"].format(
        n=1, name="iphone.heic"
    )
    shoot(page, "05-heic-chosen")
    submit_and_wait(page)
    assert PERCENT.match(page.locator(".overall .score-value").inner_text())


def test_a_photo_that_is_not_skin_asks_for_a_retake(page, photos):
    page.goto("/")
    page.set_input_files("#file-input", str(photos["cat"]))
    submit_and_wait(page)
    card = page.locator(".photo-card")
    assert EN["photo.retake"] in card.inner_text()
    assert EN["issue.out_of_domain"] in card.inner_text()
    assert EN["result.retake_all"] in page.locator(".overall").inner_text()
    shoot(page, "04-retake")


def test_a_text_file_named_jpg_gets_a_clear_error(page, photos, console_errors):
    page.goto("/")
    page.set_input_files("#file-input", str(photos["notes"]))
    submit_and_wait(page)
    assert console_errors == [
        "console error: Failed to load resource: the server responded with a status of 422 "
        "(Unprocessable Entity)"
    ]
    console_errors.clear()
    assert page.locator("#form-message").inner_text() == EN["error.not_an_image"]
    assert page.locator("#results").is_hidden()
    shoot(page, "05-not-an-image")


def test_photos_chosen_dropped_and_pasted_give_a_combined_result(page, photos):
    page.goto("/")
    page.set_input_files("#file-input", str(photos["lesion"]))
    dropped = base64.b64encode(photos["lesion2"].read_bytes()).decode()
    page.evaluate(
        """(data) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "dropped.jpg", { type: "image/jpeg" }));
            const zone = document.querySelector("#dropzone");
            zone.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true }));
        }""",
        dropped,
    )
    assert page.locator("#previews li").count() == 2
    page.evaluate(
        """(data) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "pasted.jpg", { type: "image/jpeg" }));
            document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: transfer }));
        }""",
        dropped,
    )
    assert page.locator("#selection-count").inner_text() == "3 of 10 photos chosen"
    submit_and_wait(page)
    assert page.locator(".photo-card").count() == 3
    assert "highest mpox probability" in page.locator(".overall").inner_text()
    shoot(page, "06-two-photos")


def test_the_page_switches_to_chinese(page, photos):
    page.goto("/")
    page.click("a[data-lang='zh-CN']")
    page.wait_for_selector("html[lang='zh-CN']")
    assert page.locator("h1").inner_text() == ZH["home.title"]
    assert page.locator("label[for='file-input']").inner_text() == ZH["upload.choose"]
    page.set_input_files("#file-input", str(photos["lesion"]))
    assert page.locator("#selection-count").inner_text() == "已选 1 张，最多 10 张"
    submit_and_wait(page)
    assert page.locator(".overall h3").inner_text() == ZH["result.overall"]
    band = page.locator(".overall .band-badge").inner_text()
    assert band in {ZH["band.low"], ZH["band.uncertain"], ZH["band.high"]}
    shoot(page, "07-chinese-result")
    page.goto("/model")  # the choice is remembered
    assert page.locator("h1").inner_text() == ZH["model.title"]


def test_model_card_page(page):
    page.goto("/model")
    assert page.locator("h1").inner_text() == EN["model.title"]
    rows = page.locator("table.metrics:not(.sources) tbody tr")
    assert rows.count() >= 2
    assert re.search(r"\d\.\d{3}–\d\.\d{3}", rows.first.inner_text())
    shoot(page, "12-model-card")


def tab_to(page, input_id: str, presses: int) -> str:
    """Press Tab until the input has the focus (at most ``presses`` times); return the
    outline style of its visible label, so a test can check the focus ring shows."""
    for _ in range(presses):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == input_id:
            break
    assert page.evaluate("document.activeElement.id") == input_id
    return page.evaluate(
        f"getComputedStyle(document.querySelector('label[for={input_id}]')).outlineStyle"
    )


def test_keyboard_reaches_the_photo_picker(page):
    page.goto("/")
    assert tab_to(page, "file-input", 12) == "solid"  # the focus ring shows on the button


def test_phone_layout_has_no_sideways_scrolling(browser, base_url, photos):
    context = browser.new_context(
        viewport={"width": 375, "height": 812},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        base_url=base_url,
    )
    page = context.new_page()
    try:
        page.goto("/")
        assert page.locator("label[for='camera-input']").is_visible()  # the camera button
        assert page.locator(".dropzone-title").inner_text() == EN["upload.drop_touch"]
        shoot(page, "08-phone-home", full_page=False)
        page.set_input_files("#file-input", str(photos["lesion"]))
        submit_and_wait(page)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        # The result comes right after the form, before the page's other text.
        results_top = page.evaluate("document.querySelector('#results').offsetTop")
        assert results_top < page.evaluate("document.querySelector('.about-card').offsetTop")
        shoot(page, "09-phone-result", full_page=False)
        page.locator(".photo-card").scroll_into_view_if_needed()
        shoot(page, "10-phone-photo", full_page=False)
        page.goto("/model")
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        page.locator("table.metrics").first.scroll_into_view_if_needed()
        shoot(page, "11-phone-model-card", full_page=False)
    finally:
        context.close()


def wait_until_checked(page, timeout: float = 60.0) -> None:
    """Poll from Python until the form is no longer busy (the page's CSP forbids eval)."""
    page.wait_for_selector("#status-text:not(:empty)")
    deadline = time.monotonic() + timeout
    while page.locator("#upload-form[aria-busy]").count():
        if time.monotonic() > deadline:
            pytest.fail("the photos were not checked in time")
        time.sleep(0.1)


@pytest.mark.parametrize(("lang", "texts"), [("en", EN), ("zh-CN", ZH)])
def test_healthy_skin_gets_the_no_lesion_outcome(page, no_lesion_url, tmp_path, lang, texts):
    healthy, lesion = tmp_path / "healthy.jpg", tmp_path / "lesion.jpg"
    healthy.write_bytes(healthy_jpeg(seed=90_101, size=224))
    lesion.write_bytes(lesion_jpeg(seed=90_102, size=224))
    page.goto(f"{no_lesion_url}/")
    if lang != "en":
        page.click(f"a[data-lang='{lang}']")
        page.wait_for_selector(f"html[lang='{lang}']")
    page.set_input_files("#file-input", str(healthy))
    page.click("#submit")
    wait_until_checked(page)
    overall = page.locator(".overall")
    assert overall.locator(".band-badge").inner_text() == texts["outcome.no_lesion"]
    assert texts["outcome.no_lesion.summary"] in overall.inner_text()
    assert texts["result.retake_all"] not in overall.inner_text()
    assert texts["photo.no_lesion"] in page.locator(".photo-card.status-no_lesion").inner_text()
    shoot(page, f"13-no-lesion-{lang}")
    # With a lesion photo beside it, the lesion makes the overall result.
    page.goto(f"{no_lesion_url}/")
    page.set_input_files("#file-input", [str(healthy), str(lesion)])
    page.click("#submit")
    wait_until_checked(page)
    assert page.locator(".photo-card").count() == 2
    assert page.locator(".photo-card.status-no_lesion").count() == 1
    assert page.locator(".overall .band-badge").inner_text() == texts["band.low"]


def test_the_page_without_javascript_shows_no_lesion(browser, no_lesion_url, tmp_path):
    healthy = tmp_path / "healthy.jpg"
    healthy.write_bytes(healthy_jpeg(seed=90_103, size=224))
    context = browser.new_context(java_script_enabled=False, base_url=no_lesion_url)
    page = context.new_page()
    try:
        page.goto("/")
        page.set_input_files("#file-input", str(healthy))
        page.click("#submit")
        page.wait_for_selector("#results-title")
        overall = page.locator(".overall")
        assert overall.locator(".band-badge").inner_text() == EN["outcome.no_lesion"]
        assert EN["outcome.no_lesion.retake"] in overall.inner_text()
        assert EN["photo.no_lesion"] in page.locator(".photo-card.status-no_lesion").inner_text()
        shoot(page, "14-no-lesion-no-js")
    finally:
        context.close()
