"""Cross-validation on generated photos: every photo tested once, no patient in two folds."""

import csv
import json

from mpoxscan.data.datasets import fingerprint_records
from mpoxscan.training.config import DataConfig, ModelConfig, TrainConfig
from mpoxscan.training.cv import run_cv
from mpoxscan.training.recipes import load_index


def test_cv_tests_every_photo_once_and_never_splits_a_patient(tiny_dataset, tmp_path):
    summary = run_cv(
        DataConfig(data_dir=str(tiny_dataset)),
        ModelConfig(name="seed-cnn", image_size=96),
        TrainConfig(epochs=1, batch_size=8),
        tmp_path,
        folds=3,
        command="pytest",
    )
    with (tmp_path / "oof.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 48
    assert len({row["file"] for row in rows}) == 48
    folds_of_patient = {}
    for row in rows:
        folds_of_patient.setdefault(row["patient"], set()).add(row["fold"])
    assert all(len(folds) == 1 for folds in folds_of_patient.values())
    assert len(summary["folds"]) == 3
    index = load_index(DataConfig(data_dir=str(tiny_dataset)))
    assert summary["data"] == {
        "fingerprint": fingerprint_records(index.records),  # what the bundle of this data has
        "n_images": 48,
        "n_patients": 24,
        "per_class": {"Monkey Pox": 24, "Others": 24},
    }
    accuracy = summary["mean_std"]["accuracy"]
    assert len(accuracy["values"]) == 3 and 0 <= accuracy["mean"] <= 1
    assert summary["pooled"]["n_patients"] == 24
    assert json.loads((tmp_path / "summary.json").read_text())["command"] == "pytest"
