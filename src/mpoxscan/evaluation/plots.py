"""PNG plots of training and evaluation: curves, confusion matrix, ROC, PR, reliability, samples.

Each function draws on its own :class:`matplotlib.figure.Figure` with the Agg canvas, so no
display is needed and pyplot's global state is never touched; each writes a PNG (creating the
parent folder) and returns its path. Figure sizes are fixed (inches below, times :data:`DPI`),
so the pixel size of every file is known in advance.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from numpy.typing import ArrayLike
from PIL import Image
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from mpoxscan.evaluation.calibration import expected_calibration_error, reliability_curve

DPI = 110
TRAINING_CURVES_SIZE = (10.0, 4.0)
CONFUSION_SIZE = (5.5, 4.5)
CURVE_SIZE = (6.0, 5.0)
RELIABILITY_SIZE = (6.0, 6.0)
#: Width, and height per row, of :func:`plot_per_source` (inches).
PER_SOURCE_WIDTH = 9.0
PER_SOURCE_ROW = 0.32
#: Inches per cell of :func:`plot_samples_grid`.
SAMPLE_CELL_SIZE = 3.0

Curves = list[tuple[np.ndarray, np.ndarray, str | None]]


def plot_training_curves(
    history: Sequence[Mapping[str, Any]],
    path: str | Path,
    best_epoch: int | None = None,
    title: str | None = None,
) -> Path:
    """Loss and accuracy by epoch (or by C for the logistic head), training against validation,
    with the kept epoch (or the chosen C) marked.

    Args:
        history: one dict per epoch with ``epoch``, ``train_loss``, ``train_accuracy``,
            ``val_loss`` and ``val_accuracy`` (missing or None values are left out); rows that
            all have ``C`` (the logistic head's grid) are drawn against C (see
            :func:`history_axis`).
        path: the PNG to write.
        best_epoch: the epoch (row) to mark; by default the one with the lowest validation
            loss.
        title: an optional title above both panels (e.g. the fold).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    if not history:
        raise ValueError("history is empty: train for at least one epoch before plotting")
    epochs = np.array([float(h["epoch"]) for h in history])
    column = {key: _column(history, key) for key in _HISTORY_KEYS}
    if best_epoch is None and np.isfinite(column["val_loss"]).any():
        best_epoch = int(epochs[np.nanargmin(column["val_loss"])])
    axis = history_axis(history)
    x = np.array([float(h[axis.key]) for h in history])
    best = None
    if best_epoch is not None:
        best = next((float(h[axis.key]) for h in history if h["epoch"] == best_epoch), None)
    fig = _figure(TRAINING_CURVES_SIZE)
    axes = fig.subplots(1, 2)
    for ax, name in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(x, column[f"train_{name}"], marker="o", ms=3, label="training")
        ax.plot(x, column[f"val_{name}"], marker="s", ms=3, label="validation")
        if best is not None:
            ax.axvline(best, color="grey", ls=":", label=f"{axis.best} ({best:g})")
        ax.set_title(f"{name.capitalize()} by {axis.short}")
        ax.set_xlabel(axis.label)
        if axis.log:
            ax.set_xscale("log")
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(name.capitalize())
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


@dataclass(frozen=True)
class HistoryAxis:
    """What a training history's rows step through: epochs, or a logistic head's C grid."""

    key: str
    label: str
    short: str
    best: str
    log: bool


#: The logistic-regression head's history has one row per C of its grid, not per epoch.
EPOCH_AXIS = HistoryAxis("epoch", "Epoch", "epoch", "best epoch", log=False)
C_AXIS = HistoryAxis(
    "C", "Regularisation strength C (inverse; log scale)", "C", "chosen C", log=True
)


def history_axis(history: Sequence[Mapping[str, Any]]) -> HistoryAxis:
    """:data:`C_AXIS` when every row has the logistic head's ``C``, else :data:`EPOCH_AXIS`."""
    if history and all(row.get("C") is not None for row in history):
        return C_AXIS
    return EPOCH_AXIS


def plot_confusion_matrix(
    matrix: ArrayLike, classes: Sequence[str], path: str | Path, title: str = "Confusion matrix"
) -> Path:
    """Counts of true against predicted classes, each cell also as a share of its true class.

    Args:
        matrix: square counts, rows = true class, columns = predicted class.
        classes: class names in matrix order.
        path: the PNG to write.
        title: the plot title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    counts = np.asarray(matrix, dtype=float)
    if counts.shape != (len(classes), len(classes)):
        raise ValueError(f"matrix must be {len(classes)}x{len(classes)}, got {counts.shape}")
    row_totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_totals, out=np.zeros_like(counts), where=row_totals > 0)
    fig = _figure(CONFUSION_SIZE)
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="Share of the true class")
    for (row, col), count in np.ndenumerate(counts):
        colour = "white" if shares[row, col] > 0.6 else "black"
        text = f"{int(count)}\n({shares[row, col]:.0%})"
        ax.text(col, row, text, ha="center", va="center", color=colour, fontsize="medium")
    ticks = range(len(classes))
    ax.set_xticks(ticks, labels=list(classes), rotation=30 if len(classes) > 2 else 0)
    ax.set_yticks(ticks, labels=list(classes))
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(title)
    return _save(fig, path)


def predicted_classes(proba: np.ndarray, threshold: float, binary: bool) -> np.ndarray:
    """The class each photo is called: positive at ``p >= threshold`` (binary), else argmax."""
    if binary:
        return (proba[:, 1] >= threshold).astype(int)
    return proba.argmax(axis=1)


def confusion_counts(labels: ArrayLike, predicted: ArrayLike, n_classes: int) -> np.ndarray:
    """``(n_classes, n_classes)`` counts, rows = true class, columns = predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(matrix, (np.asarray(labels).astype(int), np.asarray(predicted).astype(int)), 1)
    return matrix


def plot_test_results(
    out_dir: str | Path,
    labels: ArrayLike,
    proba: np.ndarray,
    classes: Sequence[str],
    threshold: float,
    binary: bool,
) -> list[Path]:
    """Write ``confusion_matrix.png`` (at ``threshold``) and, for binary models, ``roc.png``.

    Args:
        out_dir: the folder (created when needed).
        labels: true class indices.
        proba: ``(n, n_classes)`` probabilities.
        classes: class names in output order.
        threshold: the decision threshold (binary only).
        binary: one positive class against the rest.

    Returns:
        The files written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    matrix = confusion_counts(labels, predicted_classes(proba, threshold, binary), len(classes))
    paths = [plot_confusion_matrix(matrix, classes, out / "confusion_matrix.png")]
    if binary:
        paths.append(plot_roc(labels, proba[:, 1], out / "roc.png"))
    return paths


def plot_per_source(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Share called mpox (with its 95% interval) and share refused, per source and class.

    One pair of horizontal bars per row of ``per_source_figures``: the share called mpox at
    the screening threshold (red for mpox rows, where it is the sensitivity; blue otherwise)
    and, thinner and grey, the share refused. The figure is :data:`PER_SOURCE_WIDTH` inches
    wide and :data:`PER_SOURCE_ROW` inches tall per row (plus a margin).

    Args:
        rows: the per-source rows (``source``, ``class``, ``label``, ``called``,
            ``called_ci``, ``refused``).
        path: the PNG to write.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    if not rows:
        raise ValueError("no per-source rows to plot")
    n = len(rows)
    fig = _figure((PER_SOURCE_WIDTH, 1.4 + PER_SOURCE_ROW * n))
    ax = fig.subplots()
    y = np.arange(n)[::-1].astype(float)
    called = np.array([_finite_or_zero(r.get("called")) for r in rows])
    low = np.array([_finite_or_zero((r.get("called_ci") or [None, None])[0]) for r in rows])
    high = np.array([_finite_or_zero((r.get("called_ci") or [None, None])[1]) for r in rows])
    refused = np.array([_finite_or_zero(r.get("refused")) for r in rows])
    colours = ["#c0392b" if r.get("label") == "mpox" else "#2e6da4" for r in rows]
    errors = np.vstack([np.maximum(called - low, 0), np.maximum(high - called, 0)])
    ax.barh(y + 0.17, called, height=0.34, color=colours, xerr=errors, capsize=2)
    ax.barh(y - 0.17, refused, height=0.22, color="#9e9e9e")
    labels = [
        f"{r['source']} / {r['class']}" + (" (mpox)" if r.get("label") == "mpox" else "")
        for r in rows
    ]
    ax.set_yticks(y, labels=labels, fontsize="small")
    ax.set_xlim(0, 1)
    ax.set_xlabel("Share of photos (bars: called mpox with 95% CI; grey: refused)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Called mpox and refused, per source and class")
    return _save(fig, path)


def _finite_or_zero(value: Any) -> float:
    return float(value) if value is not None and math.isfinite(float(value)) else 0.0


def plot_roc(
    y: Any,
    p: Any,
    path: str | Path,
    label: str | Sequence[str] | None = None,
    *,
    highlight: Collection[str] = (),
    title: str = "ROC curve",
) -> Path:
    """ROC curve(s) with their AUC in the legend.

    Args:
        y: 0/1 labels, or a list of label arrays for several curves (e.g. one per fold).
        p: positive-class probabilities, shaped like ``y``.
        path: the PNG to write.
        label: a curve name, or one name per curve in the list form.
        highlight: names of curves to draw bold (e.g. ``{"pooled"}``).
        title: the plot title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`. Curves whose labels hold one class only have
        no ROC curve and are left out.
    """
    fig = _figure(CURVE_SIZE)
    ax = fig.subplots()
    for ys, ps, name in _as_curves(y, p, label):
        if len(np.unique(ys)) < 2:
            continue
        fpr, tpr, _ = roc_curve(ys, ps)
        auc = roc_auc_score(ys, ps)
        ax.plot(fpr, tpr, label=_legend(name, "AUC", auc), **_style(name, highlight))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("False positive rate (1 − specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="x-small")
    return _save(fig, path)


def plot_pr(
    y: Any,
    p: Any,
    path: str | Path,
    label: str | Sequence[str] | None = None,
    *,
    highlight: Collection[str] = (),
    title: str = "Precision-recall curve",
) -> Path:
    """Precision-recall curve(s) with average precision in the legend and the chance level.

    Args:
        y: 0/1 labels, or a list of label arrays for several curves.
        p: positive-class probabilities, shaped like ``y``.
        path: the PNG to write.
        label: a curve name, or one name per curve in the list form.
        highlight: names of curves to draw bold.
        title: the plot title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`. Curves without both classes are left out.
    """
    curves = _as_curves(y, p, label)
    fig = _figure(CURVE_SIZE)
    ax = fig.subplots()
    for ys, ps, name in curves:
        if len(np.unique(ys)) < 2:
            continue
        precision, recall, _ = precision_recall_curve(ys, ps)
        ap = average_precision_score(ys, ps)
        ax.step(
            recall,
            precision,
            where="post",
            label=_legend(name, "AP", ap),
            **_style(name, highlight),
        )
    prevalence = float(np.mean(np.concatenate([ys for ys, _, _ in curves])))
    ax.axhline(prevalence, ls="--", color="grey", lw=1, label=f"chance ({prevalence:.2f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("Recall (sensitivity)")
    ax.set_ylabel("Precision (PPV)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="x-small")
    return _save(fig, path)


def plot_reliability(
    y: ArrayLike, p: ArrayLike, path: str | Path, n_bins: int = 10, title: str | None = None
) -> Path:
    """Reliability diagram: observed frequency against predicted probability, with counts.

    Args:
        y: 0/1 labels (binary) or class indices (with ``(n, k)`` probabilities).
        p: positive-class probabilities ``(n,)`` or class probabilities ``(n, k)``.
        path: the PNG to write.
        n_bins: equal-width probability bins.
        title: the plot title; by default it states the expected calibration error.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    curve = reliability_curve(y, p, n_bins)
    ece = expected_calibration_error(y, p, n_bins)
    binary = np.asarray(p).ndim == 1
    centres = np.asarray(curve["bin_centres"])
    width = 1.0 / n_bins
    fig = _figure(RELIABILITY_SIZE)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.bar(
        centres,
        np.nan_to_num(curve["accuracy"]),
        width=width * 0.9,
        alpha=0.7,
        edgecolor="black",
        label="observed",
    )
    top.plot(curve["confidence"], curve["accuracy"], "o-", color="C1", label="per bin (mean)")
    top.plot([0, 1], [0, 1], ls="--", color="grey", label="perfect calibration")
    top.set_ylim(0, 1)
    top.set_ylabel("Observed fraction positive" if binary else "Observed accuracy")
    top.set_title(title or f"Reliability diagram (ECE {ece:.3f}, {n_bins} bins)")
    top.legend(loc="upper left", fontsize="small")
    top.grid(alpha=0.3)
    bottom.bar(centres, curve["counts"], width=width * 0.9, color="grey")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("Predicted probability of the positive class" if binary else "Confidence")
    bottom.set_ylabel("Photos")
    bottom.yaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, path)


def plot_samples_grid(
    items: Sequence[tuple[Image.Image, str]], path: str | Path, rows: int = 4, cols: int = 3
) -> Path:
    """A grid of sample photos, each titled with its class name.

    Args:
        items: ``(image, class name)`` pairs; the first ``rows * cols`` are shown.
        path: the PNG to write.
        rows: grid rows.
        cols: grid columns.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    if rows < 1 or cols < 1:
        raise ValueError(f"rows and cols must be at least 1, got {rows}x{cols}")
    fig = _figure((cols * SAMPLE_CELL_SIZE, rows * SAMPLE_CELL_SIZE))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, index in zip(axes, range(len(axes)), strict=True):
        ax.axis("off")
        if index < len(items):
            image, name = items[index]
            ax.imshow(np.asarray(image.convert("RGB")))
            ax.set_title(name)
    return _save(fig, path)


_HISTORY_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")


def _column(history: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    """One history key as floats, nan where missing."""
    values = [h.get(key) for h in history]
    return np.array([math.nan if v is None else float(v) for v in values])


def _figure(size: tuple[float, float]) -> Figure:
    """A new Agg-backed figure of ``size`` inches at :data:`DPI`."""
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG at :data:`DPI` and return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, format="png")
    return out


def _as_curves(y: Any, p: Any, label: str | Sequence[str] | None) -> Curves:
    """Normalise the single and the list form to ``[(y, p, name), ...]``."""
    if not _is_list_form(y):
        if label is not None and not isinstance(label, str):
            raise ValueError("for a single curve, label must be a string")
        return [(np.asarray(y), np.asarray(p, dtype=float), label)]
    if not _is_list_form(p) or len(p) != len(y):
        raise ValueError("in the list form, p must be a list of arrays, one per label array")
    if label is None:
        names: list[str | None] = [f"curve {i + 1}" for i in range(len(y))]
    elif isinstance(label, str) or len(label) != len(y):
        raise ValueError(f"in the list form, label must be a list of {len(y)} names")
    else:
        names = list(label)
    return [
        (np.asarray(ys), np.asarray(ps, dtype=float), name)
        for ys, ps, name in zip(y, p, names, strict=True)
    ]


def _is_list_form(values: Any) -> bool:
    """True for a list or tuple of arrays (several curves), False for one array."""
    return isinstance(values, (list, tuple)) and len(values) > 0 and np.ndim(values[0]) >= 1


def _legend(name: str | None, score_name: str, score: float) -> str:
    """A legend entry such as ``"fold 1 (AUC 0.912)"``."""
    return f"{name} ({score_name} {score:.3f})" if name else f"{score_name} {score:.3f}"


def _style(name: str | None, highlight: Collection[str]) -> dict[str, Any]:
    """Bold lines for highlighted curves, thin translucent ones for the rest."""
    if name in highlight:
        return {"lw": 2.8, "alpha": 1.0, "zorder": 3}
    return {"lw": 1.2, "alpha": 0.7 if highlight else 1.0}
