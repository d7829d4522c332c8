"""Temperature scaling, calibration error and the choice of a screening threshold.

Everything here is fitted on validation data. Fitting a temperature or a threshold on a test
fold and then reporting that fold's metrics would make the numbers look better than the model
is, so cross-validation fits both on each fold's validation part and only applies them to its
test part.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize_scalar
from scipy.special import expit, logsumexp, softmax

#: Temperatures are searched in this range (log-scale); beyond it the logits carry no signal
#: (large T) or the validation set is separable and any smaller T only sharpens (small T).
TEMPERATURE_BOUNDS = (0.01, 100.0)


def fit_temperature(logits: ArrayLike, labels: ArrayLike, binary: bool) -> float:
    """The temperature ``T`` that minimises the negative log-likelihood of ``logits / T``.

    Fit it on validation data, never on the data you report metrics for.

    Args:
        logits: binary: shape ``(n,)`` or ``(n, 1)``, used as ``sigmoid(logit / T)``;
            multi-class: shape ``(n, k)``, used as ``softmax(logits / T)``.
        labels: binary: 0/1 per row; multi-class: class index per row.
        binary: which of the two cases ``logits`` is.

    Returns:
        ``T`` in :data:`TEMPERATURE_BOUNDS` (``T > 1`` softens over-confident outputs). It
        sits at the lower bound when the validation set is perfectly separated.
    """
    z, y = _check_logits(logits, labels, binary)
    if binary:
        signs = 2.0 * y - 1.0

        def nll(temperature: float) -> float:
            return float(np.logaddexp(0.0, -signs * z / temperature).mean())
    else:
        rows = np.arange(len(y))

        def nll(temperature: float) -> float:
            scaled = z / temperature
            return float((logsumexp(scaled, axis=1) - scaled[rows, y]).mean())

    # The NLL is convex in 1/T, hence unimodal in log T: a bounded Brent search is reliable.
    low, high = (math.log(t) for t in TEMPERATURE_BOUNDS)
    result = minimize_scalar(
        lambda log_t: nll(math.exp(log_t)),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(math.exp(result.x))


def apply_temperature(logits: ArrayLike, temperature: float, binary: bool) -> np.ndarray:
    """Probabilities from logits divided by a temperature.

    Args:
        logits: ``(n,)`` or ``(n, 1)`` for binary, ``(n, k)`` for multi-class.
        temperature: ``T > 0`` from :func:`fit_temperature`.
        binary: whether ``logits`` holds one positive-class logit per row.

    Returns:
        ``(n, 2)`` probabilities ``[1 - p, p]`` for binary, ``(n, k)`` for multi-class.
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    z = np.asarray(logits, dtype=float)
    if binary:
        z = _binary_logits(z)
        p = expit(z / temperature)
        return np.column_stack([1.0 - p, p])
    if z.ndim != 2:
        raise ValueError(f"multi-class logits must have shape (n, k), got {z.shape}")
    return softmax(z / temperature, axis=1)


def calibrate_logits(
    logits: ArrayLike, labels: ArrayLike, binary: bool, target_sensitivity: float
) -> tuple[float, float, dict[str, Any]]:
    """Fit the temperature and pick the decision threshold, both on validation logits.

    Args:
        logits: ``(n, 1)`` for binary, ``(n, k)`` for multi-class (a tensor works too).
        labels: ``(n,)`` class indices.
        binary: whether ``logits`` holds one positive-class logit per row.
        target_sensitivity: see :func:`choose_threshold`.

    Returns:
        ``(temperature, threshold, choice)``; multi-class keeps the threshold at 0.5 and
        ``choice`` empty.
    """
    z, y = _logits_array(logits, binary), np.asarray(labels)
    temperature = fit_temperature(z, y, binary=binary)
    if not binary:
        return temperature, 0.5, {}
    p = apply_temperature(z, temperature, binary=True)[:, 1]
    choice = choose_threshold(y, p, target_sensitivity=target_sensitivity)
    return temperature, float(choice["threshold"]), choice


def calibrated_probabilities(logits: ArrayLike, temperature: float, binary: bool) -> np.ndarray:
    """Class probabilities ``(n, n_classes)`` from logits (a tensor works too) and ``T``."""
    return apply_temperature(_logits_array(logits, binary), temperature, binary)


def _logits_array(logits: ArrayLike, binary: bool) -> np.ndarray:
    array = np.asarray(logits).astype(np.float64)
    return array[:, 0] if binary else array


def reliability_curve(y_true: ArrayLike, p: ArrayLike, n_bins: int = 10) -> dict[str, Any]:
    """Observed frequency against predicted probability in equal-width bins.

    Binary (``p`` of shape ``(n,)``): ``confidence`` is the mean positive-class probability in
    a bin and ``accuracy`` the fraction of positives there. Multi-class (``p`` of shape
    ``(n, k)``, ``y_true`` class indices): ``confidence`` is the mean top probability and
    ``accuracy`` the fraction predicted correctly. A probability of exactly 1 falls in the
    last bin.

    Args:
        y_true: 0/1 labels (binary) or class indices (multi-class).
        p: positive-class probabilities ``(n,)`` or class probabilities ``(n, k)``.
        n_bins: number of bins over [0, 1].

    Returns:
        ``{"bin_edges", "bin_centres", "accuracy", "confidence", "counts"}``: lists with one
        entry per bin (``n_bins + 1`` edges); empty bins have nan accuracy and confidence.
    """
    observed, predicted = _observed_and_predicted(y_true, p)
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.minimum((predicted * n_bins).astype(int), n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(bins, weights=observed, minlength=n_bins) / counts
        confidence = np.bincount(bins, weights=predicted, minlength=n_bins) / counts
    return {
        "bin_edges": edges.tolist(),
        "bin_centres": ((edges[:-1] + edges[1:]) / 2).tolist(),
        "accuracy": accuracy.tolist(),
        "confidence": confidence.tolist(),
        "counts": counts.tolist(),
    }


def expected_calibration_error(y_true: ArrayLike, p: ArrayLike, n_bins: int = 10) -> float:
    """Expected calibration error: the count-weighted mean |accuracy - confidence| over bins.

    Args:
        y_true: 0/1 labels (binary) or class indices (multi-class), as in
            :func:`reliability_curve`.
        p: positive-class probabilities ``(n,)`` or class probabilities ``(n, k)``.
        n_bins: number of equal-width bins.

    Returns:
        The ECE in [0, 1]; 0 is perfectly calibrated.
    """
    curve = reliability_curve(y_true, p, n_bins)
    counts = np.asarray(curve["counts"], dtype=float)
    gaps = np.abs(np.asarray(curve["accuracy"]) - np.asarray(curve["confidence"]))
    filled = counts > 0
    return float((counts[filled] * gaps[filled]).sum() / counts.sum())


def choose_threshold(
    y_true: ArrayLike, p: ArrayLike, target_sensitivity: float = 0.95
) -> dict[str, float]:
    """The highest threshold whose sensitivity reaches a target, on validation data.

    Choose it on validation labels, never on a test fold: a threshold tuned on the data it is
    scored on overstates sensitivity. Photos count as positive when ``p >= threshold``, so the
    result is the positive score ranked ``ceil(target * n_positive)``-th from the top. Every
    target in (0, 1] is reachable on the data it is chosen on (at worst the lowest positive
    score gives sensitivity 1), so no fallback is needed here; on new data the sensitivity
    at this threshold can be lower than the target.

    Args:
        y_true: 0/1 validation labels (1 = positive class); needs at least one positive.
        p: positive-class probabilities.
        target_sensitivity: the sensitivity to reach, in (0, 1].

    Returns:
        ``{"threshold", "sensitivity", "specificity", "target_sensitivity"}``; specificity is
        nan when there are no negatives.
    """
    if not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(f"target_sensitivity must be in (0, 1], got {target_sensitivity}")
    y = np.asarray(y_true).astype(int).ravel()
    prob = np.asarray(p, dtype=float).ravel()
    if len(y) != len(prob) or not np.isin(y, [0, 1]).all():
        raise ValueError("y_true must hold one 0/1 label per probability in p")
    positives = np.sort(prob[y == 1])[::-1]
    if len(positives) == 0:
        raise ValueError(
            "cannot choose a threshold for a sensitivity without positive examples; "
            "use a validation set that contains the positive class"
        )
    # The tolerance keeps e.g. 0.7 * 10 = 7.000000000000001 from asking for an 8th positive.
    needed = max(1, math.ceil(target_sensitivity * len(positives) - 1e-9))
    threshold = float(positives[needed - 1])
    negatives = prob[y == 0]
    return {
        "threshold": threshold,
        "sensitivity": float((positives >= threshold).mean()),
        "specificity": float((negatives < threshold).mean()) if len(negatives) else math.nan,
        "target_sensitivity": float(target_sensitivity),
    }


def _binary_logits(z: np.ndarray) -> np.ndarray:
    """Accept ``(n,)`` or ``(n, 1)`` binary logits and return ``(n,)``."""
    if z.ndim == 2 and z.shape[1] == 1:
        z = z[:, 0]
    if z.ndim != 1:
        raise ValueError(
            f"binary logits must have shape (n,) or (n, 1), got {z.shape}; "
            "pass binary=False for one logit per class"
        )
    return z


def _check_logits(
    logits: ArrayLike, labels: ArrayLike, binary: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Validate logits and labels for temperature fitting."""
    z = np.asarray(logits, dtype=float)
    y = np.asarray(labels).ravel()
    z = _binary_logits(z) if binary else z
    if not binary and z.ndim != 2:
        raise ValueError(f"multi-class logits must have shape (n, k), got {z.shape}")
    if len(z) != len(y) or len(y) == 0:
        raise ValueError(f"need one label per logit row and at least one row, got {len(y)}")
    if not np.isfinite(z).all():
        raise ValueError("logits must be finite; check the model output for nan/inf")
    high = 1 if binary else z.shape[1] - 1
    as_float = y.astype(float)
    if not np.array_equal(as_float, np.round(as_float)):
        raise ValueError("labels must be integers (0/1 or class indices)")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() > high:
        raise ValueError(f"labels must lie in 0..{high}, got values {np.unique(y)[:5]}")
    return z, y


def _observed_and_predicted(y_true: ArrayLike, p: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the 0/1 outcome and the predicted probability of that outcome."""
    y = np.asarray(y_true).ravel()
    prob = np.asarray(p, dtype=float)
    if prob.ndim == 2 and prob.shape[1] > 1:
        if len(prob) != len(y):
            raise ValueError(f"{len(y)} labels but {len(prob)} probability rows")
        return (prob.argmax(axis=1) == y).astype(float), prob.max(axis=1)
    prob = prob.ravel()
    if len(prob) != len(y) or len(y) == 0:
        raise ValueError(f"need one probability per label and at least one, got {len(prob)}")
    if not np.isfinite(prob).all() or prob.min() < 0 or prob.max() > 1:
        raise ValueError("p must hold probabilities in [0, 1]")
    if not np.isin(y, [0, 1]).all():
        raise ValueError("binary y_true must hold 0/1 labels")
    return y.astype(float), prob
