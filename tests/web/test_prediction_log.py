"""The optional audit log of predictions: off by default; when on, one row per photo with
hashes and results, and never the photo, its name or its EXIF."""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from web_support import cat_jpeg, jpeg_bytes, lesion_jpeg, make_lesion_photo

from mpoxscan.web.app import create_app
from mpoxscan.web.settings import Settings

CAMERA = "ZebraCam-7f3a9c"
NAME = "jane-doe-4471-left-groin.jpg"
COLUMNS = {
    "id",
    "created",
    "request_id",
    "model_version",
    "model_sha256",
    "backend",
    "photo_index",
    "image_sha256",
    "status",
    "label",
    "probability",
    "probabilities",
    "band",
    "reason",
}


def photo_with_exif(seed: int) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = CAMERA
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (51.0, 30.0, 26.0)
    return jpeg_bytes(make_lesion_photo(True, seed=seed, size=200), exif=exif.tobytes())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def settings_for(bundle: Path, **values) -> Settings:
    return Settings(
        bundle_dir=bundle, rate_limit_per_minute=0, max_upload_bytes=3 * 2**20, **values
    )


def test_off_by_default_and_writes_nothing(web_bundle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = settings_for(web_bundle)
    assert settings.audit_log is False
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/api/v1/predict", files=[("file", (NAME, lesion_jpeg(900), "image/jpeg"))]
        )
        assert response.status_code == 200
        assert client.app.state.audit_log is None
    assert list(tmp_path.iterdir()) == []


def test_enabling_it_alone_uses_a_sqlite_file_in_the_working_directory(
    web_bundle, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPOXSCAN_AUDIT_LOG", "true")
    settings = settings_for(web_bundle)
    with TestClient(create_app(settings)) as client:
        client.post("/api/v1/predict", files=[("file", ("a.jpg", lesion_jpeg(901), "image/jpeg"))])
    [database] = list(tmp_path.iterdir())
    assert database.name == "mpoxscan-audit.sqlite3"
    with sqlite3.connect(database) as connection:
        assert connection.execute("select count(*) from predictions").fetchone() == (1,)


def test_rows_hold_hashes_and_results_never_the_image(web_bundle, tmp_path):
    database = tmp_path / "audit.sqlite3"
    # Naming a database turns the log on.
    settings = settings_for(web_bundle, audit_db_url=f"sqlite:///{database}")
    good, other, bad = photo_with_exif(902), photo_with_exif(903), b"a text file, not a photo"
    big = b"\xff" * (3 * 2**20 + 1)
    with TestClient(create_app(settings)) as client:
        single = client.post(
            "/api/v1/predict",
            files=[("file", (NAME, good, "image/jpeg"))],
            headers={"X-Request-ID": "audit-test-1"},
        )
        several = client.post(
            "/api/v1/predict",
            files=[("file", (NAME, data, "image/jpeg")) for data in (other, bad, big, cat_jpeg())],
        )
        page = client.post("/result", files=[("file", (NAME, good, "image/jpeg"))])
        refused = client.post("/api/v1/predict", files=[("file", (NAME, bad, "image/jpeg"))])
    assert [r.status_code for r in (single, several, page, refused)] == [200, 200, 200, 422]

    with sqlite3.connect(database) as connection:
        connection.row_factory = sqlite3.Row
        rows = [dict(row) for row in connection.execute("select * from predictions order by id")]
        columns = {row[1] for row in connection.execute("pragma table_info(predictions)")}
    assert columns == COLUMNS
    # One row per photo of each answered request; a refused request predicted nothing.
    assert [(r["request_id"] == rows[0]["request_id"], r["photo_index"]) for r in rows] == [
        (True, 0),
        (False, 0),
        (False, 1),
        (False, 2),
        (False, 3),
        (False, 0),
    ]
    first = rows[0]
    result = single.json()["results"][0]
    assert first["request_id"] == single.headers["x-request-id"] == "audit-test-1"
    assert first["image_sha256"] == sha256(good)
    assert first["status"] == "ok"
    assert first["probability"] == pytest.approx(result["prediction"]["probability"])
    assert json.loads(first["probabilities"]) == pytest.approx(
        result["prediction"]["probabilities"]
    )
    assert first["band"] == result["prediction"]["band"]
    assert first["label"] == result["prediction"]["label"]
    meta = json.loads((web_bundle / "model.json").read_text())
    assert first["model_sha256"] == meta["files"]["model.safetensors"]
    assert first["model_version"] == single.json()["model"]["version"]
    assert first["backend"] == "torch"

    ok, error, too_large, retake, from_page = rows[1:]
    assert ok["image_sha256"] == sha256(other) and ok["status"] == "ok"
    assert (error["status"], error["reason"], error["image_sha256"]) == (
        "error",
        "not_an_image",
        sha256(bad),
    )
    assert error["probability"] is None and error["probabilities"] is None
    assert (too_large["reason"], too_large["image_sha256"]) == ("file_too_large", None)
    assert (retake["status"], retake["reason"]) == ("retake", "out_of_domain")
    assert from_page["image_sha256"] == sha256(good)

    stored = database.read_bytes()
    for data in (good, other):
        middle = len(data) // 2
        assert data[middle : middle + 32] not in stored
    assert CAMERA.encode() not in stored
    assert b"jane-doe" not in stored


def test_a_failing_audit_database_does_not_fail_the_prediction(web_bundle, tmp_path, caplog):
    settings = settings_for(web_bundle, audit_db_url=f"sqlite:///{tmp_path / 'audit.sqlite3'}")
    with TestClient(create_app(settings)) as client:
        audit = client.app.state.audit_log
        with audit.engine.begin() as connection:
            connection.exec_driver_sql("drop table predictions")
        photo = lesion_jpeg(904)
        with caplog.at_level(logging.ERROR, logger="mpoxscan"):
            response = client.post("/api/v1/predict", files=[("file", (NAME, photo, "image/jpeg"))])
    assert response.status_code == 200
    [record] = [r for r in caplog.records if "audit log" in r.getMessage()]
    assert "not stored" in record.getMessage()
    # The error names its kind only: no row values (the hash) and no SQL parameters.
    assert sha256(photo) not in caplog.text


def test_an_unusable_audit_database_stops_the_app_from_starting(web_bundle, tmp_path):
    url = f"sqlite:///{tmp_path / 'missing-folder' / 'audit.sqlite3'}"
    with (
        pytest.raises(RuntimeError, match="MPOXSCAN_AUDIT_DB_URL"),
        TestClient(create_app(settings_for(web_bundle, audit_db_url=url))),
    ):
        pass
