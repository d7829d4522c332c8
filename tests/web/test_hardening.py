"""Designed answers under hostile traffic (issue 17), in-process: tiny files, HEAD, the
catch-all 500, client disconnects."""

from __future__ import annotations

import logging

import anyio
import pytest
from web_support import lesion_jpeg

import mpoxscan.web.routes.api as api_routes
import mpoxscan.web.routes.pages as page_routes

#: Files of 1 to 3 bytes: the starts of the PNG, JPEG, GIF, BMP/DIB, TIFF, WebP and HEIF
#: signatures (a 1-byte ``B`` once gave a 500 from the BMP check's ``struct.error``).
TINY_FILES = [b"B", b"\x89P", b"GIF", b"\xff\xd8", b"\xff\xd8\xff", b"II*", b"MM\x00", b"RIF"]
#: Headers every answer carries, errors included.
COMMON_HEADERS = (
    "content-security-policy",
    "x-content-type-options",
    "referrer-policy",
    "cache-control",
    "x-request-id",
)


def photo_parts(*photos: bytes) -> list[tuple[str, tuple]]:
    return [("file", ("photo.jpg", data, "image/jpeg")) for data in photos]


@pytest.mark.parametrize("data", TINY_FILES, ids=lambda d: repr(d))
def test_a_tiny_file_gets_a_designed_4xx(client, data):
    response = client.post("/api/v1/predict", files=photo_parts(data))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] in {"not_an_image", "truncated_image"}


def test_tiny_files_do_not_fail_the_other_photos_of_a_request(client):
    files = photo_parts(lesion_jpeg(seed=170), *TINY_FILES[:3])
    response = client.post("/api/v1/predict", files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results[0]["status"] == "ok"
    assert [r["status"] for r in results[1:]] == ["error"] * 3


@pytest.mark.parametrize("path", ["/", "/privacy", "/model", "/api/v1/health", "/api/v1/model"])
def test_head_is_answered_where_get_is(client, path):
    get = client.get(path)
    head = client.head(path)
    assert head.status_code == get.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    assert head.headers["content-length"] == get.headers["content-length"]
    assert head.headers["content-security-policy"] == get.headers["content-security-policy"]


def test_head_on_a_post_only_path_is_still_405(client):
    assert client.head("/api/v1/predict").status_code == 405


@pytest.mark.parametrize(
    ("routes", "path", "media_type"),
    [(api_routes, "/api/v1/predict", "application/json"), (page_routes, "/result", "text/html")],
    ids=["api-json", "page-html"],
)
def test_the_catch_all_500_has_every_header_and_the_routes_media_type(
    client, monkeypatch, routes, path, media_type
):
    def fail(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(routes, "finish_analysis", fail)
    response = client.post(path, files=photo_parts(lesion_jpeg(seed=171)))
    assert response.status_code == 500
    assert response.headers["content-type"].startswith(media_type)
    assert "secret" not in response.text and "Traceback" not in response.text
    for name in COMMON_HEADERS:
        assert name in response.headers, name
    assert response.headers["cache-control"] == "no-store"
    if media_type == "application/json":
        assert response.json()["error"]["code"] == "internal_error"


def test_a_client_that_disconnects_mid_upload_is_logged_once_at_info(client, caplog):
    """The body stops and the client goes away: one info line, no traceback, no error."""
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n\xff'
    messages = [
        {"type": "http.request", "body": body, "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/predict",
        "raw_path": b"/api/v1/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"multipart/form-data; boundary=b"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }
    with caplog.at_level(logging.INFO, logger="mpoxscan"):
        anyio.run(client.app, scope, receive, send)
    mine = [r for r in caplog.records if r.name.startswith("mpoxscan") and "disconnect" in r.msg]
    assert len(mine) == 1 and mine[0].levelno == logging.INFO
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not any(r.exc_info for r in caplog.records)


@pytest.mark.slow
def test_serve_and_a_prediction_write_nothing_under_home_or_the_cache(web_bundle, tmp_path):
    """ONNX Runtime's telemetry once wrote a device id and an event store under
    ``~/.cache/Microsoft/DeveloperTools`` at import; nothing may appear under HOME now."""
    from web_support import load_benchmark

    load_test = load_benchmark("load_test")
    home = tmp_path / "home"
    home.mkdir()
    env = {
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        # As if nobody had set it: the package itself must turn telemetry off.
        "ORT_DISABLE_TELEMETRY": "0",
    }
    with load_test.ServerProcess(web_bundle, env=env, log_level="warning") as server:
        import httpx

        response = httpx.post(
            server.url + "/api/v1/predict",
            files=photo_parts(lesion_jpeg(seed=173)),
            params={"explain": "true"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
    written = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    assert written == [], written


def test_too_many_header_fields_get_a_designed_431(client):
    headers = {f"x-filler-{i}": "1" for i in range(150)}
    response = client.get("/api/v1/health", headers=headers)
    assert response.status_code == 431
    assert response.json()["error"]["code"] == "too_many_headers"
    for name in COMMON_HEADERS:
        assert name in response.headers, name
    assert client.get("/api/v1/health", headers=dict(list(headers.items())[:50])).status_code == 200
