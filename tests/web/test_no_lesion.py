"""The "no lesion seen" outcome: the bundle's no-lesion head, the Predictor and the API.

The bundle (``web_support.build_test_bundle(no_lesion=True)``) answers "low" for every photo,
so only its no-lesion head decides whether a photo is ``ok`` or ``no_lesion``.
"""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from web_support import healthy_jpeg, lesion_jpeg

from mpoxscan.inference.no_lesion import (
    NoLesionDetector,
    is_no_lesion_class,
    lesion_rate_threshold,
)
from mpoxscan.inference.predictor import Predictor
from mpoxscan.web.app import create_app
from mpoxscan.web.settings import Settings


@pytest.fixture(scope="module")
def no_lesion_client(no_lesion_bundle):
    with TestClient(
        create_app(Settings(bundle_dir=no_lesion_bundle, rate_limit_per_minute=0))
    ) as test_client:
        yield test_client


def post(client, *photos: bytes):
    files = [("file", (f"p{i}.jpg", data, "image/jpeg")) for i, data in enumerate(photos)]
    response = client.post("/api/v1/predict", files=files)
    assert response.status_code == 200, response.text
    return response.json()


def test_healthy_skin_gets_its_own_outcome(no_lesion_client):
    body = post(no_lesion_client, healthy_jpeg(seed=90_001))
    (result,) = body["results"]
    assert result["status"] == "no_lesion"
    assert result["prediction"]["no_lesion"] is True
    assert result["prediction"]["band"] == "low"
    assert 0.0 <= result["prediction"]["no_lesion_probability"] <= 1.0
    assert body["combined"]["status"] == "no_lesion"
    assert body["combined"]["assessed"] == 1


def test_a_lesion_photo_is_assessed_as_before(no_lesion_client):
    body = post(no_lesion_client, lesion_jpeg(seed=90_002))
    (result,) = body["results"]
    assert result["status"] == "ok"
    assert result["prediction"]["no_lesion"] is False
    assert body["combined"]["status"] == "ok"


def test_one_lesion_among_healthy_photos_makes_the_combined_result(no_lesion_client):
    body = post(no_lesion_client, healthy_jpeg(seed=90_003), lesion_jpeg(seed=90_004))
    assert [r["status"] for r in body["results"]] == ["no_lesion", "ok"]
    combined = body["combined"]
    assert (combined["status"], combined["index"], combined["assessed"]) == ("ok", 1, 2)


def test_the_openapi_schema_names_the_outcome(no_lesion_client):
    schema = no_lesion_client.get("/openapi.json").json()["components"]["schemas"]
    assert "no_lesion" in schema["PhotoResult"]["properties"]["status"]["enum"]
    assert "no_lesion" in schema["CombinedResult"]["properties"]["status"]["enum"]


def test_the_predictor_never_calls_a_worrying_photo_lesion_free(no_lesion_bundle):
    predictor = Predictor.load(no_lesion_bundle, backend="torch")
    above = predictor.no_lesion_.threshold_ + 1e-3
    low = predictor.to_prediction(np.array([0.99, 0.01]), above)
    high = predictor.to_prediction(np.array([0.2, 0.8]), above)
    below = predictor.to_prediction(np.array([0.99, 0.01]), predictor.no_lesion_.threshold_ / 2)
    assert (low.band, low.no_lesion) == ("low", True)
    assert (high.band, high.no_lesion) == ("high", False)
    assert below.no_lesion is False


def test_a_bundle_without_the_head_never_says_no_lesion(web_bundle):
    predictor = Predictor.load(web_bundle, backend="torch")
    assert predictor.no_lesion_ is None
    prediction = predictor.to_prediction(np.array([0.99, 0.01]))
    assert prediction.no_lesion is False
    assert prediction.no_lesion_probability is None


def test_threshold_allows_at_most_the_lesion_rate():
    scores = np.linspace(0.0, 0.99, 100)  # 100 lesion photos
    threshold = lesion_rate_threshold(scores, 0.02)
    assert (scores >= threshold).sum() == 2
    assert lesion_rate_threshold(scores, 0.0) > scores.max()


def test_detector_round_trips_through_tensors():
    rng = np.random.default_rng(0)
    lesion, healthy = rng.normal(0, 1, (60, 8)), rng.normal(2, 1, (60, 8))
    x = np.concatenate([lesion, healthy])
    y = np.r_[np.zeros(60, bool), np.ones(60, bool)]
    detector = NoLesionDetector(max_lesion_rate=0.05).fit(x[::2], y[::2], x[1::2], y[1::2])
    assert detector.validation_["lesion_called_no_lesion"] <= 0.05
    assert detector.validation_["no_lesion_recall"] > 0.8
    copy = NoLesionDetector.from_tensors(detector.to_tensors(), detector.threshold_)
    np.testing.assert_allclose(copy.probability(x), detector.probability(x), rtol=1e-5)
    with pytest.raises(ValueError, match="with and without a lesion"):
        NoLesionDetector().fit(x, np.zeros(120, bool), x, y)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("Healthy", True), ("normal skin", True), ("Healthy-skin", True), ("Scabies", False)],
)
def test_which_class_folders_mean_no_lesion(name, expected):
    assert is_no_lesion_class(name) is expected
