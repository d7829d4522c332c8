"""The out-of-domain check fitted on all skin sources: nearest training photos, not one
Gaussian; skin photos of every source pass, noise, screenshots, text, drawings and everyday
photos are refused."""

from __future__ import annotations

import numpy as np
import pytest
from inference_support import build_bundle

from mpoxscan.data.images import decode_image
from mpoxscan.data.sources import load_sources
from mpoxscan.data.splits import split_dataset
from mpoxscan.errors import NotFittedError
from mpoxscan.evaluation.ood_probes import SKIMAGE_SAMPLES, non_skin_probes
from mpoxscan.inference.bundle import load_ood_detector, read_bundle_meta
from mpoxscan.inference.predictor import Predictor
from mpoxscan.inference.quality import NeighbourOodDetector

from testdata import REPO_ROOT

SHARED_MANIFEST = REPO_ROOT / "benchmarks" / "shared-data.toml"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
DEFAULT_BUNDLE = REPO_ROOT / "models" / "default"


def clusters(rng: np.random.Generator, n: int, centres: np.ndarray) -> np.ndarray:
    """Non-negative embeddings (as pooled ReLU features are) around a few centres."""
    picks = centres[rng.integers(0, len(centres), n)]
    return np.abs(picks + rng.normal(0, 0.3, picks.shape))


def test_neighbours_accept_every_cluster_and_refuse_what_lies_between():
    rng = np.random.default_rng(0)
    centres = rng.gamma(2.0, size=(4, 32)) * (rng.random((4, 32)) < 0.3)  # sparse, distinct
    detector = NeighbourOodDetector(k=3).fit(clusters(rng, 400, centres))
    assert detector.is_out_of_domain(clusters(rng, 200, centres)).mean() < 0.03
    # a point of no cluster (all features a little on), and the clusters' mean
    assert detector.is_out_of_domain(np.full((1, 32), 0.5)).all()
    assert detector.is_out_of_domain(centres.mean(axis=0, keepdims=True)).all()
    assert detector.train_distances_.shape == (400,)


def test_a_group_does_not_vouch_for_itself():
    rng = np.random.default_rng(1)
    base = rng.gamma(2.0, size=(30, 16))
    copies = np.repeat(base, 3, axis=0)  # three identical photos per group
    by_photo = NeighbourOodDetector(k=1).fit(copies)
    by_group = NeighbourOodDetector(k=1).fit(copies, groups=np.arange(90) // 3)
    assert by_photo.train_distances_.max() < 1e-6  # each photo's twin is its neighbour
    assert by_group.train_distances_.min() > 1e-3  # only other groups count
    assert by_group.threshold_ > by_photo.threshold_


def test_neighbour_detector_round_trips_through_a_bundle(tmp_path):
    rng = np.random.default_rng(2)
    train = rng.gamma(2.0, size=(60, 1280))
    detector = NeighbourOodDetector(k=4).fit(train, groups=np.arange(60) // 2)
    bundle = build_bundle(tmp_path / "b", "efficientnet-lite0", 64, ood=detector)
    meta = read_bundle_meta(bundle)
    assert (meta.ood["method"], meta.ood["k"]) == ("knn-cosine", 4)
    loaded = load_ood_detector(bundle, meta)
    probe = rng.gamma(2.0, size=(5, 1280))
    np.testing.assert_allclose(loaded.distance(probe), detector.distance(probe), atol=2e-3)
    assert loaded.threshold_ == pytest.approx(detector.threshold_)


def test_neighbour_detector_errors_say_what_to_do():
    with pytest.raises(NotFittedError, match="fit"):
        NeighbourOodDetector().distance(np.ones((1, 4)))
    with pytest.raises(ValueError, match="more than 5"):
        NeighbourOodDetector(k=5).fit(np.random.default_rng(0).random((5, 4)))
    detector = NeighbourOodDetector(k=2).fit(np.random.default_rng(0).random((20, 4)))
    with pytest.raises(ValueError, match="same model"):
        detector.distance(np.ones((1, 5)))


def test_probe_pictures_cover_every_kind():
    probes = non_skin_probes(seed=3, size=128)
    assert {kind: len(images) for kind, images in probes.items()} == {
        "noise": 3,
        "screenshot": 3,
        "text": 2,
        "drawing": 3,
        "photo": len(SKIMAGE_SAMPLES),
    }
    assert all(img.mode == "RGB" for images in probes.values() for img in images)
    assert set(SKIMAGE_SAMPLES.values()) >= {"person", "animal", "object"}


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not here")
@pytest.mark.skipif(not (DEFAULT_BUNDLE / "model.onnx").is_file(), reason="no models/default")
def test_fitted_on_all_sources_it_assesses_skin_and_refuses_the_rest(tmp_path):
    index = load_sources([SHARED_MANIFEST])
    split = split_dataset(index, val_fraction=0.05, test_fraction=0.2, seed=0)
    rng = np.random.default_rng(0)

    def sample(records, per_source):
        chosen = []
        for source in dict.fromkeys(r.source for r in records):
            mine = [r for r in records if r.source == source]
            chosen += [mine[i] for i in rng.permutation(len(mine))[:per_source]]
        return chosen

    fit_records, held_out = sample(split.train, 80), sample(split.test, 10)
    embedder = Predictor.load(DEFAULT_BUNDLE)  # ImageNet Lite0 embeddings (ONNX: fast)
    fit_embeddings = embedder.embed([decode_image(r.path) for r in fit_records])
    detector = NeighbourOodDetector().fit(fit_embeddings, groups=[r.patient for r in fit_records])
    held_refused = detector.is_out_of_domain(
        embedder.embed([decode_image(r.path) for r in held_out])
    )
    by_source = {}
    for record, refused in zip(held_out, held_refused, strict=True):
        by_source.setdefault(record.source, []).append(refused)
    print({source: f"{np.mean(flags):.0%}" for source, flags in by_source.items()})
    assert held_refused.mean() <= 0.15
    assert all(np.mean(flags) <= 0.3 for flags in by_source.values())
    probes = non_skin_probes()
    for kind, images in probes.items():
        assert detector.is_out_of_domain(embedder.embed(images)).all(), kind

    # through a bundle, as the page and the API see it: nothing of these gets an answer
    bundle = build_bundle(tmp_path / "with-ood", "efficientnet-lite0", 224, ood=detector)
    predictor = Predictor.load(bundle, backend="torch")
    for kind, images in probes.items():
        assessments = predictor.assess_many(images)
        assert all(not a.ok and a.prediction is None and a.reasons for a in assessments), kind
