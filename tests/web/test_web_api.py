"""The JSON API, driven through FastAPI's TestClient against a real (small) model bundle."""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import tempfile

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from web_support import cat_jpeg, jpeg_bytes, lesion_jpeg, make_lesion_photo

from mpoxscan.inference.predictor import screening_band
from mpoxscan.web.app import create_app

BANDS = {"low", "uncertain", "high"}


def photo_parts(*photos: bytes, name: str = "photo.jpg") -> list[tuple[str, tuple]]:
    """Multipart ``file`` parts, one per photo."""
    return [("file", (name, data, "image/jpeg")) for data in photos]


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]


# --- health, model card, OpenAPI -------------------------------------------------------------


def test_health_says_the_model_is_loaded(client):
    body = client.get("/api/v1/health").json()
    assert body["status"] == "ok"
    assert body["model_loaded"] is True
    assert body["version"]
    assert len(body["model_version"]) == 12


def test_model_card_describes_the_served_bundle(client, web_bundle):
    card = client.get("/api/v1/model").json()
    assert card["architecture"] == "efficientnet-lite0"
    assert card["classes"] == ["Others", "Monkey Pox"]
    assert card["positive_class"] == "Monkey Pox"
    assert card["threshold"] == pytest.approx(0.5)
    assert card["image_size"] == 64
    assert card["metrics"]["test"]["sensitivity_ci"] == [0.62, 0.92]
    assert card["metrics"]["cv"]["accuracy"] == {"mean": 0.788, "std": 0.069, "ci": [0.723, 0.83]}
    assert "not a diagnosis" in card["intended_use"]
    meta_hash = json.loads((web_bundle / "model.json").read_text())["files"]
    assert meta_hash["model.safetensors"].startswith(card["version"])


def test_openapi_schema_documents_the_api(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    assert {"/api/v1/predict", "/api/v1/health", "/api/v1/model"} <= set(paths)
    predict = paths["/api/v1/predict"]["post"]
    body = predict["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["file"]["items"]["format"] == "binary"
    assert predict["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "PredictResponse"
    )
    for status in ("413", "415", "422", "429", "500"):
        assert predict["responses"][status]["content"]["application/json"]["schema"][
            "$ref"
        ].endswith("ErrorResponse")
    # Pages are not part of the API schema.
    assert "/" not in paths


# --- predictions -----------------------------------------------------------------------------


def test_one_lesion_photo_gets_a_calibrated_probability_and_band(client):
    response = client.post("/api/v1/predict", files=photo_parts(lesion_jpeg(seed=1)))
    assert response.status_code == 200, response.text
    body = response.json()
    [result] = body["results"]
    assert result["index"] == 0
    assert result["status"] == "ok"
    assert result["issues"] == []
    assert result["heatmap_png"] is None  # only with explain=true
    prediction = result["prediction"]
    p = prediction["probability"]
    assert 0.0 <= p <= 1.0
    assert prediction["probabilities"]["Monkey Pox"] == pytest.approx(p)
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert prediction["band"] == screening_band(p, body["model"]["threshold"])
    assert prediction["label"] == ("Monkey Pox" if p >= 0.5 else "Others")
    combined = body["combined"]
    assert combined["status"] == "ok"
    assert combined["probability"] == pytest.approx(p)
    assert combined["band"] == prediction["band"]
    assert (combined["photos"], combined["assessed"], combined["index"]) == (1, 1, 0)


def test_explain_adds_a_heat_map_overlay_png(client):
    photo = make_lesion_photo(True, seed=2, size=300)
    response = client.post(
        "/api/v1/predict", params={"explain": "true"}, files=photo_parts(jpeg_bytes(photo))
    )
    [result] = response.json()["results"]
    assert result["status"] == "ok"
    overlay = Image.open(io.BytesIO(base64.b64decode(result["heatmap_png"])))
    assert overlay.format == "PNG"
    # The overlay has the size the photo is read at (read_photo: 300 px at 1/4 DCT scale for
    # this 64-px model; a 224-px model reads phone photos at 224-447 px).
    assert overlay.size == (75, 75)
    # The overlay is the photo blended with a colour map, so it differs from the photo.
    shown = photo.resize(overlay.size)
    difference = np.abs(np.asarray(overlay.convert("RGB"), float) - np.asarray(shown, float))
    assert difference.mean() > 5


def test_several_photos_get_one_result_each_and_a_combined_max(client):
    photos = [lesion_jpeg(seed=s, positive=s % 2 == 0) for s in (10, 11, 12)]
    response = client.post(
        "/api/v1/predict", files=photo_parts(photos[0], b"not a photo", photos[1], photos[2])
    )
    assert response.status_code == 200, response.text
    body = response.json()
    results = body["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3]
    assert [r["status"] for r in results] == ["ok", "error", "ok", "ok"]
    assert results[1]["error"]["code"] == "not_an_image"
    assert results[1]["prediction"] is None
    probabilities = {r["index"]: r["prediction"]["probability"] for r in results if r["prediction"]}
    combined = body["combined"]
    assert combined["method"] == "max"
    assert (combined["photos"], combined["assessed"]) == (4, 3)
    assert combined["probability"] == pytest.approx(max(probabilities.values()))
    assert combined["index"] == max(probabilities, key=probabilities.get)
    assert combined["band"] == results[combined["index"]]["prediction"]["band"]


def test_batch_results_match_single_photo_results(client):
    photos = [lesion_jpeg(seed=s) for s in (20, 21)]
    batch = client.post("/api/v1/predict", files=photo_parts(*photos)).json()["results"]
    for photo, result in zip(photos, batch, strict=True):
        single = client.post("/api/v1/predict", files=photo_parts(photo)).json()["results"][0]
        assert single["prediction"]["probability"] == pytest.approx(
            result["prediction"]["probability"], abs=1e-5
        )


def test_a_photo_that_is_not_skin_is_turned_away_with_retake_advice(client):
    response = client.post("/api/v1/predict", files=photo_parts(cat_jpeg()))
    assert response.status_code == 200
    body = response.json()
    [result] = body["results"]
    assert result["status"] == "retake"
    assert result["prediction"] is None
    assert [issue["code"] for issue in result["issues"]] == ["out_of_domain"]
    assert body["combined"]["status"] == "retake"
    assert body["combined"]["probability"] is None


@pytest.mark.parametrize(
    ("image", "code"),
    [
        (Image.new("RGB", (40, 40), (200, 150, 120)), "too_small"),
        (Image.new("RGB", (200, 200), (8, 6, 5)), "too_dark"),
    ],
)
def test_unusable_photos_get_the_reason(client, image, code):
    response = client.post("/api/v1/predict", files=photo_parts(jpeg_bytes(image)))
    [result] = response.json()["results"]
    assert result["status"] == "retake"
    assert code in [issue["code"] for issue in result["issues"]]


def test_file_names_and_exif_are_never_echoed(client):
    photo = make_lesion_photo(True, seed=30, size=160)
    exif = Image.Exif()
    exif[0x010F] = "SecretCameraMaker"  # Make
    exif[0x9286] = "SecretUserComment"  # UserComment
    data = jpeg_bytes(photo, exif=exif.tobytes())
    response = client.post(
        "/api/v1/predict",
        params={"explain": "true"},
        files=photo_parts(data, name="jane-doe-groin.jpg"),
    )
    assert response.status_code == 200
    assert "jane-doe" not in response.text
    assert "Secret" not in response.text
    overlay = base64.b64decode(response.json()["results"][0]["heatmap_png"])
    assert b"Secret" not in overlay


# --- errors ----------------------------------------------------------------------------------


def test_no_file_part(client):
    response = client.post("/api/v1/predict", data={"explain": "true"}, files=[("other", b"x")])
    assert_error(response, 422, "no_file")


def test_not_multipart(client):
    response = client.post("/api/v1/predict", json={"file": "abc"})
    assert_error(response, 415, "unsupported_media_type")


def test_malformed_multipart_body(client):
    response = client.post(
        "/api/v1/predict",
        content=b"this is not multipart",
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert_error(response, 400, "malformed_request")


@pytest.mark.parametrize(
    ("make_data", "status", "code"),
    [
        (lambda: b"", 422, "empty_file"),
        (lambda: b"This is a text file renamed to .jpg\n" * 20, 422, "not_an_image"),
        (lambda: lesion_jpeg(seed=40)[:1500], 422, "truncated_image"),
        (lambda: png_bytes(Image.new("RGB", (2100, 2100))), 422, "too_many_pixels"),
        (lambda: b"\xff" * (3 * 1024 * 1024 + 1), 413, "file_too_large"),
    ],
)
def test_a_single_bad_file_gets_the_error_itself(client, make_data, status, code):
    response = client.post("/api/v1/predict", files=photo_parts(make_data()))
    assert_error(response, status, code)


def test_a_bad_file_among_several_is_reported_in_its_entry(client):
    big = b"\xff" * (3 * 1024 * 1024 + 1)
    response = client.post("/api/v1/predict", files=photo_parts(lesion_jpeg(seed=41), big, b""))
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["ok", "error", "error"]
    assert [r["error"]["code"] for r in results[1:]] == ["file_too_large", "empty_file"]


def test_too_many_files(client):
    photo = lesion_jpeg(seed=42)
    response = client.post("/api/v1/predict", files=photo_parts(*[photo] * 5))
    assert_error(response, 422, "too_many_files")


def test_request_too_large(client):
    chunk = b"\xff" * (2_900 * 1024)
    response = client.post("/api/v1/predict", files=photo_parts(chunk, chunk, chunk))
    assert_error(response, 413, "request_too_large")


def test_query_validation_errors_have_the_same_shape(client):
    response = client.post(
        "/api/v1/predict", params={"explain": "maybe"}, files=photo_parts(lesion_jpeg(seed=43))
    )
    error = assert_error(response, 422, "validation_error")
    assert "explain" in error["message"]


def test_unknown_api_path_is_a_json_404(client):
    assert_error(client.get("/api/v1/nothing-here"), 404, "not_found")


def test_wrong_method_is_a_json_405(client):
    assert_error(client.get("/api/v1/predict"), 405, "method_not_allowed")


def test_internal_errors_hide_their_details(client, monkeypatch):
    def fail(images):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(client.app.state.predictor, "assess_many", fail)
    response = client.post("/api/v1/predict", files=photo_parts(lesion_jpeg(seed=44)))
    assert_error(response, 500, "internal_error")
    assert "secret" not in response.text
    assert "Traceback" not in response.text


def test_rate_limit_per_client(web_settings):
    settings = web_settings.model_copy(update={"rate_limit_per_minute": 2})
    with TestClient(create_app(settings)) as limited:
        for _ in range(2):
            # Refused for its content type, but it still counts as a request.
            assert limited.post("/api/v1/predict", content=b"x").status_code == 415
        response = limited.post("/api/v1/predict", files=photo_parts(lesion_jpeg(seed=45)))
        assert_error(response, 429, "rate_limited")
        assert 1 <= int(response.headers["retry-after"]) <= 60
        # Health checks are never limited.
        assert limited.get("/api/v1/health").status_code == 200


# --- headers, CORS, privacy ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/api/v1/health", "/static/app.js"])
def test_security_headers(client, path):
    headers = client.get(path).headers
    csp = headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "img-src 'self' data: blob:" in csp
    assert "unsafe-inline" not in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"


def test_results_are_not_cached(client):
    response = client.post("/api/v1/predict", files=photo_parts(lesion_jpeg(seed=46)))
    assert response.headers["cache-control"] == "no-store"


def test_cors_is_closed_by_default(client):
    response = client.get("/api/v1/health", headers={"Origin": "https://elsewhere.example"})
    assert "access-control-allow-origin" not in response.headers


def test_cors_allows_configured_origins(web_settings):
    settings = web_settings.model_copy(update={"cors_origins": ["https://clinic.example"]})
    with TestClient(create_app(settings)) as open_client:
        response = open_client.options(
            "/api/v1/predict",
            headers={
                "Origin": "https://clinic.example",
                "Access-Control-Request-Method": "POST",
            },
        )
        assert response.headers["access-control-allow-origin"] == "https://clinic.example"


@pytest.fixture
def file_writes():
    """Paths of every file opened for writing, process-wide, while the test runs.

    An audit hook sees ``open()``/``os.open()`` in every thread, including the temporary files
    Starlette's form parser would spool large uploads to (unlinked at once, so a directory
    listing afterwards would miss them). Audit hooks cannot be removed; this one goes idle.
    """
    writes: list[str] = []
    active = [True]
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND

    def hook(event: str, args: tuple) -> None:
        if not active[0]:
            return
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool(
                (flags or 0) & write_flags
            )
            if writing and "__pycache__" not in str(path):
                writes.append(str(path))
        elif event.startswith("tempfile."):
            writes.append(f"{event}: {args}")

    sys.addaudithook(hook)
    yield writes
    active[0] = False


def test_a_large_photo_is_never_written_to_disk(client, file_writes, tmp_path, monkeypatch):
    photo = make_lesion_photo(True, seed=3, size=96).resize((900, 900), Image.Resampling.BICUBIC)
    noisy = np.asarray(photo, float) + np.random.default_rng(0).normal(0, 4, (900, 900, 3))
    data = png_bytes(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)))
    assert len(data) > 1024 * 1024  # over Starlette's 1 MiB in-memory spool
    temp_dir = tmp_path / "tmp"
    work_dir = tmp_path / "cwd"
    temp_dir.mkdir()
    work_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp_dir))
    monkeypatch.chdir(work_dir)

    response = client.post(
        "/api/v1/predict",
        params={"explain": "true"},
        files=[("file", ("big.png", data, "image/png"))],
    )
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["status"] == "ok"
    assert response.json()["results"][0]["heatmap_png"]
    assert file_writes == []
    assert list(temp_dir.iterdir()) == []
    assert list(work_dir.iterdir()) == []


def test_exif_rotated_photo_gets_the_upright_photos_prediction(client):
    """A phone photo stored sideways with an EXIF orientation tag is judged as it is seen."""
    upright = make_lesion_photo(True, seed=11, size=160).crop((0, 0, 160, 120))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    # PNG, so that both files hold exactly the same pixels (JPEG blocks would differ).
    stored = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(stored, format="PNG", exif=exif.tobytes())
    answers = [
        client.post("/api/v1/predict", files=photo_parts(data, name="p.png")).json()["results"][0]
        for data in (png_bytes(upright), stored.getvalue())
    ]
    assert answers[0]["status"] == answers[1]["status"] == "ok"
    p_upright, p_stored = (a["prediction"]["probability"] for a in answers)
    assert p_stored == pytest.approx(p_upright, abs=1e-3)
