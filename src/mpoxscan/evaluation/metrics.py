"""Screening metrics with confidence intervals that respect patients.

Every figure mpoxscan reports comes from here. Proportions (accuracy, sensitivity, specificity,
PPV, NPV) carry a Wilson score interval; balanced accuracy, F1 and the two AUCs carry a
percentile bootstrap interval that resamples whole patients when patient ids are given, because
photos of one patient are not independent and resampling photos would make intervals too narrow.

The dictionaries are JSON-serialisable (ints, floats, lists, strings) except that undefined values
are ``float("nan")``: a metric that needs both classes on data with one class only, or an interval
with no data. Python's ``json`` module writes those as bare ``NaN``, which is not valid JSON; pass
the dictionary through :func:`to_jsonable` first (it turns nan and infinities into ``null``) and
write with ``json.dumps(..., allow_nan=False)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

CONFIDENCE = 0.95
#: Metrics whose interval comes from the Wilson score method.
PROPORTIONS = ("accuracy", "sensitivity", "specificity", "ppv", "npv")
#: Metrics whose interval comes from the (patient) bootstrap.
BOOTSTRAPPED = ("balanced_accuracy", "f1", "roc_auc", "pr_auc")
#: The binary measures summarised over cross-validation folds (mean ± SD) and shown on cards.
SUMMARY_METRICS = (*PROPORTIONS, "f1", "balanced_accuracy", "roc_auc", "pr_auc")
# Below this share of usable resamples (the others lacked a class) an interval would describe
# a different population than the estimate, so it is reported as nan instead.
MIN_VALID_FRACTION = 0.5
# Bootstrap weights are built in chunks of about this many cells to bound memory.
_CHUNK_CELLS = 4_000_000


def wilson_interval(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``k / n``.

    Args:
        k: number of successes, ``0 <= k <= n``.
        n: number of trials.
        confidence: coverage of the interval, e.g. 0.95.

    Returns:
        ``(low, high)``; ``(nan, nan)`` when ``n == 0``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence}")
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n for a proportion, got k={k}, n={n}")
    if n == 0:
        return (math.nan, math.nan)
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def patient_level(
    y_true: ArrayLike, p: ArrayLike, groups: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Aggregate photo-level labels and probabilities to one row per patient.

    A patient is positive if any of their photos is, and the patient's probability is the
    maximum over their photos (a screen flags a patient when any lesion looks like mpox).

    Args:
        y_true: 0/1 labels per photo (1 = positive class).
        p: positive-class probability per photo.
        groups: patient id per photo.

    Returns:
        ``(y_patient, p_patient, patient_ids)``, ordered by sorted patient id.
    """
    y, prob = _check_binary(y_true, p)
    ids, inverse = _group_index(groups, len(y))
    y_patient = np.zeros(len(ids), dtype=np.int64)
    p_patient = np.zeros(len(ids), dtype=float)
    np.maximum.at(y_patient, inverse, y)
    np.maximum.at(p_patient, inverse, prob)
    return y_patient, p_patient, ids


def binary_metrics(
    y_true: ArrayLike,
    p: ArrayLike,
    threshold: float = 0.5,
    groups: ArrayLike | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Screening metrics for a binary classifier, each with a 95% confidence interval.

    A photo is predicted positive when ``p >= threshold``.

    Args:
        y_true: 0/1 labels per photo (1 = positive class).
        p: positive-class probability per photo.
        threshold: decision threshold on ``p``.
        groups: patient id per photo. When given, bootstrap intervals resample patients, the
            result holds ``n_patients`` and a ``patient_level`` sub-dict (see
            :func:`patient_level`).
        n_boot: bootstrap resamples; 0 skips the bootstrap (its intervals are then nan).
        seed: seed of the bootstrap, which is deterministic for a seed.

    Returns:
        A dict with ``level`` (``"image"``), ``n_images``, ``n_patients`` (with groups),
        ``n_positive``, ``n_negative``, ``threshold``, ``tp fp tn fn``, ``accuracy``,
        ``sensitivity``, ``specificity``, ``ppv``, ``npv``, ``f1``, ``balanced_accuracy``,
        ``roc_auc``, ``pr_auc`` (average precision), ``log_loss``, a ``<name>_ci`` ``[low,
        high]`` for each but log loss, ``bootstrap_unit`` and ``n_boot``. Metrics that need
        both classes are nan when one is missing.
    """
    y, prob = _check_binary(y_true, p)
    result: dict[str, Any] = {"level": "image", "n_images": len(y)}
    if groups is None:
        result.update(_binary_core(y, prob, threshold, None, n_boot, seed, unit="image"))
        return result
    ids, inverse = _group_index(groups, len(y))
    result["n_patients"] = len(ids)
    result.update(_binary_core(y, prob, threshold, inverse, n_boot, seed, unit="patient"))
    y_patient, p_patient, _ = patient_level(y, prob, groups)
    patients = {"level": "patient", "n_patients": len(ids)}
    patients.update(_binary_core(y_patient, p_patient, threshold, None, n_boot, seed, "patient"))
    result["patient_level"] = patients
    return result


def screening_metrics(
    labels: ArrayLike,
    proba: np.ndarray,
    classes: Sequence[str],
    threshold: float,
    binary: bool,
    groups: Sequence[str],
) -> dict[str, Any]:
    """The metrics of a test set: :func:`binary_metrics` at ``threshold`` on the positive
    class's probability, or :func:`multiclass_metrics`; bootstrap intervals by patient.

    Args:
        labels: true class indices (binary: 1 is the positive class).
        proba: ``(n, n_classes)`` probabilities.
        classes: class names in output order.
        threshold: decision threshold (binary only).
        binary: one positive class against the rest.
        groups: the patient of every photo.
    """
    if binary:
        return binary_metrics(labels, proba[:, 1], threshold=threshold, groups=groups)
    return multiclass_metrics(labels, proba, classes, groups=groups)


def bootstrap_ci(
    y_true: ArrayLike,
    p: ArrayLike,
    groups: ArrayLike | None = None,
    *,
    threshold: float = 0.5,
    n_boot: int = 1000,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of balanced accuracy, F1, ROC AUC and PR AUC.

    Whole patients are resampled with replacement when ``groups`` is given (photos otherwise).
    Resamples that lack a class are dropped; if fewer than half remain, the interval is nan.

    Args:
        y_true: 0/1 labels per photo.
        p: positive-class probability per photo.
        groups: patient id per photo, or None to resample photos.
        threshold: decision threshold for balanced accuracy and F1.
        n_boot: number of resamples.
        confidence: coverage of the intervals.
        seed: random seed; the same seed gives the same intervals.

    Returns:
        ``{"balanced_accuracy": [low, high], "f1": ..., "roc_auc": ..., "pr_auc": ...}``.
    """
    y, prob = _check_binary(y_true, p)
    inverse = None if groups is None else _group_index(groups, len(y))[1]
    return _bootstrap(y, prob, threshold, inverse, n_boot, confidence, seed)


def bootstrap_auc_ci(
    y_true: ArrayLike,
    p: ArrayLike,
    groups: ArrayLike | None = None,
    *,
    n_boot: int = 1000,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the ROC AUC, resampling patients when ``groups`` given.

    Args:
        y_true: 0/1 labels per photo.
        p: positive-class probability per photo.
        groups: patient id per photo, or None to resample photos.
        n_boot: number of resamples.
        confidence: coverage of the interval.
        seed: random seed.

    Returns:
        ``(low, high)``.
    """
    ci = bootstrap_ci(y_true, p, groups, n_boot=n_boot, confidence=confidence, seed=seed)
    low, high = ci["roc_auc"]
    return (low, high)


def multiclass_metrics(
    y_true: ArrayLike,
    proba: ArrayLike,
    classes: Sequence[str],
    groups: ArrayLike | None = None,
) -> dict[str, Any]:
    """Metrics for a multi-class classifier that predicts the most probable class.

    Args:
        y_true: class index per photo, ``0 <= y < len(classes)``.
        proba: ``(n, len(classes))`` class probabilities.
        classes: class names in output order.
        groups: patient id per photo (only counted: ``n_patients``).

    Returns:
        A dict with ``level``, ``n_images``, ``n_patients`` (with groups), ``classes``,
        ``n_correct``, ``accuracy`` and its Wilson ``accuracy_ci``, ``balanced_accuracy`` (mean
        recall over classes present), ``macro_f1``, ``weighted_f1``, ``macro_roc_auc`` (mean
        one-vs-rest ROC AUC over classes that have positives and negatives), ``per_class``
        ``{name: {precision, recall, f1, support, roc_auc}}`` and ``confusion_matrix`` (rows:
        true class, columns: predicted class, in ``classes`` order).
    """
    y, prob = _check_multiclass(y_true, proba, classes)
    k = len(classes)
    labels = list(range(k))
    pred = prob.argmax(axis=1)
    n_correct = int((pred == y).sum())
    precision, recall, f1, support = precision_recall_fscore_support(
        y, pred, labels=labels, zero_division=np.nan
    )
    aucs = [_one_vs_rest_auc(y == c, prob[:, c]) for c in labels]
    result: dict[str, Any] = {"level": "image", "n_images": len(y)}
    if groups is not None:
        result["n_patients"] = len(_group_index(groups, len(y))[0])
    result.update(
        classes=list(classes),
        n_correct=n_correct,
        accuracy=n_correct / len(y),
        accuracy_ci=list(wilson_interval(n_correct, len(y))),
        balanced_accuracy=_nanmean(recall[support > 0]),
        macro_f1=float(f1_score(y, pred, labels=labels, average="macro", zero_division=np.nan)),
        weighted_f1=float(
            f1_score(y, pred, labels=labels, average="weighted", zero_division=np.nan)
        ),
        macro_roc_auc=_nanmean(np.array(aucs)),
        per_class={
            name: {
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
                "roc_auc": aucs[c],
            }
            for c, name in enumerate(classes)
        },
        confusion_matrix=confusion_matrix(y, pred, labels=labels).tolist(),
    )
    return result


def summarize_folds(
    fold_metrics: Sequence[Mapping[str, Any]], keys: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Mean and standard deviation of metrics across cross-validation folds and repeats.

    The SD is the sample SD (``ddof=1``): spread between folds, not a confidence interval.
    Undefined values (nan or None) are kept in ``values`` but left out of mean and SD.

    Args:
        fold_metrics: one metrics dict per fold (as from :func:`binary_metrics`).
        keys: metric names; a dotted name reaches into a sub-dict, e.g.
            ``"patient_level.roc_auc"``.

    Returns:
        ``{key: {"mean": float, "std": float, "values": [float, ...], "n": int}}`` where ``n``
        counts the defined values.
    """
    summary: dict[str, dict[str, Any]] = {}
    for key in keys:
        values = [_lookup(m, key) for m in fold_metrics]
        defined = np.array([v for v in values if math.isfinite(v)])
        summary[key] = {
            "mean": float(defined.mean()) if len(defined) else math.nan,
            "std": float(defined.std(ddof=1)) if len(defined) > 1 else math.nan,
            "values": values,
            "n": len(defined),
        }
    return summary


def to_jsonable(obj: Any) -> Any:
    """A copy of ``obj`` that strict JSON writers accept: nan/inf become None, numpy to Python.

    Args:
        obj: a metrics dict (or any nesting of dicts, lists, tuples, arrays and scalars).

    Returns:
        The same structure with dicts, lists, ``int``, ``float``, ``bool``, ``str`` and ``None``.
    """
    if isinstance(obj, Mapping):
        return {str(key): to_jsonable(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [to_jsonable(value) for value in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def _binary_core(
    y: np.ndarray,
    p: np.ndarray,
    threshold: float,
    inverse: np.ndarray | None,
    n_boot: int,
    seed: int,
    unit: str,
) -> dict[str, Any]:
    """Counts, point estimates and intervals for one level (photos or patients)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a probability in [0, 1], got {threshold}")
    pred = p >= threshold
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, pred, labels=[0, 1]).ravel())
    both = tp + fn > 0 and tn + fp > 0
    proportions = {
        "accuracy": (tp + tn, tp + tn + fp + fn),
        "sensitivity": (tp, tp + fn),
        "specificity": (tn, tn + fp),
        "ppv": (tp, tp + fp),
        "npv": (tn, tn + fn),
    }
    out: dict[str, Any] = {
        "n_positive": tp + fn,
        "n_negative": tn + fp,
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }
    for name, (k, n) in proportions.items():
        out[name] = k / n if n else math.nan
        out[f"{name}_ci"] = list(wilson_interval(k, n))
    point = {
        "f1": 2 * tp / (2 * tp + fp + fn) if both else math.nan,
        "balanced_accuracy": (out["sensitivity"] + out["specificity"]) / 2,
        "roc_auc": float(roc_auc_score(y, p)) if both else math.nan,
        "pr_auc": float(average_precision_score(y, p)) if both else math.nan,
    }
    intervals = _bootstrap(y, p, threshold, inverse, n_boot, CONFIDENCE, seed)
    for name in ("f1", "balanced_accuracy", "roc_auc", "pr_auc"):
        out[name] = point[name]
        out[f"{name}_ci"] = intervals[name]
    out["log_loss"] = float(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1]))
    out["bootstrap_unit"] = unit
    out["n_boot"] = int(n_boot)
    return out


def _bootstrap(
    y: np.ndarray,
    p: np.ndarray,
    threshold: float,
    inverse: np.ndarray | None,
    n_boot: int,
    confidence: float,
    seed: int,
) -> dict[str, list[float]]:
    """Percentile intervals from resampling the groups in ``inverse`` (or single photos)."""
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    if n_boot == 0:
        return {name: [math.nan, math.nan] for name in BOOTSTRAPPED}
    if inverse is None:
        inverse = np.arange(len(y))
    n_groups = int(inverse.max()) + 1
    # Draw every resample up front so that results depend on the seed only, not on chunking.
    draws = np.random.default_rng(seed).integers(0, n_groups, size=(n_boot, n_groups))
    chunk = max(1, _CHUNK_CELLS // max(len(y), n_groups))
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, n_boot, chunk):
        rows = draws[start : start + chunk]
        offsets = np.arange(len(rows))[:, None] * n_groups
        counts = np.bincount((rows + offsets).ravel(), minlength=len(rows) * n_groups)
        weights = counts.reshape(len(rows), n_groups)[:, inverse].astype(float)
        parts.append(weighted_binary_scores(y, p, weights, threshold))
    alpha = (1.0 - confidence) / 2
    intervals: dict[str, list[float]] = {}
    for name in BOOTSTRAPPED:
        values = np.concatenate([part[name] for part in parts])
        values = values[np.isfinite(values)]
        if len(values) < MIN_VALID_FRACTION * n_boot:
            intervals[name] = [math.nan, math.nan]
        else:
            low, high = np.quantile(values, [alpha, 1.0 - alpha])
            intervals[name] = [float(low), float(high)]
    return intervals


def weighted_binary_scores(
    y: np.ndarray, p: np.ndarray, weights: np.ndarray, threshold: float
) -> dict[str, np.ndarray]:
    """Balanced accuracy, F1, ROC AUC and average precision for many weightings at once.

    Row ``b`` of ``weights`` says how often each photo counts (a bootstrap resample). The
    results equal scikit-learn's with ``sample_weight`` but are vectorised over rows, which
    makes a 1000-resample bootstrap take milliseconds. Rows without both classes give nan.

    Args:
        y: 0/1 labels, shape ``(n,)``.
        p: positive-class probabilities, shape ``(n,)``.
        weights: non-negative weights, shape ``(b, n)``.
        threshold: decision threshold for balanced accuracy and F1.

    Returns:
        ``{"balanced_accuracy", "f1", "roc_auc", "pr_auc"}``, each an array of shape ``(b,)``.
    """
    pos = y == 1
    pred = p >= threshold
    tp = weights @ (pos & pred)
    fn = weights @ (pos & ~pred)
    fp = weights @ (~pos & pred)
    tn = weights @ (~pos & ~pred)
    n_pos, n_neg = tp + fn, tn + fp
    valid = (n_pos > 0) & (n_neg > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        balanced = (tp / n_pos + tn / n_neg) / 2
        f1 = 2 * tp / (2 * tp + fp + fn)
        # Tied scores form one group: sorting once serves every row.
        order = np.argsort(p, kind="stable")
        sorted_p = p[order]
        starts = np.flatnonzero(np.r_[True, sorted_p[1:] != sorted_p[:-1]])
        w_sorted = weights[:, order]
        pos_u = np.add.reduceat(w_sorted * pos[order], starts, axis=1)
        neg_u = np.add.reduceat(w_sorted * ~pos[order], starts, axis=1)
        # ROC AUC: chance a positive outranks a negative, ties counting one half.
        neg_below = np.cumsum(neg_u, axis=1) - neg_u
        auc = (pos_u * (neg_below + 0.5 * neg_u)).sum(axis=1) / (n_pos * n_neg)
        # Average precision: precision at each threshold (high to low) times recall gained.
        tp_cum = np.cumsum(pos_u[:, ::-1], axis=1)
        fp_cum = np.cumsum(neg_u[:, ::-1], axis=1)
        called = tp_cum + fp_cum
        precision = np.divide(tp_cum, called, out=np.zeros_like(tp_cum), where=called > 0)
        ap = (pos_u[:, ::-1] * precision).sum(axis=1) / n_pos
    scores = {"balanced_accuracy": balanced, "f1": f1, "roc_auc": auc, "pr_auc": ap}
    return {name: np.where(valid, value, np.nan) for name, value in scores.items()}


def _check_binary(y_true: ArrayLike, p: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate 0/1 labels and probabilities; returns int labels and float probabilities."""
    y = np.asarray(y_true)
    prob = np.asarray(p, dtype=float)
    if prob.ndim == 2 and prob.shape[1] == 1:
        prob = prob[:, 0]
    if y.ndim != 1 or prob.ndim != 1:
        raise ValueError(
            f"y_true and p must be 1-D (got shapes {y.shape} and {prob.shape}); for (n, 2) "
            "probabilities pass the positive-class column proba[:, 1]"
        )
    if len(y) != len(prob):
        raise ValueError(f"y_true has {len(y)} labels but p has {len(prob)} probabilities")
    if len(y) == 0:
        raise ValueError("no predictions to evaluate: y_true and p are empty")
    if not np.isin(y, [0, 1]).all():
        raise ValueError(
            f"y_true must hold 0/1 labels (1 = positive class), got values {np.unique(y)[:5]}"
        )
    if not np.isfinite(prob).all() or prob.min() < 0 or prob.max() > 1:
        raise ValueError("p must hold finite probabilities in [0, 1]; apply a sigmoid to logits")
    return y.astype(np.int64), prob


def _check_multiclass(
    y_true: ArrayLike, proba: ArrayLike, classes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Validate class indices and an ``(n, k)`` probability matrix."""
    y = np.asarray(y_true)
    prob = np.asarray(proba, dtype=float)
    k = len(classes)
    if y.ndim != 1 or prob.ndim != 2 or prob.shape != (len(y), k):
        raise ValueError(
            f"need y_true of shape (n,) and proba of shape (n, {k}) for {k} classes, "
            f"got {y.shape} and {prob.shape}"
        )
    if len(y) == 0:
        raise ValueError("no predictions to evaluate: y_true and proba are empty")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= k:
        raise ValueError(f"y_true must hold class indices 0..{k - 1} (positions in classes)")
    if not np.isfinite(prob).all():
        raise ValueError("proba must be finite; apply a softmax to logits")
    return y.astype(np.int64), prob


def _group_index(groups: ArrayLike, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique patient ids and, per photo, the index of its patient."""
    g = np.asarray(groups)
    if g.ndim != 1 or len(g) != n:
        raise ValueError(f"groups must hold one patient id per photo ({n}), got shape {g.shape}")
    ids, inverse = np.unique(g, return_inverse=True)
    return ids, inverse.ravel()


def _one_vs_rest_auc(is_class: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of one class against the rest; nan when either side is empty."""
    if is_class.all() or not is_class.any():
        return math.nan
    return float(roc_auc_score(is_class, scores))


def _nanmean(values: np.ndarray) -> float:
    """Mean of the finite values, nan when there are none (without a RuntimeWarning)."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else math.nan


def _lookup(metrics: Mapping[str, Any], key: str) -> float:
    """A dotted key's value as a float (nan for None); KeyError naming what exists."""
    value: Any = metrics
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            available = sorted(value) if isinstance(value, Mapping) else []
            raise KeyError(f"metric {key!r} not found; available at that level: {available}")
        value = value[part]
    return math.nan if value is None else float(value)
