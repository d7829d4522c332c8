"""Every plot writes a non-empty PNG of the size its figure size and DPI promise."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mpoxscan.evaluation import plots

HISTORY = [
    {"epoch": 1, "train_loss": 0.7, "train_accuracy": 0.5, "val_loss": 0.65, "val_accuracy": 0.55},
    {"epoch": 2, "train_loss": 0.5, "train_accuracy": 0.7, "val_loss": 0.55, "val_accuracy": 0.7},
    {"epoch": 3, "train_loss": 0.4, "train_accuracy": 0.8, "val_loss": 0.6, "val_accuracy": None},
]


def _pixels(size: tuple[float, float]) -> tuple[int, int]:
    return (round(size[0] * plots.DPI), round(size[1] * plots.DPI))


def _assert_png(path, size: tuple[float, float]) -> None:
    assert path.is_file() and path.stat().st_size > 2000
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == _pixels(size)
        # A blank canvas would be a single colour.
        assert len(image.convert("L").getcolors(maxcolors=100_000) or [0] * 3) > 2


def _toy(seed: int, n: int = 40):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    p = 1 / (1 + np.exp(-rng.normal(2 * y - 1, 1.0)))
    return y, p


def test_training_curves(tmp_path):
    path = plots.plot_training_curves(HISTORY, tmp_path / "sub" / "curves.png", title="Fold 1")
    assert path == tmp_path / "sub" / "curves.png"
    _assert_png(path, plots.TRAINING_CURVES_SIZE)


def test_training_curves_need_history(tmp_path):
    with pytest.raises(ValueError, match="at least one epoch"):
        plots.plot_training_curves([], tmp_path / "c.png")


def test_confusion_matrix(tmp_path):
    path = plots.plot_confusion_matrix(
        [[5, 1], [2, 7]], ["Others", "Monkey Pox"], tmp_path / "cm.png"
    )
    _assert_png(path, plots.CONFUSION_SIZE)
    with pytest.raises(ValueError, match="2x2"):
        plots.plot_confusion_matrix([[1, 2, 3]], ["a", "b"], tmp_path / "bad.png")


def test_roc_and_pr_single_and_list_forms(tmp_path):
    y, p = _toy(0)
    _assert_png(plots.plot_roc(y, p, tmp_path / "roc.png", label="test"), plots.CURVE_SIZE)
    _assert_png(plots.plot_pr(list(y), list(p), tmp_path / "pr.png"), plots.CURVE_SIZE)
    folds = [_toy(seed) for seed in (1, 2, 3)]
    ys = [f[0] for f in folds] + [np.concatenate([f[0] for f in folds])]
    ps = [f[1] for f in folds] + [np.concatenate([f[1] for f in folds])]
    names = ["fold 0", "fold 1", "fold 2", "pooled"]
    path = plots.plot_roc(ys, ps, tmp_path / "rocs.png", label=names, highlight={"pooled"})
    _assert_png(path, plots.CURVE_SIZE)
    _assert_png(plots.plot_pr(ys, ps, tmp_path / "prs.png", label=names), plots.CURVE_SIZE)
    with pytest.raises(ValueError, match="list of 4 names"):
        plots.plot_roc(ys, ps, tmp_path / "bad.png", label=["one"])


def test_roc_skips_a_curve_with_one_class(tmp_path):
    y, p = _toy(4)
    path = plots.plot_roc([y, np.ones(5)], [p, np.full(5, 0.7)], tmp_path / "r.png")
    _assert_png(path, plots.CURVE_SIZE)


def test_reliability(tmp_path):
    y, p = _toy(5, n=200)
    _assert_png(plots.plot_reliability(y, p, tmp_path / "rel.png"), plots.RELIABILITY_SIZE)


def test_samples_grid(tmp_path):
    colours = ["red", "green", "blue", "white", "black"]
    items = [(Image.new("RGB", (40, 30), c), f"class {c}") for c in colours]
    path = plots.plot_samples_grid(items, tmp_path / "grid.png", rows=4, cols=3)
    cell = plots.SAMPLE_CELL_SIZE
    _assert_png(path, (3 * cell, 4 * cell))


def test_plot_test_results_writes_the_confusion_matrix_and_roc_of_binary_models(tmp_path):
    labels = np.array([0, 0, 1, 1, 1])
    proba = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2], [0.1, 0.9]])
    written = plots.plot_test_results(tmp_path / "b", labels, proba, ["Others", "Mpox"], 0.5, True)
    assert [p.name for p in written] == ["confusion_matrix.png", "roc.png"]
    assert all(Image.open(p).size[0] > 100 for p in written)
    predicted = plots.predicted_classes(proba, 0.65, True)
    assert predicted.tolist() == [0, 0, 1, 0, 1]
    assert plots.confusion_counts(labels, predicted, 2).tolist() == [[2, 0], [1, 2]]
    multi = plots.plot_test_results(
        tmp_path / "m", [0, 2], np.eye(3)[[0, 1]], list("abc"), 0.5, False
    )
    assert [p.name for p in multi] == ["confusion_matrix.png"]
