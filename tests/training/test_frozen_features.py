"""The frozen-features recipe on generated photos: cache, frozen backbone, bundle, folds."""

import csv
import json

import numpy as np
import pytest
import torch

from mpoxscan import load_model
from mpoxscan.data.datasets import scan_dataset
from mpoxscan.data.loading import ImageDataset
from mpoxscan.data.photos import read_photo
from mpoxscan.data.splits import split_dataset
from mpoxscan.data.transforms import normalize_batch
from mpoxscan.evaluation.metrics import binary_metrics
from mpoxscan.training import frozen_features
from mpoxscan.training.config import (
    DataConfig,
    FeatureConfig,
    ModelConfig,
    TrainConfig,
    with_recipe,
)
from mpoxscan.training.cv import run_cv
from mpoxscan.training.frozen_features import (
    FeatureCache,
    check_pooled_head,
    embed_dataset,
    fit_frozen_head,
    frozen_logits,
)
from mpoxscan.training.recipes import build_model
from mpoxscan.training.train import train_bundle

SIZE = 32  # EfficientNet-Lite0 runs at any size; 32 px keeps every forward pass cheap


def frozen_cfg(head: str = "logreg", views: int = 3, tta: bool = False, **features) -> TrainConfig:
    features = {"epochs": 20, "logreg_cs": (0.01, 1.0)} | features
    return TrainConfig(
        recipe="frozen-features",
        batch_size=8,
        features=FeatureConfig(head=head, train_views=views, tta=tta, **features),
    )


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lite0():
    return build_model(ModelConfig(name="efficientnet-lite0", image_size=SIZE), 1)


@pytest.fixture(scope="module")
def parts(tiny_dataset):
    split = split_dataset(scan_dataset(tiny_dataset), val_fraction=0.2, test_fraction=0.2)
    return {name: ImageDataset(getattr(split, name), SIZE) for name in ("train", "val", "test")}


def test_cached_views_equal_recomputed_ones(lite0, parts, tmp_path):
    model, prep = lite0
    cfg = frozen_cfg()
    kwargs = {"augment": cfg.augment, "seed": 3}
    first = embed_dataset(model, prep, parts["val"], 2, cache=FeatureCache(tmp_path), **kwargs)
    # More views later: the cached two are kept and two more (augmented) are computed.
    more = embed_dataset(model, prep, parts["val"], 4, cache=FeatureCache(tmp_path), **kwargs)
    recomputed = embed_dataset(model, prep, parts["val"], 4, cache=FeatureCache(), **kwargs)
    assert more.shape == (len(parts["val"]), 4, 1280)
    np.testing.assert_array_equal(more[:, :2], first)
    np.testing.assert_allclose(more, recomputed, atol=1e-5)
    assert not np.allclose(more[:, 0], more[:, 1])  # the mirror image is another view
    assert not np.allclose(more[:, 2], more[:, 3])  # each augmented view draws its own changes
    with torch.no_grad():
        direct = model.embed(normalize_batch(parts["val"].images.float() / 255, prep)).numpy()
    np.testing.assert_allclose(more[:, 0], direct, atol=1e-4)
    other_seed = embed_dataset(
        model, prep, parts["val"], 3, cache=FeatureCache(tmp_path), augment=cfg.augment, seed=4
    )
    assert not np.allclose(other_seed[:, 2], more[:, 2])  # the seed is part of the key


@pytest.mark.parametrize("head", ["logreg", "linear"])
def test_training_changes_the_head_and_never_the_backbone(head, parts):
    model, prep = build_model(ModelConfig(name="efficientnet-lite0", image_size=SIZE), 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = fit_frozen_head(
        model, parts["train"], parts["val"], frozen_cfg(head), prep, FeatureCache()
    )
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"head.1.weight", "head.1.bias"}
    assert 1 <= result.best_epoch <= len(result.history)
    assert all(not p.requires_grad for p in model.backbone_parameters())


def test_tail_fine_tuning_trains_only_the_last_blocks_and_scores_like_the_network(parts):
    model, prep = build_model(ModelConfig(name="efficientnet-lite0", image_size=SIZE), 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = frozen_cfg("logreg", views=2, tail_blocks=1, tail_epochs=2)
    cache = FeatureCache()
    result = fit_frozen_head(model, parts["train"], parts["val"], cfg, prep, cache)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert "head.1.weight" in changed
    assert all(
        k.startswith(("head.", "backbone._blocks.15.", "backbone._conv_head.", "backbone._bn1."))
        for k in changed
    )
    assert any(row.get("stage") == "tail" for row in result.history)
    # The cached block inputs are still valid: the blocks before the tail did not move, so the
    # recipe's logits equal the whole network's on the photos.
    logits, _ = frozen_logits(model, parts["test"], cfg, prep, cache)
    with torch.no_grad():
        direct = model(normalize_batch(parts["test"].images.float() / 255, prep))
    torch.testing.assert_close(logits, direct, atol=1e-4, rtol=1e-4)


def test_bundle_predicts_what_the_in_memory_head_predicted(tiny_dataset, tmp_path):
    cfg = frozen_cfg("logreg", views=2, cache_dir=str(tmp_path / "cache"))
    data_cfg = DataConfig(data_dir=str(tiny_dataset))
    result = train_bundle(
        data_cfg,
        ModelConfig(name="efficientnet-lite0", image_size=SIZE),
        cfg,
        tmp_path / "bundle",
        command="pytest",
        show_progress=False,
    )
    meta = json.loads((result.bundle_dir / "model.json").read_text())
    assert meta["config"]["train"]["recipe"] == "frozen-features"
    assert meta["config"]["train"]["features"]["head"] == "logreg"
    # The test metrics came from cached embeddings and the head in memory; the saved network,
    # loaded afresh, must give the same probabilities for the same test photos.
    test = split_dataset(scan_dataset(tiny_dataset), seed=cfg.seed).test
    predictor = load_model(result.bundle_dir, backend="torch")
    p = predictor.predict_proba([read_photo(r.path, predictor.image_size_) for r in test])[:, 1]
    labels = np.array([r.label for r in test])
    again = binary_metrics(labels, p, threshold=meta["threshold"], n_boot=0)
    assert again["log_loss"] == pytest.approx(result.test_metrics["log_loss"], abs=1e-5)
    assert again["accuracy"] == result.test_metrics["accuracy"]
    assert any((tmp_path / "cache").glob("*.npy"))


def test_cv_with_frozen_features_keeps_each_patient_in_one_fold(tiny_dataset, tmp_path):
    summary = run_cv(
        DataConfig(data_dir=str(tiny_dataset)),
        ModelConfig(name="efficientnet-lite0", image_size=SIZE),
        frozen_cfg("logreg", views=2, tta=True),
        tmp_path,
        folds=3,
        command="pytest",
    )
    with (tmp_path / "oof.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["file"] for row in rows) == sorted(
        str(p) for p in tiny_dataset.rglob("*.jpg")
    )
    folds_of_patient: dict[str, set[str]] = {}
    for row in rows:
        folds_of_patient.setdefault(row["patient"], set()).add(row["fold"])
    assert len(folds_of_patient) == 24
    assert all(len(folds) == 1 for folds in folds_of_patient.values())
    assert summary["config"]["train"]["recipe"] == "frozen-features"
    assert summary["pooled"]["n_patients"] == 24


def test_recipe_refuses_a_head_on_the_whole_feature_map():
    model, _ = build_model(ModelConfig(name="seed-cnn", image_size=96), 1)
    with pytest.raises(ValueError, match="--recipe finetune"):
        check_pooled_head(model)


def test_feature_config_is_validated_and_read_back():
    with pytest.raises(ValueError, match="head"):
        FeatureConfig(head="svm")
    cfg = TrainConfig.from_dict(
        {"recipe": "frozen-features", "features": {"head": "linear", "logreg_cs": [0.1, 1]}}
    )
    assert cfg.features.head == "linear" and cfg.features.logreg_cs == (0.1, 1.0)
    with pytest.raises(ValueError, match="recipe"):
        TrainConfig(recipe="distil")
    with pytest.raises(ValueError, match="tail_blocks"):
        FeatureConfig(tail_blocks=-1)


def test_default_recipe_follows_the_model():
    lite = with_recipe(TrainConfig(), ModelConfig(name="efficientnet-lite2"))
    assert lite.recipe == "frozen-features"
    assert with_recipe(TrainConfig(), ModelConfig(name="seed-cnn")).recipe == "finetune"
    chosen = TrainConfig(recipe="finetune")
    assert with_recipe(chosen, ModelConfig(name="efficientnet-lite0")).recipe == "finetune"


def test_large_embedding_jobs_run_in_onnx_runtime_with_the_same_embeddings(
    lite0, parts, monkeypatch
):
    model, prep = lite0
    cfg = frozen_cfg()
    kwargs = {"augment": cfg.augment, "seed": 3}
    eager = embed_dataset(model, prep, parts["val"], 3, cache=FeatureCache(), **kwargs)
    built = []

    class CountingOnnxForward(frozen_features.OnnxForward):
        def __init__(self, *args, **kw):
            built.append(args)
            super().__init__(*args, **kw)

    monkeypatch.setattr(frozen_features, "MIN_PASSES", 1)
    monkeypatch.setattr(frozen_features, "OnnxForward", CountingOnnxForward)
    fast = embed_dataset(model, prep, parts["val"], 3, cache=FeatureCache(), **kwargs)
    assert len(built) == 1  # one graph for the whole job
    np.testing.assert_allclose(fast, eager, atol=1e-4)
