"""Terminal tables show each metric with its interval and sample size."""

from __future__ import annotations

import numpy as np
from rich.console import Console

from mpoxscan.evaluation.metrics import binary_metrics, multiclass_metrics, summarize_folds
from mpoxscan.evaluation.tables import folds_table, format_ci, format_number, metrics_table

Y10 = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
P10 = np.array([0.9, 0.8, 0.4, 0.6, 0.7, 0.2, 0.1, 0.3, 0.45, 0.05])
GROUPS = ["p1", "p1", "p2", "p3", "n1", "n1", "n2", "n3", "n4", "n4"]


def _text(table) -> str:
    console = Console(record=True, width=160, color_system=None)
    console.print(table)
    return console.export_text()


def test_format_helpers():
    assert format_number(0.12345) == "0.123"
    assert format_number(float("nan")) == "n/a" and format_number(None) == "n/a"
    assert format_number(np.int64(7)) == "7"
    assert format_ci([0.4901, 0.9433]) == "0.490–0.943"
    assert format_ci([None, 0.5]) == "n/a"


def test_metrics_table_shows_values_intervals_and_counts():
    m = binary_metrics(Y10, P10, groups=GROUPS, n_boot=100)
    text = _text(metrics_table(m, title="Test split"))
    assert "Test split" in text
    assert "10 images from 7 patients" in text
    # Sensitivity 3/4 with its Wilson interval, at image level; 2/3 at patient level.
    sensitivity = next(line for line in text.splitlines() if "Sensitivity" in line)
    assert "0.750" in sensitivity and "3/4" in sensitivity and "2/3" in sensitivity
    assert format_ci(m["sensitivity_ci"]) in sensitivity
    auc = next(line for line in text.splitlines() if "ROC AUC" in line)
    assert "0.875" in auc and format_ci(m["roc_auc_ci"]) in auc


def test_metrics_table_handles_multiclass():
    proba = np.eye(3)[[0, 1, 2, 0]] * 0.7 + 0.1
    m = multiclass_metrics([0, 1, 2, 1], proba, ["a", "b", "c"])
    text = _text(metrics_table(m, title="Multi"))
    accuracy = next(line for line in text.splitlines() if "Accuracy" in line)
    assert "0.750" in accuracy and "3/4" in accuracy
    assert "Macro F1" in text


def test_folds_table_has_a_row_per_fold_and_mean_sd():
    folds = [
        {"fold": i, "repeat": 0, "metrics": binary_metrics(Y10, np.roll(P10, i), n_boot=0)}
        for i in range(3)
    ]
    summary = summarize_folds([f["metrics"] for f in folds], ["sensitivity", "roc_auc"])
    text = _text(folds_table(folds, summary))
    assert "mean ± SD" in text
    mean = format_number(summary["roc_auc"]["mean"])
    std = format_number(summary["roc_auc"]["std"])
    assert f"{mean} ± {std}" in text
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines()]
    fold_rows = [row for row in rows if row and row[0] == "0"]
    assert [row[1] for row in fold_rows] == ["0", "1", "2"]
    assert [row[4] for row in fold_rows] == ["0.750", "0.500", "0.500"]
