"""The open-world recipe on generated photos: style-changed views, source-balanced weights,
the recipe file, and the "no lesion seen" head a bundle gets when healthy skin is trained on."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mpoxscan.data.datasets import scan_dataset
from mpoxscan.data.loading import ImageDataset
from mpoxscan.data.splits import split_dataset
from mpoxscan.data.style import STYLE_PROBES, StyleConfig, random_style
from mpoxscan.inference.predictor import Predictor
from mpoxscan.training.config import (
    DataConfig,
    FeatureConfig,
    ModelConfig,
    TrainConfig,
)
from mpoxscan.training.frozen_features import (
    FeatureCache,
    embed_dataset,
    fit_frozen_head,
    sample_weights,
)
from mpoxscan.training.train import build_model, train_bundle

from testdata import make_healthy_skin_photo, make_unsplit_dataset

SIZE = 64  # photos of 64-127 px are read as they are, so the photo checks pass them
RECIPE = Path(__file__).resolve().parents[2] / "benchmarks" / "recipes" / "open-world.json"
SELECTED = RECIPE.with_name("open-world-selected.json")  # benchmarks/openworld_select.py


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def parts(tiny_dataset):
    split = split_dataset(scan_dataset(tiny_dataset), val_fraction=0.2, test_fraction=0.2)
    return {name: ImageDataset(getattr(split, name), SIZE) for name in ("train", "val")}


def test_style_changes_only_the_augmented_views_and_are_cached(parts, tmp_path):
    model, prep = build_model(ModelConfig(name="efficientnet-lite0", image_size=SIZE), 1)
    style = StyleConfig(jpeg=1.0, rescale=1.0, text=1.0, white_balance=1.0)
    kwargs = {"augment": TrainConfig().augment, "seed": 0}
    plain = embed_dataset(model, prep, parts["val"], 3, cache=FeatureCache(), **kwargs)
    styled = embed_dataset(
        model, prep, parts["val"], 3, cache=FeatureCache(tmp_path), style=style, **kwargs
    )
    again = embed_dataset(
        model, prep, parts["val"], 3, cache=FeatureCache(tmp_path), style=style, **kwargs
    )
    np.testing.assert_allclose(styled[:, :2], plain[:, :2], atol=1e-5)  # photo and mirror
    assert not np.allclose(styled[:, 2], plain[:, 2], atol=1e-3)
    np.testing.assert_array_equal(again, styled)


def test_style_changes_keep_the_photo_size_and_repeat_with_the_seed():
    pixels = np.asarray(make_healthy_skin_photo(seed=1, size=80))
    cfg = StyleConfig(jpeg=1.0, rescale=1.0, text=1.0, white_balance=1.0)
    first = random_style(pixels, cfg, np.random.default_rng(5))
    assert first.shape == pixels.shape and first.dtype == np.uint8
    np.testing.assert_array_equal(first, random_style(pixels, cfg, np.random.default_rng(5)))
    assert np.abs(first.astype(int) - pixels).mean() > 1.0
    for name, probe in STYLE_PROBES.items():
        assert probe(pixels).shape == pixels.shape, name
    with pytest.raises(ValueError, match="probability"):
        StyleConfig(jpeg=1.5)


def test_source_balanced_weights_match_hand_computed_values():
    def rec(source, class_name):
        return SimpleNamespace(source=source, class_name=class_name)

    records = [
        rec("A", "Monkey Pox"),
        rec("A", "Monkey Pox"),
        rec("A", "Others"),
        rec("B", "Healthy"),
        rec("B", "Healthy"),
        rec("B", "Scabies"),
        rec("C", "Ants"),
    ]
    labels = np.array([1, 1, 0, 0, 0, 0, 0])
    # mpox: one cell of 2 photos; negatives: 4 cells (A, B healthy, B lesion, C) of 1/2/1/1.
    # Raw weights 1/2, 1/2 | 1/4, 1/8, 1/8, 1/4, 1/4 sum to 2; scaled to mean 1 (x 7/2).
    expected = np.array([1.75, 1.75, 0.875, 0.4375, 0.4375, 0.875, 0.875])
    np.testing.assert_allclose(sample_weights(records, labels, "source"), expected)
    assert sample_weights(records, labels, "class") is None
    with pytest.raises(ValueError, match="balance"):
        FeatureConfig(balance="patient")


def test_the_recipe_file_trains_the_head_with_style_and_balance(parts):
    recipe = json.loads(RECIPE.read_text())
    cfg = TrainConfig.from_dict(
        recipe | {"features": recipe["features"] | {"train_views": 3, "logreg_cs": [0.1]}}
    )
    assert isinstance(cfg.features.style, StyleConfig)
    assert cfg.features.balance == "source"
    assert TrainConfig.from_dict(json.loads(json.dumps(asdict(cfg)))) == cfg  # model.json
    model, prep = build_model(ModelConfig(name="efficientnet-lite0", image_size=SIZE), 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit_frozen_head(model, parts["train"], parts["val"], cfg, prep, FeatureCache())
    changed = {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}
    assert changed == {"head.1.weight", "head.1.bias"}


def test_a_bundle_trained_with_healthy_skin_gets_a_no_lesion_head(tmp_path):
    data = make_unsplit_dataset(tmp_path / "data", patients=10)
    (data / "Healthy").mkdir()
    for i in range(16):
        make_healthy_skin_photo(seed=500 + i).save(data / "Healthy" / f"h{i}.jpg", quality=92)
    recipe = json.loads(RECIPE.read_text())
    features = recipe["features"] | {"train_views": 2, "logreg_cs": [0.1]}
    result = train_bundle(
        DataConfig(data_dir=str(data), val_fraction=0.25),
        ModelConfig(name="efficientnet-lite0", image_size=SIZE),
        TrainConfig.from_dict(recipe | {"features": features}),
        tmp_path / "bundle",
        show_progress=False,
    )
    meta = json.loads((result.bundle_dir / "model.json").read_text())
    assert meta["no_lesion"]["file"] in meta["files"]
    assert 0.0 <= meta["no_lesion"]["threshold"] <= 1.0
    predictor = Predictor.load(result.bundle_dir, backend="torch")
    assert predictor.no_lesion_ is not None
    prediction = predictor.predict(make_healthy_skin_photo(seed=999, size=80))
    assert prediction.no_lesion_probability is not None


def test_the_recipe_chosen_on_validation_data_is_a_train_config():
    cfg = TrainConfig.from_dict(json.loads(SELECTED.read_text()))
    assert (cfg.features.train_views, cfg.features.balance) == (3, "source")
    assert cfg.features.style is None and cfg.features.head == "logreg"
