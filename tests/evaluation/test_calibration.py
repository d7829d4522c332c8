"""Temperature scaling, calibration error and threshold choice."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import expit, softmax

from mpoxscan.evaluation.calibration import (
    TEMPERATURE_BOUNDS,
    apply_temperature,
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
    reliability_curve,
)


def test_binary_temperature_by_hand():
    # All logits 2, three of four positive: the NLL is least where sigmoid(2 / T) = 3/4,
    # i.e. 2 / T = ln 3.
    expected = 2 / math.log(3)
    assert fit_temperature([2.0, 2.0, 2.0, 2.0], [1, 1, 1, 0], binary=True) == pytest.approx(
        expected, rel=1e-4
    )
    column = np.full((4, 1), 2.0)
    assert fit_temperature(column, [1, 1, 1, 0], binary=True) == pytest.approx(expected, rel=1e-4)


def test_multiclass_temperature_by_hand():
    # Logits (2, 0, 0), half the labels class 0: softmax gives a / (a + 2) with a = e^(2/T);
    # the likelihood a^2 / (a + 2)^4 peaks at a = 2, so T = 2 / ln 2.
    logits = np.tile([2.0, 0.0, 0.0], (4, 1))
    fitted = fit_temperature(logits, [0, 0, 1, 2], binary=False)
    assert fitted == pytest.approx(2 / math.log(2), rel=1e-4)


def test_separable_data_hits_the_lower_bound():
    fitted = fit_temperature([3.0, -3.0], [1, 0], binary=True)
    assert fitted == pytest.approx(TEMPERATURE_BOUNDS[0], rel=1e-3)


def _overconfident_binary(n: int, seed: int):
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0.0, 2.0, n)
    labels = (rng.random(n) < expit(true_logits)).astype(int)
    return 3.0 * true_logits, labels


def test_temperature_scaling_undoes_overconfidence_and_lowers_ece():
    logits, labels = _overconfident_binary(3000, seed=0)
    temperature = fit_temperature(logits, labels, binary=True)
    assert temperature == pytest.approx(3.0, abs=0.4)
    before = expected_calibration_error(labels, expit(logits))
    after = expected_calibration_error(labels, apply_temperature(logits, temperature, True)[:, 1])
    assert after < before / 2
    assert after < 0.05


def test_multiclass_temperature_scaling_lowers_ece():
    rng = np.random.default_rng(1)
    true_logits = rng.normal(0.0, 1.5, (3000, 3))
    probs = softmax(true_logits, axis=1)
    labels = (rng.random((3000, 1)) > probs.cumsum(axis=1)).sum(axis=1)
    logits = 3.0 * true_logits
    temperature = fit_temperature(logits, labels, binary=False)
    assert temperature == pytest.approx(3.0, abs=0.4)
    before = expected_calibration_error(labels, softmax(logits, axis=1))
    after = expected_calibration_error(labels, apply_temperature(logits, temperature, False))
    assert after < before / 2


def test_apply_temperature_by_hand():
    proba = apply_temperature([0.0, 2.0], 2.0, binary=True)
    assert proba.shape == (2, 2)
    assert proba[:, 1] == pytest.approx([0.5, 1 / (1 + math.exp(-1))])
    assert proba.sum(axis=1) == pytest.approx([1.0, 1.0])
    multi = apply_temperature([[math.log(3), 0.0]], 1.0, binary=False)
    assert multi[0] == pytest.approx([0.75, 0.25])
    with pytest.raises(ValueError, match="positive"):
        apply_temperature([0.0], 0.0, binary=True)


def test_reliability_curve_and_ece_by_hand():
    y, p = [0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9]
    curve = reliability_curve(y, p, n_bins=2)
    assert curve["bin_centres"] == [0.25, 0.75]
    assert curve["counts"] == [2, 2]
    assert curve["accuracy"] == [0.0, 1.0]
    assert curve["confidence"] == pytest.approx([0.15, 0.8])
    # Bin gaps 0.15 and 0.2, each bin half of the photos.
    assert expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.175)


def test_reliability_curve_puts_one_in_the_last_bin_and_leaves_empty_bins_nan():
    curve = reliability_curve([1, 0], [1.0, 0.05], n_bins=4)
    assert curve["counts"] == [1, 0, 0, 1]
    assert math.isnan(curve["accuracy"][1]) and math.isnan(curve["confidence"][2])
    assert expected_calibration_error([1, 0], [1.0, 0.05], n_bins=4) == pytest.approx(0.025)


def test_multiclass_ece_uses_top_label_confidence():
    proba = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]])
    # Both predict class 0 with mean confidence 0.65; one is right: gap 0.15.
    assert expected_calibration_error([0, 2], proba, n_bins=5) == pytest.approx(0.15)


Y = [1, 1, 1, 1, 0, 0, 0, 0]
P = [0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1]


@pytest.mark.parametrize(
    ("target", "threshold", "sensitivity", "specificity"),
    [(0.75, 0.6, 0.75, 0.75), (0.95, 0.3, 1.0, 0.5), (1.0, 0.3, 1.0, 0.5), (0.5, 0.8, 0.5, 1.0)],
)
def test_choose_threshold_by_hand(target, threshold, sensitivity, specificity):
    choice = choose_threshold(Y, P, target_sensitivity=target)
    assert choice["threshold"] == threshold
    assert choice["sensitivity"] == sensitivity
    assert choice["specificity"] == specificity


def test_choose_threshold_reaches_the_target_with_the_highest_threshold():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 200)
    p = expit(rng.normal(y * 1.5 - 0.75, 1.0))
    positives = np.sort(p[y == 1])
    for target in (0.7, 0.8, 0.9, 0.95, 0.99):
        choice = choose_threshold(y, p, target)
        assert (p[y == 1] >= choice["threshold"]).mean() >= target
        higher = positives[positives > choice["threshold"]]
        if len(higher):
            # The next higher candidate misses the target.
            assert (p[y == 1] >= higher[0]).mean() < target


def test_choose_threshold_needs_positives_and_a_valid_target():
    with pytest.raises(ValueError, match="positive"):
        choose_threshold([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="target_sensitivity"):
        choose_threshold([1, 0], [0.9, 0.2], target_sensitivity=0.0)


def test_calibrate_logits_fits_on_validation_and_scores_with_the_same_temperature():
    from mpoxscan.evaluation.calibration import calibrate_logits, calibrated_probabilities

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    logits = (3.0 * (2 * labels - 1) + rng.normal(0, 2, 200))[:, None]  # (n, 1), one logit
    temperature, threshold, choice = calibrate_logits(logits, labels, True, 0.9)
    assert temperature == pytest.approx(fit_temperature(logits[:, 0], labels, binary=True))
    assert threshold == choice["threshold"] and 0 < threshold < 1
    proba = calibrated_probabilities(logits, temperature, True)
    np.testing.assert_allclose(proba, apply_temperature(logits[:, 0], temperature, True))
    multi = rng.normal(size=(30, 3))
    t, th, ch = calibrate_logits(multi, rng.integers(0, 3, 30), False, 0.9)
    assert th == 0.5 and ch == {} and t > 0
