"""Photo checks (size, blur, exposure) and the out-of-domain detector, on made and real photos."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
from inference_support import build_bundle, lesion_photos
from PIL import Image, ImageFilter
from scipy import ndimage
from sklearn.covariance import LedoitWolf
from sklearn.model_selection import GroupShuffleSplit

from mpoxscan.data.datasets import scan_dataset
from mpoxscan.data.images import decode_image
from mpoxscan.errors import NotFittedError
from mpoxscan.inference.predictor import Predictor
from mpoxscan.inference.quality import (
    OodDetector,
    QualitySettings,
    _ShrunkGaussian,
    check_photo,
    laplacian,
    photo_measurements,
)

NON_SKIN = ("chelsea", "coffee", "astronaut", "rocket")


def codes(image: Image.Image, settings: QualitySettings | None = None) -> list[str]:
    return [issue.code for issue in check_photo(image, settings)]


def test_a_sharp_lesion_photo_passes():
    for photo in lesion_photos(4):
        assert codes(photo) == []


def test_a_tiny_photo_is_too_small():
    issues = check_photo(lesion_photos(1, size=40)[0])
    assert [i.code for i in issues] == ["too_small"]
    assert "40x40" in issues[0].message and "64" in issues[0].message


def test_min_side_is_a_setting():
    assert codes(lesion_photos(1)[0], QualitySettings(min_side=200)) == ["too_small"]


def test_a_blurred_photo_is_too_blurry():
    photo = lesion_photos(1, size=128)[0]
    assert codes(photo.filter(ImageFilter.GaussianBlur(4))) == ["too_blurry"]


def test_a_black_photo_is_too_dark():
    assert codes(Image.new("RGB", (100, 100), (5, 5, 5))) == ["too_dark"]


def test_a_white_photo_is_overexposed():
    assert codes(Image.new("RGB", (100, 100), (255, 255, 255))) == ["overexposed"]


def test_a_half_blown_out_photo_is_overexposed():
    pixels = np.asarray(lesion_photos(1, size=100)[0]).copy()
    pixels[:50] = 255  # mean luminance stays below max_brightness; half the photo is clipped
    photo = Image.fromarray(pixels)
    assert photo_measurements(photo)["brightness"] < QualitySettings().max_brightness
    assert codes(photo) == ["overexposed"]


def test_sharpness_is_measured_at_model_scale():
    """A big photo whose blur vanishes at 224 px passes; its blurred thumbnail does not."""
    big = lesion_photos(1, size=96)[0].resize((900, 900), Image.Resampling.NEAREST)
    soft = big.filter(ImageFilter.GaussianBlur(2))
    assert codes(soft) == []
    assert codes(soft.resize((96, 96)).filter(ImageFilter.GaussianBlur(3))) == ["too_blurry"]


@pytest.mark.parametrize("shape", [(3, 3), (3, 8), (7, 4), (224, 299)])
def test_measurements_equal_the_float64_definitions(shape):
    """The integer Laplacian and the histogram sums give the float64 definitions' numbers."""
    gray = np.random.default_rng(shape[1]).integers(0, 256, shape, dtype=np.uint8)
    gray[0, :2] = (0, 255)  # both ends of the range, next to each other
    values = gray.astype(np.float64)
    np.testing.assert_array_equal(laplacian(gray), ndimage.laplace(values))
    found = photo_measurements(Image.fromarray(gray))
    assert found["sharpness"] == ndimage.laplace(values).var()
    assert found["brightness"] == values.mean()
    assert found["clipped_fraction"] == (values >= 250).mean()


def test_shrunk_gaussian_matches_sklearn_ledoit_wolf():
    rng = np.random.default_rng(0)
    for n, dims in ((40, 10), (20, 60)):  # more and fewer photos than dimensions
        x = rng.gamma(2.0, size=(n, dims))
        ours = _ShrunkGaussian.fit(x)
        reference = LedoitWolf().fit(x)
        np.testing.assert_allclose(ours.precision(), reference.precision_, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(ours.squared(x), reference.mahalanobis(x), rtol=1e-8)


def test_ood_detector_separates_near_from_far():
    rng = np.random.default_rng(1)
    train = rng.gamma(2.0, size=(200, 16))
    detector = OodDetector().fit(train)
    near = rng.gamma(2.0, size=(100, 16))
    far = rng.gamma(2.0, size=(10, 16)) + 8.0
    assert detector.is_out_of_domain(near).mean() < 0.05
    assert detector.is_out_of_domain(far).all()
    assert detector.train_distances_.shape == (200,)


def test_ood_detector_round_trips_through_tensors():
    rng = np.random.default_rng(2)
    detector = OodDetector().fit(rng.gamma(2.0, size=(50, 8)), groups=np.arange(50) // 2)
    loaded = OodDetector.from_tensors(detector.to_tensors(), detector.threshold_)
    probe = rng.gamma(2.0, size=(6, 8))
    np.testing.assert_allclose(loaded.distance(probe), detector.distance(probe), rtol=1e-5)


def test_ood_detector_errors_say_what_to_do():
    with pytest.raises(NotFittedError, match="fit"):
        OodDetector().distance(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="at least 5"):
        OodDetector().fit(np.ones((3, 4)))
    with pytest.raises(ValueError, match="do not vary"):
        OodDetector().fit(np.ones((10, 4)))
    detector = OodDetector().fit(np.random.default_rng(0).normal(size=(20, 4)))
    with pytest.raises(ValueError, match="same model"):
        detector.distance(np.zeros((1, 5)))


@pytest.mark.msld
def test_every_msld_original_passes_the_photo_checks(msld_dir):
    paths = sorted(p for p in msld_dir.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg"})
    assert len(paths) == 228
    refused = {p.name: codes(decode_image(p)) for p in paths}
    assert {name: c for name, c in refused.items() if c} == {}


@pytest.fixture(scope="module")
def msld_embeddings(msld_dir, tmp_path_factory):
    """EfficientNet-Lite0 (ImageNet) embeddings at 224 px of MSLD and of non-skin photos."""
    index = scan_dataset(msld_dir)
    bundle = build_bundle(tmp_path_factory.mktemp("lite224") / "b", "efficientnet-lite0", 224)
    predictor = Predictor.load(bundle, backend="torch")
    photos = [decode_image(record.path) for record in index.records]
    others = [Image.fromarray(getattr(skimage.data, name)()) for name in NON_SKIN]
    patients = np.array([record.patient for record in index.records])
    return predictor.embed(photos), patients, predictor.embed(others), others


@pytest.mark.msld
@pytest.mark.slow
def test_ood_detector_keeps_new_msld_patients_and_refuses_non_skin(msld_embeddings, tmp_path):
    embeddings, patients, other_embeddings, others = msld_embeddings
    train, held_out = next(
        GroupShuffleSplit(1, test_size=0.2, random_state=0).split(embeddings, groups=patients)
    )
    detector = OodDetector().fit(embeddings[train], groups=patients[train])
    held_out_distances = detector.distance(embeddings[held_out])
    other_distances = detector.distance(other_embeddings)
    passed = float((held_out_distances <= detector.threshold_).mean())
    print(
        f"\nOOD threshold {detector.threshold_:.1f}; held-out MSLD patients "
        f"({len(held_out)} photos): {passed:.1%} pass, distances median "
        f"{np.median(held_out_distances):.1f} max {held_out_distances.max():.1f}; "
        + ", ".join(f"{n} {d:.1f}" for n, d in zip(NON_SKIN, other_distances, strict=True))
    )
    assert passed >= 0.9
    assert (other_distances > detector.threshold_).all()

    # The same through a bundle: the photo checks pass these sharp, well-exposed photos, and
    # the detector saved with the model refuses them.
    bundle = build_bundle(tmp_path / "b", "efficientnet-lite0", 224, ood=detector)
    assessments = Predictor.load(bundle, backend="torch").assess_many(others)
    assert [[r.code for r in a.reasons] for a in assessments] == [["out_of_domain"]] * 4
