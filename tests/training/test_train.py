"""Training end to end on generated photos: bundle contents, determinism, early stopping."""

import json

import numpy as np
import pytest
import torch

from mpoxscan import load_model
from mpoxscan.data.datasets import scan_dataset
from mpoxscan.data.images import decode_image
from mpoxscan.training.config import DataConfig, TrainConfig
from mpoxscan.training.loop import class_balanced_loss

from testdata import train_tiny_bundle


def test_bundle_records_what_a_user_needs(tiny_bundle):
    meta = json.loads((tiny_bundle / "model.json").read_text())
    assert meta["architecture"]["name"] == "efficientnet-lite0"
    assert meta["classes"] == ["Others", "Monkey Pox"]
    assert meta["positive_class"] == "Monkey Pox"
    assert meta["preprocessing"] == {
        "image_size": 64,
        "mean": [127, 127, 127],
        "std": [128, 128, 128],
    }
    assert 0 < meta["threshold"] <= 1 and meta["temperature"] > 0
    assert meta["command"] == "pytest"
    assert meta["config"]["train"]["epochs"] == 2
    assert len(meta["data_fingerprint"]) == 64
    test = meta["metrics"]["test"]
    assert test["n_patients"] == meta["data"]["splits"]["test"]["patients"] > 0
    assert len(test["accuracy_ci"]) == 2
    for name in ("model.safetensors", "curves.png", "confusion_matrix.png", "roc.png"):
        assert (tiny_bundle / name).stat().st_size > 0
    assert "model.safetensors" in meta["files"]


def test_splits_in_bundle_are_patient_grouped(tiny_bundle):
    meta = json.loads((tiny_bundle / "model.json").read_text())
    splits = meta["data"]["splits"]
    assert sum(s["patients"] for s in splits.values()) == 24  # no patient counted twice
    assert sum(s["images"] for s in splits.values()) == 48
    assert meta["data"]["leak_warnings"] == []
    assert meta["data"]["copy_merges"] == []  # no copies among the generated photos


def test_loaded_bundle_predicts_label_and_probabilities(tiny_bundle, tiny_dataset):
    predictor = load_model(tiny_bundle)
    prediction = predictor.predict(decode_image(next((tiny_dataset / "Monkey Pox").glob("*.jpg"))))
    assert prediction.label in ("Monkey Pox", "Others")
    assert set(prediction.probabilities) == {"Monkey Pox", "Others"}
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert prediction.probability == pytest.approx(prediction.probabilities["Monkey Pox"])


def test_same_seed_gives_same_metrics_on_cpu(tiny_dataset, tmp_path):
    first = train_tiny_bundle(tiny_dataset, tmp_path / "a", model="seed-cnn", epochs=2)
    second = train_tiny_bundle(tiny_dataset, tmp_path / "b", model="seed-cnn", epochs=2)
    assert first.history == second.history
    assert first.test_metrics["accuracy"] == second.test_metrics["accuracy"]


def test_early_stopping_restores_the_best_validation_epoch(tiny_dataset, tmp_path):
    result = train_tiny_bundle(tiny_dataset, tmp_path / "b", model="seed-cnn", epochs=6, patience=1)
    val_losses = [row["val_loss"] for row in result.history]
    assert result.best_epoch == int(np.argmin(val_losses)) + 1
    assert len(result.history) <= result.best_epoch + 1  # stopped one stale epoch after the best


@pytest.mark.parametrize("model", ["seed-cnn", "vgg16"])
def test_every_registry_model_trains_into_a_bundle(model, tiny_dataset, tmp_path):
    result = train_tiny_bundle(tiny_dataset, tmp_path / model, model=model, epochs=1)
    meta = json.loads((result.bundle_dir / "model.json").read_text())
    assert meta["architecture"]["name"] == model
    assert load_model(result.bundle_dir).predict_proba(
        [decode_image(next((tiny_dataset / "Others").glob("*.jpg")))]
    ).shape == (1, 2)


def test_presplit_layout_keeps_its_folders(tiny_presplit_dataset, tmp_path):
    result = train_tiny_bundle(tiny_presplit_dataset, tmp_path / "p", model="seed-cnn", epochs=1)
    meta = json.loads((result.bundle_dir / "model.json").read_text())
    assert meta["data"]["layout"] == "presplit"
    assert meta["data"]["splits"]["test"] == {"images": 12, "patients": 6}


def test_multiclass_bundle_has_one_output_per_class(tiny_dataset, tmp_path):
    from mpoxscan.training.config import ModelConfig
    from mpoxscan.training.train import train_bundle

    result = train_bundle(
        DataConfig(data_dir=str(tiny_dataset), multiclass=True),
        ModelConfig(name="seed-cnn", image_size=96),
        TrainConfig(epochs=1, batch_size=8),
        tmp_path / "m",
        show_progress=False,
    )
    meta = json.loads((result.bundle_dir / "model.json").read_text())
    assert meta["architecture"]["num_outputs"] == 2 and meta["multiclass"] is True
    assert "confusion_matrix" in result.test_metrics


def test_class_balanced_loss_weights_the_rare_class():
    loss = class_balanced_loss([0, 0, 0, 1], num_outputs=1)
    assert float(loss.pos_weight) == pytest.approx(3.0)
    weighted = class_balanced_loss([0, 0, 0, 1, 2, 2], num_outputs=3)
    assert torch.allclose(weighted.weight, torch.tensor([6 / 9, 6 / 3, 6 / 6]))


def test_scan_matches_training_split_sizes(tiny_dataset):
    assert len(scan_dataset(tiny_dataset).records) == 48
