"""Metrics against values worked out by hand on small arrays."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from mpoxscan.evaluation.metrics import (
    binary_metrics,
    bootstrap_auc_ci,
    bootstrap_ci,
    multiclass_metrics,
    patient_level,
    summarize_folds,
    to_jsonable,
    weighted_binary_scores,
    wilson_interval,
)

# Ten photos, four positive. At threshold 0.5: tp 3 (0.9 0.8 0.6), fn 1 (0.4), fp 1 (0.7), tn 5.
Y10 = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
P10 = np.array([0.9, 0.8, 0.4, 0.6, 0.7, 0.2, 0.1, 0.3, 0.45, 0.05])


def test_wilson_interval_matches_textbook_values():
    assert wilson_interval(8, 10) == pytest.approx((0.490, 0.943), abs=5e-4)
    # 0 of 10: the Wilson upper bound is z^2 / (n + z^2) = 0.2775.
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-5)


def test_wilson_interval_matches_the_formula():
    k, n, z = 45, 50, 1.959963984540054
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    assert wilson_interval(k, n) == pytest.approx((centre - half, centre + half), abs=1e-9)


def test_wilson_interval_of_nothing_is_nan_and_bad_counts_raise():
    low, high = wilson_interval(0, 0)
    assert math.isnan(low) and math.isnan(high)
    with pytest.raises(ValueError, match="k <= n"):
        wilson_interval(11, 10)


def test_binary_metrics_counts_and_point_estimates_by_hand():
    m = binary_metrics(Y10, P10, n_boot=0)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (3, 1, 5, 1)
    assert m["n_images"] == 10 and m["n_positive"] == 4 and m["n_negative"] == 6
    assert "n_patients" not in m and "patient_level" not in m
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["sensitivity"] == pytest.approx(0.75)
    assert m["specificity"] == pytest.approx(5 / 6)
    assert m["ppv"] == pytest.approx(0.75)
    assert m["npv"] == pytest.approx(5 / 6)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert m["balanced_accuracy"] == pytest.approx((0.75 + 5 / 6) / 2)
    # 24 positive/negative pairs; the positives outrank 6, 6, 5 and 4 negatives.
    assert m["roc_auc"] == pytest.approx(21 / 24)
    # Ranked: P P N P N P N N N N -> precision 1, 1, 3/4, 4/6 at the four positives.
    assert m["pr_auc"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 6) / 4)
    likelihoods = [0.9, 0.8, 0.4, 0.6, 0.3, 0.8, 0.9, 0.7, 0.55, 0.95]
    assert m["log_loss"] == pytest.approx(-np.mean(np.log(likelihoods)))


def test_binary_metrics_proportion_intervals_are_wilson():
    m = binary_metrics(Y10, P10, n_boot=0)
    assert m["accuracy_ci"] == list(wilson_interval(8, 10))
    assert m["sensitivity_ci"] == list(wilson_interval(3, 4))
    assert m["specificity_ci"] == list(wilson_interval(5, 6))
    assert m["ppv_ci"] == list(wilson_interval(3, 4))
    assert m["npv_ci"] == list(wilson_interval(5, 6))


def test_a_probability_equal_to_the_threshold_counts_as_positive():
    m = binary_metrics([1, 0], [0.5, 0.4], threshold=0.5, n_boot=0)
    assert (m["tp"], m["fn"], m["tn"]) == (1, 0, 1)


def test_one_class_only_gives_nan_not_an_error_and_strict_json_after_to_jsonable():
    m = binary_metrics([1, 1, 1], [0.9, 0.2, 0.7], groups=["a", "b", "c"], n_boot=50)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    for key in ("specificity", "balanced_accuracy", "roc_auc", "pr_auc", "f1"):
        assert math.isnan(m[key]), key
    assert all(math.isnan(v) for v in m["roc_auc_ci"])
    text = json.dumps(to_jsonable(m), allow_nan=False)
    assert json.loads(text)["roc_auc"] is None


def test_bad_inputs_raise_with_a_hint():
    with pytest.raises(ValueError, match="0/1"):
        binary_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="probabilities"):
        binary_metrics([0, 1], [0.1, 1.2])
    with pytest.raises(ValueError, match="proba\\[:, 1\\]"):
        binary_metrics([0, 1], [[0.9, 0.1], [0.2, 0.8]])
    with pytest.raises(ValueError, match="groups"):
        binary_metrics([0, 1], [0.1, 0.9], groups=["a"])


def test_patient_level_takes_any_label_and_max_probability():
    y, p, ids = patient_level([0, 1, 0, 0, 1], [0.2, 0.9, 0.3, 0.1, 0.6], ["a", "a", "b", "b", "c"])
    assert ids.tolist() == ["a", "b", "c"]
    assert y.tolist() == [1, 0, 1]
    assert p.tolist() == [0.9, 0.3, 0.6]


def test_binary_metrics_with_groups_reports_patients():
    groups = ["p1", "p1", "p2", "p3", "n1", "n1", "n2", "n3", "n4", "n4"]
    m = binary_metrics(Y10, P10, groups=groups, n_boot=200)
    assert m["n_patients"] == 7 and m["bootstrap_unit"] == "patient"
    patients = m["patient_level"]
    # p1 max 0.9, p2 0.4, p3 0.6; n1 max 0.7, n2 0.1, n3 0.3, n4 0.45.
    assert patients["n_patients"] == 7 and patients["level"] == "patient"
    assert (patients["tp"], patients["fn"], patients["fp"], patients["tn"]) == (2, 1, 1, 3)
    # Positive 0.9 beats 4 negatives, 0.6 beats 3, 0.4 beats 2 (0.1, 0.3): 9 of 12 pairs.
    assert patients["roc_auc"] == pytest.approx(9 / 12)


def _signal_data(n_patients: int, photos: int, seed: int):
    rng = np.random.default_rng(seed)
    y_patient = np.arange(n_patients) % 2
    score = rng.normal(y_patient * 1.2, 1.0)
    y = np.repeat(y_patient, photos)
    p = 1 / (1 + np.exp(-(np.repeat(score, photos) + rng.normal(0, 0.5, len(y)))))
    groups = np.repeat([f"pt{i}" for i in range(n_patients)], photos)
    return y, p, groups


def test_bootstrap_intervals_contain_the_estimate_and_depend_only_on_the_seed():
    y, p, groups = _signal_data(60, 2, seed=1)
    m = binary_metrics(y, p, groups=groups, n_boot=500, seed=3)
    for key in ("balanced_accuracy", "f1", "roc_auc", "pr_auc"):
        low, high = m[f"{key}_ci"]
        assert low < m[key] < high, key
    again = binary_metrics(y, p, groups=groups, n_boot=500, seed=3)
    assert again["roc_auc_ci"] == m["roc_auc_ci"]
    other = binary_metrics(y, p, groups=groups, n_boot=500, seed=4)
    assert other["roc_auc_ci"] != m["roc_auc_ci"]


def test_bootstrap_resamples_patients_not_photos():
    # Every patient has three identical photos: resampling patients must give exactly the
    # interval of the one-row-per-patient data, and resampling photos a narrower one.
    y_patient, p_patient, groups_patient = _signal_data(40, 1, seed=2)
    y, p = np.repeat(y_patient, 3), np.repeat(p_patient, 3)
    groups = np.repeat(groups_patient, 3)
    by_patient = binary_metrics(y, p, groups=groups, n_boot=400, seed=0)
    # patient_level orders patients by id, as the grouped bootstrap does.
    y_sorted, p_sorted, _ = patient_level(y, p, groups)
    one_row_each = binary_metrics(y_sorted, p_sorted, n_boot=400, seed=0)
    for key in ("roc_auc_ci", "pr_auc_ci", "f1_ci", "balanced_accuracy_ci"):
        assert by_patient[key] == pytest.approx(one_row_each[key]), key
        assert by_patient["patient_level"][key] == pytest.approx(one_row_each[key]), key
    by_photo = binary_metrics(y, p, n_boot=400, seed=0)
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(by_photo["roc_auc_ci"]) < 0.8 * width(by_patient["roc_auc_ci"])
    assert bootstrap_auc_ci(y, p, groups, n_boot=400, seed=0) == tuple(by_patient["roc_auc_ci"])
    assert bootstrap_ci(y, p, groups, n_boot=400, seed=0)["f1"] == by_patient["f1_ci"]


def test_weighted_scores_equal_sklearn_with_sample_weights():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    p = np.round(rng.random(40), 1)  # rounded to force ties
    weights = rng.integers(0, 4, (6, 40)).astype(float)
    scores = weighted_binary_scores(y, p, weights, threshold=0.5)
    for row, w in enumerate(weights):
        assert scores["roc_auc"][row] == pytest.approx(roc_auc_score(y, p, sample_weight=w))
        assert scores["pr_auc"][row] == pytest.approx(
            average_precision_score(y, p, sample_weight=w)
        )
        assert scores["f1"][row] == pytest.approx(f1_score(y, p >= 0.5, sample_weight=w))


def test_multiclass_metrics_by_hand():
    classes = ["a", "b", "c"]
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    predicted = [0, 0, 1, 1, 2, 2, 2, 0]
    proba = np.full((8, 3), 0.1)
    proba[np.arange(8), predicted] = 0.8
    proba[0] = [0.6, 0.3, 0.1]  # vary scores so the AUCs are not all ties
    m = multiclass_metrics(y, proba, classes, groups=list("ppqqrrst"))
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]
    assert m["classes"] == classes and m["n_images"] == 8 and m["n_patients"] == 5
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["accuracy_ci"] == list(wilson_interval(5, 8))
    per = m["per_class"]
    assert per["a"]["precision"] == pytest.approx(2 / 3) and per["a"]["recall"] == pytest.approx(
        2 / 3
    )
    assert per["b"]["precision"] == pytest.approx(1 / 2) and per["b"]["support"] == 2
    assert per["c"]["f1"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert m["weighted_f1"] == pytest.approx((3 * 2 / 3 + 2 * 1 / 2 + 3 * 2 / 3) / 8)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    # Class b against the rest: positives score 0.8 and 0.1, negatives 0.3, 0.8 and 0.1 x4.
    # 0.8 beats 5 and ties 1 (5.5); 0.1 ties 4 (2); out of 2 x 6 pairs.
    assert per["b"]["roc_auc"] == pytest.approx(7.5 / 12)
    expected = roc_auc_score(y, proba, multi_class="ovr")
    assert m["macro_roc_auc"] == pytest.approx(expected)


def test_multiclass_metrics_reject_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        multiclass_metrics([0, 1], np.ones((2, 2)), ["a", "b", "c"])


def test_summarize_folds_mean_sd_and_dotted_keys():
    folds = [
        {"roc_auc": 0.8, "patient_level": {"roc_auc": 0.7}},
        {"roc_auc": 0.9, "patient_level": {"roc_auc": 0.9}},
        {"roc_auc": None, "patient_level": {"roc_auc": float("nan")}},
    ]
    summary = summarize_folds(folds, ["roc_auc", "patient_level.roc_auc"])
    assert summary["roc_auc"]["mean"] == pytest.approx(0.85)
    assert summary["roc_auc"]["std"] == pytest.approx(math.sqrt(2 * 0.05**2 / 1))
    assert summary["roc_auc"]["n"] == 2
    assert summary["roc_auc"]["values"][:2] == [0.8, 0.9]
    assert summary["patient_level.roc_auc"]["mean"] == pytest.approx(0.8)
    with pytest.raises(KeyError, match="available"):
        summarize_folds(folds, ["auc"])


def test_to_jsonable_converts_numpy_and_nan():
    data = {"a": np.float32(0.5), "b": [np.int64(3), float("nan")], "c": np.array([1.0, np.inf])}
    assert to_jsonable(data) == {"a": 0.5, "b": [3, None], "c": [1.0, None]}
