"""Logs never carry health data: no photo bytes, EXIF or file names; access logs are JSON lines.

The main test runs a real ``mpoxscan serve`` at debug level, sends photos with GPS tags, a
unique camera string and telling file names (good, bad, several at once, through the API and
the no-JS form), and then searches everything the server wrote for any of it.
"""

from __future__ import annotations

import base64
import json
import logging
import signal

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from web_support import jpeg_bytes, load_benchmark, make_lesion_photo

from mpoxscan.web.app import create_app
from mpoxscan.web.observability import ACCESS_LOGGER, JsonLogFormatter
from mpoxscan.web.settings import Settings

load_test = load_benchmark("load_test")

CAMERA = "ZebraCam-7f3a9c"
MODEL = "QuokkaPhone-X91"
COMMENT = "PatientJaneDoe4471"
NAMES = ("jane-doe-4471-left-groin.jpg", "unreadable-4471-mole.jpg", "second-4471-arm.jpg")
QUERY_SECRET = "QuerySecret4471"
REQUEST_ID = "trace-4471-abc"


def photo_with_exif(seed: int) -> bytes:
    """A lesion JPEG whose EXIF holds a camera make and model, a comment and a GPS position."""
    exif = Image.Exif()
    exif[0x010F] = CAMERA  # Make
    exif[0x0110] = MODEL  # Model
    exif[0x010E] = COMMENT  # ImageDescription
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"  # GPSLatitudeRef
    gps[2] = (51.0, 30.0, 26.0)  # GPSLatitude
    gps[3] = "W"
    gps[4] = (0.0, 7.0, 39.0)
    return jpeg_bytes(make_lesion_photo(True, seed=seed, size=200), exif=exif.tobytes())


def fragments(data: bytes) -> list[str]:
    """Pieces of a photo as they would appear if logged raw, in base64 or in hex."""
    middle = len(data) // 2
    raw = data[middle : middle + 24]
    b64 = base64.b64encode(data).decode()
    start = (len(b64) // 2) // 4 * 4
    return [raw.decode("latin-1"), b64[start : start + 32], raw.hex(), repr(raw)[2:40]]


@pytest.fixture(scope="module")
def server_logs(web_bundle) -> tuple[str, list[dict], dict[str, bytes]]:
    """Run the uploads against a debug-level server; return its output, its access lines and
    the photos sent."""
    env = {"MPOXSCAN_RATE_LIMIT_PER_MINUTE": "0"}
    photos = {"a": photo_with_exif(800), "b": photo_with_exif(801)}
    server = load_test.ServerProcess(web_bundle, env=env, log_level="debug")
    with server:
        url = server.url
        responses = [
            httpx.post(
                f"{url}/api/v1/predict?explain=true&utm_source={QUERY_SECRET}",
                files=[("file", (NAMES[0], photos["a"], "image/jpeg"))],
                headers={"X-Request-ID": REQUEST_ID},
                timeout=60,
            ),
            httpx.post(
                f"{url}/api/v1/predict",
                files=[
                    ("file", (NAMES[0], photos["a"], "image/jpeg")),
                    ("file", (NAMES[1], b"a text file, " + COMMENT.encode(), "image/jpeg")),
                    ("file", (NAMES[2], photos["b"], "image/jpeg")),
                ],
                timeout=60,
            ),
            httpx.post(
                f"{url}/api/v1/predict",
                files=[("file", (NAMES[1], photos["b"][:3000], "image/jpeg"))],
                timeout=60,
            ),
            httpx.post(
                f"{url}/result?lang=en",
                data={"explain": "on"},
                files=[("file", (NAMES[2], photos["b"], "image/jpeg"))],
                timeout=60,
            ),
        ]
        assert [r.status_code for r in responses] == [200, 200, 422, 200]
        assert responses[0].headers["x-request-id"] == REQUEST_ID
        assert all(len(r.headers["x-request-id"]) >= 16 for r in responses[1:])
        # uvicorn re-raises the SIGTERM it handled, once it has shut down cleanly.
        assert server.stop() in (0, -signal.SIGTERM)
        logs = server.logs()
        assert "Application shutdown complete" in logs
    access = [json.loads(line) for line in logs.splitlines() if f'"{ACCESS_LOGGER}"' in line]
    return logs, access, photos


def test_logs_hold_no_photo_bytes_exif_or_file_names(server_logs):
    logs, _, photos = server_logs
    assert "predicted 3 photo(s)" in logs  # the debug-level server did log the requests
    for secret in (CAMERA, MODEL, COMMENT, "4471-left-groin", "unreadable-4471", "second-4471"):
        assert secret not in logs
    assert QUERY_SECRET not in logs
    for data in photos.values():
        for fragment in fragments(data):
            assert fragment not in logs


def test_access_log_is_json_lines_without_query_or_client_address(server_logs):
    logs, access, _ = server_logs
    predict = [line for line in access if line["path"] == "/api/v1/predict"]
    assert [line["status"] for line in predict] == [200, 200, 422]
    assert [line["path"] for line in access if line["method"] == "POST"][-1] == "/result"
    for line in access:
        assert {"time", "level", "request_id", "method", "path", "status", "latency_ms"} <= set(
            line
        )
        assert "client" not in line
        assert "?" not in line["path"]
        assert line["latency_ms"] >= 0
    assert predict[0]["request_id"] == REQUEST_ID
    assert "127.0.0.1" not in "\n".join(json.dumps(line) for line in access)
    # uvicorn's own access line ('"POST /api/v1/predict HTTP/1.1" 200') is replaced.
    assert "HTTP/1.1" not in logs
    # Everything the server wrote is a JSON line.
    for text in logs.splitlines():
        if text.strip():
            assert isinstance(json.loads(text), dict), text


def test_client_address_is_logged_only_when_asked(web_bundle, caplog):
    settings = Settings(bundle_dir=web_bundle, rate_limit_per_minute=0)
    for log_ip, expected in ((False, None), (True, "testclient")):
        caplog.clear()
        app = create_app(settings.model_copy(update={"log_client_ip": log_ip}))
        with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER), TestClient(app) as client:
            client.get("/api/v1/health")
        [record] = [r for r in caplog.records if r.name == ACCESS_LOGGER]
        line = json.loads(JsonLogFormatter().format(record))
        assert line.get("client") == expected
        assert line["path"] == "/api/v1/health" and line["status"] == 200


def test_an_unsafe_request_id_is_replaced(client):
    response = client.get("/api/v1/health", headers={"X-Request-ID": "<script>alert(1)</script>"})
    assert response.headers["x-request-id"] != "<script>alert(1)</script>"
    assert response.headers["x-request-id"].isalnum()
    assert client.get("/no-such-page").headers["x-request-id"]  # errors carry one too
