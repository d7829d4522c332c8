"""Web building blocks without a model: languages, rate limit, settings, upload parsing."""

from __future__ import annotations

import time

import anyio
import pytest
from pydantic import ValidationError

from mpoxscan.errors import BundleError
from mpoxscan.web.api_errors import ApiError
from mpoxscan.web.app import serve
from mpoxscan.web.i18n import choose_language, load_catalogues, parse_accept_language
from mpoxscan.web.ratelimit import RateLimiter
from mpoxscan.web.routes.pages import metric_sections, percent
from mpoxscan.web.settings import Settings
from mpoxscan.web.uploads import read_upload_form


@pytest.mark.parametrize(
    ("query", "cookie", "header", "expected"),
    [
        (None, None, None, "en"),
        (None, None, "zh-CN,zh;q=0.9,en;q=0.8", "zh-CN"),
        (None, None, "fr-FR,fr;q=0.9,zh-TW;q=0.7,en;q=0.5", "zh-CN"),
        (None, None, "fr-FR,en;q=0.9,zh;q=0.8", "en"),
        (None, None, "zh;q=0,en", "en"),
        (None, "zh-CN", "en", "zh-CN"),
        ("en", "zh-CN", "zh", "en"),
        ("zh_Hans", None, None, "zh-CN"),
        ("klingon", None, "zh", "zh-CN"),
    ],
)
def test_choose_language(query, cookie, header, expected):
    assert choose_language(query, cookie, header) == expected


def test_accept_language_with_no_offered_language():
    assert parse_accept_language("de-DE,fr;q=0.5") is None


def test_catalogues_load_and_match():
    catalogues = load_catalogues()
    assert set(catalogues) == {"en", "zh-CN"}
    assert set(catalogues["en"]) == set(catalogues["zh-CN"])


def test_a_catalogue_missing_a_key_is_refused(tmp_path):
    (tmp_path / "en.json").write_text('{"a": "A", "b": "B"}')
    (tmp_path / "zh-CN.json").write_text('{"a": "甲"}')
    with pytest.raises(ValueError, match=r"zh-CN\.json lacks"):
        load_catalogues(tmp_path)


def test_rate_limiter_counts_per_client_per_window():
    now = [100.0]
    limiter = RateLimiter(2, window_s=60.0, clock=lambda: now[0])
    assert limiter.hit("a") is None
    assert limiter.hit("a") is None
    now[0] += 15.2
    assert limiter.hit("a") == 45  # seconds until the window resets
    assert limiter.hit("b") is None  # another client has its own count
    now[0] += 45.0
    assert limiter.hit("a") is None  # a new window


def test_rate_limiter_off():
    limiter = RateLimiter(0)
    assert all(limiter.hit("a") is None for _ in range(1000))


def test_settings_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MPOXSCAN_BUNDLE_DIR", str(tmp_path))
    monkeypatch.setenv("MPOXSCAN_MAX_FILES", "3")
    monkeypatch.setenv("MPOXSCAN_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("MPOXSCAN_LOG_LEVEL", "WARNING")
    settings = Settings()
    assert settings.bundle_dir == tmp_path
    assert settings.max_files == 3
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.log_level == "warning"
    monkeypatch.setenv("MPOXSCAN_CORS_ORIGINS", '["https://c.example"]')
    assert Settings().cors_origins == ["https://c.example"]


def test_settings_defaults_keep_cors_closed_and_uploads_unstored():
    settings = Settings()
    assert settings.cors_origins == []
    assert settings.store_uploads is False
    assert settings.max_files == 10
    assert settings.rate_limit_per_minute == 60


def test_storing_uploads_cannot_be_turned_on():
    with pytest.raises(ValidationError, match="never writes them"):
        Settings(store_uploads=True)


def test_request_limit_must_fit_one_photo():
    with pytest.raises(ValidationError, match="MPOXSCAN_MAX_REQUEST_BYTES"):
        Settings(max_upload_bytes=10_000, max_request_bytes=5_000)


def test_serve_refuses_a_bad_bundle(tmp_path):
    with pytest.raises(BundleError, match="Cannot serve the model in"):
        serve(tmp_path / "missing")


def multipart(*parts: tuple[str, str | None, bytes], boundary: str = "XyZ") -> bytes:
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        body += data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def parse(body: bytes, chunk: int = 7, **limits):
    async def chunks():
        for start in range(0, len(body), chunk):
            yield body[start : start + chunk]

    options = {"max_files": 3, "max_file_bytes": 100, "max_request_bytes": 10_000, **limits}
    return anyio.run(
        lambda: read_upload_form("multipart/form-data; boundary=XyZ", chunks(), **options)
    )


def test_upload_form_collects_photos_and_short_fields():
    form = parse(
        multipart(
            ("file", "a.jpg", b"A" * 50),
            ("explain", None, b"on"),
            ("file", "b.jpg", b"B" * 101),
            ("file", "", b""),  # a file input left empty
        )
    )
    assert [bytes(f.data) for f in form.files] == [b"A" * 50, b""]
    assert [f.too_large for f in form.files] == [False, True]
    assert form.files[1].size == 101
    assert form.fields == {"explain": "on"}


def test_upload_form_stops_at_the_request_limit_while_streaming():
    body = multipart(("file", "a.jpg", b"A" * 90), ("file", "b.jpg", b"B" * 90))
    with pytest.raises(ApiError) as error:
        parse(body, max_request_bytes=150)
    assert error.value.code == "request_too_large"
    assert error.value.status_code == 413


def test_upload_form_stops_at_too_many_files():
    body = multipart(*[("file", f"{i}.jpg", b"x") for i in range(4)])
    with pytest.raises(ApiError) as error:
        parse(body)
    assert error.value.code == "too_many_files"


def test_upload_form_that_ends_early_is_malformed():
    body = multipart(("file", "a.jpg", b"A" * 50))[:-20]
    with pytest.raises(ApiError) as error:
        parse(body)
    assert error.value.code == "malformed_request"


@pytest.mark.parametrize(
    ("p", "shown"), [(0.004, "<1%"), (0.5, "50%"), (0.126, "13%"), (0.996, ">99%"), (None, "–")]
)
def test_percent_never_shows_certainty(p, shown):
    assert percent(p) == shown


def test_metric_sections_keep_measures_with_intervals():
    sections = metric_sections(
        {
            "test": {
                "n_images": 46,
                "n_patients": 27,
                "tp": 17,
                "accuracy": 0.8,
                "accuracy_ci": [0.7, 0.9],
                "sensitivity": 0.75,
                "patient_level": {"n_patients": 27, "roc_auc": 0.9, "roc_auc_ci": [0.8, 1.0]},
            },
            "cv": {"roc_auc": {"mean": 0.85, "std": 0.05}},
            "threshold_choice": {"threshold": 0.4, "target_sensitivity": 0.95},
        }
    )
    assert [s["key"] for s in sections] == ["test", "test.patient_level", "cv"]
    test = sections[0]
    assert [row["name"] for row in test["rows"]] == ["sensitivity", "accuracy"]
    assert test["rows"][1]["ci"] == "0.700–0.900"
    assert test["rows"][0]["ci"] is None
    assert test["counts"] == {"n_images": 46, "n_patients": 27}
    assert sections[2]["rows"][0]["std"] == "0.050"


def test_naming_an_audit_database_turns_the_audit_log_on(monkeypatch):
    assert Settings().audit_log is False
    monkeypatch.setenv("MPOXSCAN_AUDIT_DB_URL", "sqlite:////tmp/audit.sqlite3")
    assert Settings().audit_log is True


def test_parts_limit_must_fit_the_photos_and_form_fields():
    assert Settings(max_files=20, max_parts=24).max_parts == 24
    with pytest.raises(ValidationError, match="MPOXSCAN_MAX_PARTS"):
        Settings(max_files=20, max_parts=20)


def test_upload_form_stops_at_too_many_parts():
    body = multipart(*[("note", None, b"x") for _ in range(6)])
    with pytest.raises(ApiError) as error:
        parse(body, max_parts=5)
    assert error.value.code == "too_many_parts"


def test_upload_form_times_out_on_a_trickled_body():
    async def trickle():
        yield b"--XyZ\r\n"
        await anyio.sleep(5)
        yield b"never read"

    async def read():
        await read_upload_form(
            "multipart/form-data; boundary=XyZ",
            trickle(),
            max_files=3,
            max_file_bytes=100,
            max_request_bytes=10_000,
            max_seconds=0.2,
        )

    started = time.monotonic()
    with pytest.raises(ApiError) as error:
        anyio.run(read)
    assert time.monotonic() - started < 3
    assert (error.value.code, error.value.status_code) == ("upload_timeout", 408)
