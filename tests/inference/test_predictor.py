"""Predictor: backends agree, labels follow the threshold, bands, photo checks, Grad-CAM."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from inference_support import (
    LITE_SIZE,
    SEED_SIZE,
    build_bundle,
    constant_bundle,
    lesion_photos,
    stripes_photo,
)
from PIL import Image

from mpoxscan.data.preprocessing import resize_image
from mpoxscan.errors import BundleError
from mpoxscan.inference.onnx_export import export_onnx
from mpoxscan.inference.predictor import (
    Predictor,
    images_to_pixels,
    logits_to_probabilities,
    screening_band,
)
from mpoxscan.inference.quality import OodDetector


@pytest.fixture(scope="module")
def lite_bundle(tmp_path_factory):
    bundle = build_bundle(
        tmp_path_factory.mktemp("lite") / "b", "efficientnet-lite0", LITE_SIZE, temperature=1.5
    )
    export_onnx(bundle)
    return bundle


@pytest.fixture(scope="module")
def mixed_photos() -> list[Image.Image]:
    """Photos of other sizes and modes than the model input."""
    photos = lesion_photos(4, size=96)
    photos.append(photos[0].resize((130, 90)))
    photos.append(photos[1].convert("L"))
    photos.append(photos[2].convert("RGBA"))
    return photos


def test_onnx_and_torch_backends_agree(lite_bundle, mixed_photos):
    onnx_predictor = Predictor.load(lite_bundle)
    torch_predictor = Predictor.load(lite_bundle, backend="torch")
    assert (onnx_predictor.backend_, torch_predictor.backend_) == ("onnx", "torch")
    pixels = images_to_pixels(mixed_photos, LITE_SIZE)
    onnx_p, onnx_e = onnx_predictor.predict_pixels(pixels)
    torch_p, torch_e = torch_predictor.predict_pixels(pixels)
    np.testing.assert_allclose(onnx_p, torch_p, atol=1e-4)
    np.testing.assert_allclose(onnx_e, torch_e, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(onnx_predictor.predict_proba(mixed_photos), onnx_p, atol=1e-6)
    for onnx_row, torch_row in zip(onnx_p, torch_p, strict=True):
        a, b = onnx_predictor.to_prediction(onnx_row), torch_predictor.to_prediction(torch_row)
        assert a.label == b.label
        assert a.probability == pytest.approx(b.probability, abs=1e-4)


def test_auto_uses_torch_without_an_onnx_file(tmp_path):
    bundle = build_bundle(tmp_path / "b")
    predictor = Predictor.load(bundle)
    assert predictor.backend_ == "torch"
    with pytest.raises(BundleError, match="export_onnx"):
        Predictor.load(bundle, backend="onnx")
    with pytest.raises(ValueError, match="backend"):
        Predictor.load(bundle, backend="tensorflow")


def test_attributes_come_from_the_bundle(lite_bundle):
    predictor = Predictor.load(lite_bundle)
    assert predictor.classes_ == ["Others", "Monkey Pox"]
    assert predictor.positive_class_ == "Monkey Pox"
    assert predictor.threshold_ == 0.5
    assert predictor.image_size_ == LITE_SIZE
    assert predictor.meta_["architecture"]["name"] == "efficientnet-lite0"


def test_batches_give_the_same_numbers_as_one_pass(tmp_path):
    bundle = build_bundle(tmp_path / "b")
    photos = lesion_photos(5)
    whole = Predictor.load(bundle).predict_proba(photos)
    chunked = Predictor.load(bundle, batch_size=2).predict_proba(photos)
    np.testing.assert_allclose(chunked, whole, atol=1e-6)
    assert whole.shape == (5, 2)


@pytest.mark.parametrize(
    ("logit", "threshold", "label", "band"),
    [
        (1.0, 0.6, "Monkey Pox", "high"),  # p = sigmoid(1 / 2) = 0.622
        (1.0, 0.7, "Others", "uncertain"),
        (-3.0, 0.5, "Others", "low"),  # p = sigmoid(-1.5) = 0.182 < 0.25
    ],
)
def test_label_and_band_follow_threshold_and_temperature(tmp_path, logit, threshold, label, band):
    bundle = constant_bundle(tmp_path / "b", logit, temperature=2.0, threshold=threshold)
    prediction = Predictor.load(bundle).predict(lesion_photos(1)[0])
    expected = 1 / (1 + math.exp(-logit / 2.0))
    assert prediction.probability == pytest.approx(expected, abs=1e-6)
    assert prediction.probabilities["Others"] == pytest.approx(1 - expected, abs=1e-6)
    assert (prediction.label, prediction.band) == (label, band)


def test_a_probability_equal_to_the_threshold_is_positive(tmp_path):
    # float32 sigmoid(0) is exactly 0.5
    bundle = constant_bundle(tmp_path / "b", 0.0, threshold=0.5)
    prediction = Predictor.load(bundle).predict(lesion_photos(1)[0])
    assert prediction.probability == 0.5
    assert (prediction.label, prediction.band) == ("Monkey Pox", "high")


@pytest.mark.parametrize(
    ("probability", "threshold", "band"),
    [
        (0.90, 0.5, "high"),
        (0.30, 0.3, "high"),
        (0.29, 0.3, "uncertain"),
        (0.15, 0.3, "uncertain"),
        (0.149, 0.3, "low"),
        (0.0, 0.3, "low"),
        (1.0, 1.0, "high"),
    ],
)
def test_screening_bands(probability, threshold, band):
    assert screening_band(probability, threshold) == band


@pytest.mark.parametrize(("probability", "threshold"), [(1.2, 0.5), (-0.1, 0.5), (0.5, 0.0)])
def test_screening_band_refuses_values_outside_their_range(probability, threshold):
    with pytest.raises(ValueError):
        screening_band(probability, threshold)


def test_multiclass_takes_the_most_probable_class(tmp_path):
    classes = ["Chickenpox", "Measles", "Monkey Pox"]
    bundle = build_bundle(
        tmp_path / "b", num_outputs=3, classes=classes, multiclass=True, positive_class=None
    )
    predictor = Predictor.load(bundle)
    probabilities = predictor.predict_proba(lesion_photos(3))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    prediction = predictor.predict(lesion_photos(1)[0])
    assert prediction.label == classes[int(np.argmax(probabilities[0]))]
    assert prediction.probability is None and prediction.band is None
    assert list(prediction.probabilities) == classes


def test_multiclass_reports_the_positive_class_probability(tmp_path):
    classes = ["Chickenpox", "Measles", "Monkey Pox"]
    bundle = build_bundle(
        tmp_path / "b", num_outputs=3, classes=classes, multiclass=True, positive_class="Monkey Pox"
    )
    prediction = Predictor.load(bundle).predict(lesion_photos(1)[0])
    assert prediction.probability == prediction.probabilities["Monkey Pox"]
    assert prediction.band in {"low", "uncertain", "high"}


def test_logits_to_probabilities_matches_the_graph():
    binary = logits_to_probabilities(np.array([[0.0], [2.0]]), temperature=2.0)
    np.testing.assert_allclose(binary[:, 1], [0.5, 1 / (1 + math.exp(-1.0))])
    np.testing.assert_allclose(binary.sum(axis=1), 1.0)
    multi = logits_to_probabilities(np.array([[1.0, 1.0, 1.0], [1000.0, 0.0, 0.0]]))
    np.testing.assert_allclose(multi, [[1 / 3] * 3, [1.0, 0.0, 0.0]], atol=1e-12)


def test_images_to_pixels_resizes_like_training_without_normalising():
    photos = [Image.new("RGB", (50, 30), (200, 100, 50)), Image.new("L", (80, 80), 77)]
    pixels = images_to_pixels(photos, 32)
    assert pixels.shape == (2, 3, 32, 32) and pixels.dtype == np.float32
    expected = np.asarray(resize_image(photos[0], 32), np.float32).transpose(2, 0, 1)
    np.testing.assert_array_equal(pixels[0], expected)
    assert np.all(pixels[1] == 77.0)
    assert images_to_pixels([], 32).shape == (0, 3, 32, 32)


def test_predict_pixels_refuses_the_wrong_shape(tmp_path):
    predictor = Predictor.load(build_bundle(tmp_path / "b"))
    with pytest.raises(ValueError, match="images_to_pixels"):
        predictor.predict_pixels(np.zeros((1, SEED_SIZE, SEED_SIZE, 3), np.float32))


def test_assess_refuses_bad_photos_and_predicts_good_ones(tmp_path):
    predictor = Predictor.load(build_bundle(tmp_path / "b"))
    good, tiny, black = (
        lesion_photos(1)[0],
        lesion_photos(1, size=40)[0],
        Image.new("RGB", (96, 96)),
    )
    results = predictor.assess_many([tiny, good, black])
    assert [r.ok for r in results] == [False, True, False]
    assert [r.code for r in results[0].reasons] == ["too_small"]
    assert [r.code for r in results[2].reasons] == ["too_dark"]
    assert results[0].prediction is None and results[2].prediction is None
    assert results[1].prediction == predictor.predict(good)
    assert results[1].ood_distance is None  # the bundle has no detector
    payload = json.loads(json.dumps([r.to_dict() for r in results]))
    assert payload[0]["reasons"][0]["code"] == "too_small"
    assert payload[1]["prediction"]["label"] in {"Others", "Monkey Pox"}


def test_assess_refuses_photos_far_from_the_training_photos(tmp_path):
    train = lesion_photos(30, start=100)
    plain = Predictor.load(build_bundle(tmp_path / "plain"))
    detector = OodDetector().fit(plain.embed(train))
    predictor = Predictor.load(build_bundle(tmp_path / "ood", ood=detector))
    skin, stripes = predictor.assess_many([lesion_photos(1, start=7)[0], stripes_photo()])
    assert skin.ok and skin.ood_distance <= detector.threshold_
    assert not stripes.ok and stripes.prediction is None
    assert [r.code for r in stripes.reasons] == ["out_of_domain"]
    assert stripes.ood_distance > detector.threshold_


def test_explain_gives_a_map_at_the_photo_size_through_either_backend(lite_bundle):
    predictor = Predictor.load(lite_bundle)
    assert predictor.torch_model_ is None  # ONNX serving does not load torch weights
    photo = lesion_photos(1)[0].resize((120, 90))
    heat = predictor.explain(photo)
    assert heat.shape == (90, 120)
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert predictor.torch_model_ is not None
    again = Predictor.load(lite_bundle, backend="torch").explain(photo)
    np.testing.assert_allclose(heat, again, atol=1e-5)


def test_explain_of_a_binary_model_refuses_the_negative_class(lite_bundle):
    with pytest.raises(ValueError, match="positive class"):
        Predictor.load(lite_bundle).explain(lesion_photos(1)[0], target="Others")
