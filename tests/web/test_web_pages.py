"""The HTML pages: content, languages, the no-JavaScript result page, and CSP-safe markup."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import pytest
from PIL import Image
from web_support import cat_jpeg, lesion_jpeg

from mpoxscan.web.api_errors import ERROR_STATUS
from mpoxscan.web.i18n import load_catalogues
from mpoxscan.web.routes.pages import METRIC_ORDER

WEB_DIR = Path(__file__).resolve().parents[2] / "src/mpoxscan/web"
ISSUE_CODES = ("too_small", "too_blurry", "too_dark", "overexposed", "out_of_domain")


@pytest.fixture(autouse=True)
def fresh_cookies(client):
    """Each test starts without the language cookie an earlier test may have set."""
    client.cookies.clear()


def catalogue(lang: str) -> dict[str, str]:
    return load_catalogues(WEB_DIR / "locales")[lang]


def test_home_says_what_the_tool_is_and_is_not(client):
    html = client.get("/").text
    en = catalogue("en")
    assert '<html lang="en">' in html
    for key in ("notice.title", "notice.body", "home.isnot.1", "home.isnot.2", "upload.camera"):
        assert en[key] in html
    assert "not a diagnosis" in html


def test_home_has_an_accessible_upload_form(client):
    html = client.get("/").text
    assert re.search(r'<form id="upload-form"[^>]*action="/result\?lang=en"', html)
    assert 'enctype="multipart/form-data"' in html
    assert re.search(r'<input id="file-input"[^>]*accept="image/\*"[^>]*multiple', html)
    assert re.search(r'<input id="camera-input"[^>]*capture="environment"', html)
    assert '<label class="button" for="file-input">' in html
    assert 'aria-live="polite"' in html
    assert 'data-max-files="4"' in html


@pytest.mark.parametrize("path", ["/", "/model", "/privacy", "/no-such-page"])
def test_pages_have_no_inline_script_style_or_handlers(client, path):
    html = client.get(path).text
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert scripts and all("src=" in tag for tag in scripts)
    assert not re.search(r"<script\b[^>]*>\s*[^<\s]", html)  # no script body
    assert not re.search(r"\son[a-z]+\s*=", html)
    assert not re.search(r"\sstyle\s*=", html)
    assert "<style" not in html
    assert "http://" not in html and "https://" not in html  # nothing from other sites


def test_language_follows_accept_language(client):
    html = client.get("/", headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"}).text
    zh = catalogue("zh-CN")
    assert '<html lang="zh-CN">' in html
    assert zh["home.title"] in html
    assert zh["notice.body"] in html
    assert catalogue("en")["home.title"] not in html


def test_language_switch_overrides_and_is_remembered(client):
    first = client.get("/?lang=zh-CN", headers={"Accept-Language": "en"})
    assert '<html lang="zh-CN">' in first.text
    assert "mpoxscan_lang=zh-CN" in first.headers["set-cookie"]
    later = client.get("/privacy", headers={"Accept-Language": "en"})
    assert '<html lang="zh-CN">' in later.text
    assert catalogue("zh-CN")["privacy.1"] in later.text
    back = client.get("/model?lang=en")
    assert '<html lang="en">' in back.text


def test_switch_links_point_at_the_current_page(client):
    html = client.get("/privacy").text
    assert 'href="/privacy?lang=zh-CN"' in html
    assert 'href="/privacy?lang=en"' in html


def test_model_card_page_shows_metrics_with_intervals_and_limits(client):
    html = client.get("/model").text
    en = catalogue("en")
    assert "efficientnet-lite0" in html
    assert "Monkey Pox" in html
    assert "0.500" in html  # the threshold
    assert en["model.threshold_note"].format(high="50%", uncertain="25%") in html
    assert en["metric.sensitivity"] in html
    assert "0.810" in html and "0.620–0.920" in html
    assert "0.880" in html and "0.770–0.960" in html
    assert "46 photos of 27 patients" in html
    assert ">tp<" not in html  # bookkeeping entries are left out
    assert "228 photos of 136 patients" in html
    assert en["model.limits.3"] in html
    assert en["model.use.body"] in html


def test_model_card_page_leads_with_the_cross_validation(client):
    html = client.get("/model").text
    en = catalogue("en")
    assert en["model.metrics.section.cv"] in html
    assert html.index(en["model.metrics.section.cv"]) < html.index(en["model.metrics.section.test"])
    assert "5 folds × 3 repeats" in html and "228 photos of 135 patients" in html
    assert "0.788 ± 0.069" in html and "0.723–0.830" in html
    assert en["model.metrics.cv_note"].split(" The screening")[0] in html


def test_privacy_page(client):
    html = client.get("/privacy").text
    assert "never written to disk" in html


def test_no_js_form_post_renders_the_result(client):
    response = client.post(
        "/result?lang=en",
        data={"explain": "on"},
        files=[("file", ("me.jpg", lesion_jpeg(seed=50), "image/jpeg"))],
    )
    assert response.status_code == 200
    html = response.text
    en = catalogue("en")
    assert en["result.overall"] in html
    assert re.search(r'class="score-value">(&lt;1|&gt;99|\d{1,2})%<', html)
    bands = [en[f"band.{band}"] for band in ("low", "uncertain", "high")]
    assert any(f'class="band-badge">{band}<' in html for band in bands)
    assert en["next.always"] in html
    assert "data:image/png;base64," in html  # the heat map
    assert en["photo.toggle"] in html
    [photo] = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', html)
    shown = Image.open(io.BytesIO(base64.b64decode(photo)))
    assert len(shown.getexif()) == 0
    assert "me.jpg" not in html


def test_no_js_result_in_chinese_for_a_photo_to_retake(client):
    response = client.post(
        "/result?lang=zh-CN", files=[("file", ("cat.jpg", cat_jpeg(), "image/jpeg"))]
    )
    zh = catalogue("zh-CN")
    assert response.status_code == 200
    assert zh["photo.retake"] in response.text
    assert zh["issue.out_of_domain"] in response.text
    assert zh["result.retake_all"] in response.text


def test_no_js_error_is_an_html_page_in_the_visitors_language(client):
    response = client.post(
        "/result",
        headers={"Accept-Language": "zh"},
        files=[("file", ("notes.jpg", b"just some text, not a photo\n", "image/jpeg"))],
    )
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("text/html")
    assert catalogue("zh-CN")["error.not_an_image"] in response.text


def test_reloading_the_result_page_goes_home(client):
    response = client.get("/result", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/"


def test_unknown_page_is_an_html_404(client):
    response = client.get("/no-such-page")
    assert response.status_code == 404
    assert catalogue("en")["error.not_found"] in response.text


def test_catalogue_is_served_to_the_script(client):
    assert client.get("/i18n/zh-CN.json").json() == catalogue("zh-CN")
    assert client.get("/i18n/fr.json").status_code == 404


def test_static_files_are_served(client):
    script = client.get("/static/app.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")


def test_every_visible_string_is_translated():
    en, zh = catalogue("en"), catalogue("zh-CN")
    assert set(en) == set(zh)
    assert all(zh[key].strip() for key in zh)
    used = set()
    for template in (WEB_DIR / "templates").glob("*.html"):
        used |= set(re.findall(r"""\bt\(\s*["']([\w.]+)["']""", template.read_text()))
    script = (WEB_DIR / "static/app.js").read_text()
    used |= set(re.findall(r"""\btr\(\s*["']([\w.]+)["']""", script))
    used |= {f"band.{b}" for b in ("low", "uncertain", "high")}
    used |= {f"band.{b}.summary" for b in ("low", "uncertain", "high")}
    used |= {f"issue.{code}" for code in ISSUE_CODES}
    used |= {f"error.{code}" for code in ERROR_STATUS}
    used |= {f"metric.{name}" for name in METRIC_ORDER}
    # "band." ~ band in a template is a prefix; the full keys are listed above.
    assert {key for key in used if not key.endswith(".")} - set(en) == set()
    # Placeholders match, so a translation never shows a raw {name}.
    for key in en:
        assert set(re.findall(r"{\w+}", en[key])) == set(re.findall(r"{\w+}", zh[key])), key
