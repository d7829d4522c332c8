"""A fake-but-valid cross-validation output folder, built from random numbers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from mpoxscan.evaluation.metrics import binary_metrics, summarize_folds, to_jsonable

CLASSES = ["Others", "Monkey Pox"]
KEYS = ("accuracy", "sensitivity", "specificity", "f1", "balanced_accuracy", "roc_auc", "pr_auc")


def _history(rng: np.random.Generator, epochs: int) -> list[dict[str, float]]:
    loss = np.linspace(0.7, 0.3, epochs) + rng.normal(0, 0.02, epochs)
    return [
        {
            "epoch": epoch + 1,
            "train_loss": float(loss[epoch]),
            "train_accuracy": float(1 - loss[epoch] / 1.5),
            "val_loss": float(loss[epoch] + 0.05 + 0.01 * epoch),
            "val_accuracy": float(1 - loss[epoch] / 1.4),
        }
        for epoch in range(epochs)
    ]


def make_cv_dir(root: Path, folds: int = 2, repeats: int = 2, patients: int = 30) -> Path:
    """Write ``summary.json`` and ``oof.csv`` as ``mpoxscan cv`` lays them out."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    ids = [f"{CLASSES[i % 2]}/P{i}" for i in range(patients)]
    rows, entries = [], []
    for repeat in range(repeats):
        fold_of = rng.permutation(np.arange(patients) % folds)
        for fold in range(folds):
            records = []
            for i in np.flatnonzero(fold_of == fold):
                label = i % 2
                for photo in (1, 2):
                    p = float(1 / (1 + np.exp(-rng.normal(2.0 * label - 1.0, 1.2))))
                    records.append(
                        {
                            "file": f"data/{ids[i]}_{photo}.jpg",
                            "patient": ids[i],
                            "class": CLASSES[label],
                            "label": label,
                            "fold": fold,
                            "repeat": repeat,
                            "probability": p,
                        }
                    )
            y = np.array([r["label"] for r in records])
            p = np.array([r["probability"] for r in records])
            groups = [r["patient"] for r in records]
            entries.append(
                {
                    "fold": fold,
                    "repeat": repeat,
                    "best_epoch": 3,
                    "temperature": 1.3,
                    "threshold": 0.42,
                    "metrics": binary_metrics(y, p, groups=groups, n_boot=100),
                    "screening_metrics": binary_metrics(y, p, 0.42, groups=groups, n_boot=100),
                    "history": _history(rng, 5),
                }
            )
            rows.extend(records)
    first = [r for r in rows if r["repeat"] == 0]
    summary = {
        "command": "mpoxscan cv data/msld --model seed-cnn --folds 2 --repeats 2",
        "versions": {"mpoxscan": "0.1.0", "torch": "2.13.0", "python": "3.11.9"},
        "config": {"folds": folds, "repeats": repeats, "train": {"target_sensitivity": 0.95}},
        "data": {
            "n_images": 2 * patients,
            "n_patients": patients,
            "per_class": {name: patients for name in CLASSES},
        },
        "pooled": binary_metrics(
            np.array([r["label"] for r in first]),
            np.array([r["probability"] for r in first]),
            groups=[r["patient"] for r in first],
            n_boot=200,
        ),
        "mean_std": summarize_folds([e["metrics"] for e in entries], KEYS),
        "screening_mean_std": summarize_folds([e["screening_metrics"] for e in entries], KEYS),
        "folds": entries,
        "classes": CLASSES,
        "positive_class": "Monkey Pox",
    }
    (root / "summary.json").write_text(json.dumps(to_jsonable(summary), allow_nan=False))
    with (root / "oof.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="session")
def cv_dir_factory():
    """:func:`make_cv_dir`, for tests that need a folder of their own size."""
    return make_cv_dir


@pytest.fixture(scope="module")
def cv_dir(tmp_path_factory) -> Path:
    """A two-fold, two-repeat cross-validation folder of 30 patients with two photos each."""
    return make_cv_dir(tmp_path_factory.mktemp("cv"))
