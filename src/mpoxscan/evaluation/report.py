"""A self-contained HTML report of a cross-validation run (`mpoxscan report`).

The page has no external resources: CSS is inline and every plot is a base64 PNG data URI, so
the single file can be mailed, archived or attached to a paper's supplement as it is. It is
rendered with jinja2 with autoescaping on, so names from the data cannot inject markup.
"""

from __future__ import annotations

import base64
import csv
import json
import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from mpoxscan._version import __version__
from mpoxscan.evaluation import plots
from mpoxscan.evaluation.metrics import binary_metrics
from mpoxscan.evaluation.per_source import COLUMNS as PER_SOURCE_COLUMNS
from mpoxscan.evaluation.per_source import per_source_cells
from mpoxscan.evaluation.tables import (
    METRIC_LABELS,
    format_ci,
    format_number,
    metric_rows,
    sample_caption,
)

#: Titles of per-fold training-curve figures start with this; they get their own section.
TRAINING_TITLE = "Training curves"
OOF_COLUMNS = ("patient", "class", "label", "fold", "repeat", "probability")
#: Metric columns of the per-fold table, in order, when the folds have them.
FOLD_COLUMNS = (
    "sensitivity",
    "specificity",
    "balanced_accuracy",
    "f1",
    "roc_auc",
    "pr_auc",
    "accuracy",
    "ppv",
    "npv",
)


@dataclass(frozen=True)
class OutOfFold:
    """The out-of-fold predictions of ``oof.csv`` as arrays (one entry per photo and repeat)."""

    patient: np.ndarray
    class_name: np.ndarray
    y: np.ndarray
    fold: np.ndarray
    repeat: np.ndarray
    probability: np.ndarray


@dataclass(frozen=True)
class EmbeddedFigure:
    """An embedded plot: its heading, caption and ``data:`` URI."""

    title: str
    caption: str
    uri: str


def write_report(cv_dir: str | Path, out_path: str | Path) -> Path:
    """Write one self-contained HTML page that reports a cross-validation run.

    Args:
        cv_dir: the folder ``mpoxscan cv`` wrote, with ``summary.json`` and ``oof.csv``.
        out_path: the HTML file to write (its folder is created).

    Returns:
        ``out_path`` as a :class:`~pathlib.Path`.
    """
    cv_dir = Path(cv_dir)
    summary = _read_summary(cv_dir / "summary.json")
    oof = read_oof(cv_dir / "oof.csv", summary.get("positive_class"))
    pooled = summary.get("pooled") or _pooled_from_oof(oof)
    with tempfile.TemporaryDirectory(prefix="mpoxscan-report-") as tmp:
        figures = _figures(summary, pooled, oof, Path(tmp))
    html = render_report(summary, pooled, figures)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html, encoding="utf-8")
    return out


def read_oof(path: Path, positive_class: str | None = None) -> OutOfFold:
    """Read ``oof.csv`` (columns file, patient, class, label, fold, repeat, probability).

    Args:
        path: the CSV file.
        positive_class: the positive class name; a row is positive when its class is this
            one. Without it, or when the file has a ``source`` column (several sources, whose
            mpox folders may be named differently), the ``label`` column (1 = positive) is used.

    Returns:
        An :class:`OutOfFold` with one entry per row.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `mpoxscan cv` to write it")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    missing = [c for c in OOF_COLUMNS if rows and c not in rows[0]]
    if not rows or missing:
        raise ValueError(f"{path} has no rows or lacks columns {missing}; rerun `mpoxscan cv`")
    classes = np.array([row["class"] for row in rows])
    if positive_class is None or "source" in rows[0]:  # several sources: mpox folders vary
        y = np.array([int(row["label"]) for row in rows])
    else:
        y = (classes == positive_class).astype(int)
    return OutOfFold(
        patient=np.array([row["patient"] for row in rows]),
        class_name=classes,
        y=y,
        fold=np.array([int(row["fold"]) for row in rows]),
        repeat=np.array([int(row["repeat"]) for row in rows]),
        probability=np.array([float(row["probability"]) for row in rows]),
    )


def render_report(
    summary: Mapping[str, Any], pooled: Mapping[str, Any], figures: list[EmbeddedFigure]
) -> str:
    """The report's HTML from a cross-validation summary, pooled metrics and embedded plots.

    Args:
        summary: the contents of ``summary.json``.
        pooled: pooled out-of-fold metrics (a ``binary_metrics`` dict).
        figures: plots to embed, in order; those titled "Training curves..." get their own
            section.

    Returns:
        The HTML page as a string.
    """
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = env.from_string(_TEMPLATE)
    fold_header, fold_rows = _fold_table(summary.get("folds", []))
    training = [f for f in figures if f.title.startswith(TRAINING_TITLE)]
    return template.render(
        title="mpoxscan cross-validation report",
        recipe=recipe_line(summary),
        created=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        writer_version=__version__,
        limits=_limits(summary, pooled),
        data_caption=_data_caption(summary),
        data_rows=_data_rows(summary.get("data", {})),
        pooled_caption=sample_caption(pooled),
        pooled_rows=_pooled_rows(pooled),
        source_header=list(PER_SOURCE_COLUMNS),
        source_rows=per_source_cells(summary.get("per_source") or []),
        leave_source_out=bool(summary.get("config", {}).get("leave_source_out")),
        mean_std_rows=_mean_std_rows(summary.get("mean_std", {})),
        screening_rows=_mean_std_rows(summary.get("screening_mean_std", {})),
        target=_target_sensitivity(summary),
        fold_threshold=_fold_threshold(summary.get("folds", [])),
        fold_header=fold_header,
        fold_rows=fold_rows,
        figures=[f for f in figures if f not in training],
        training_figures=training,
        command=summary.get("command") or "(not recorded)",
        versions=sorted((str(k), str(v)) for k, v in summary.get("versions", {}).items()),
        config=json.dumps(summary.get("config", {}), indent=2, sort_keys=True),
    )


def recipe_line(summary: Mapping[str, Any]) -> str:
    """What was cross-validated, in one line: model, recipe (and head), folds, repeats, seed."""
    config = summary.get("config") or {}
    train = config.get("train") or {}
    model = (config.get("model") or {}).get("name") or "unknown model"
    recipe = train.get("recipe") or "the model's default recipe"
    if recipe == "frozen-features":
        head = (train.get("features") or {}).get("head")
        names = {"logreg": "logistic-regression head, C chosen on validation"}
        recipe += f" ({names.get(head, f'{head} head')})" if head else ""
    folds, repeats = config.get("folds"), config.get("repeats")
    parts = [f"Model {model}", f"recipe {recipe}"]
    if folds:
        parts.append(f"{folds} folds x {repeats or 1} repeat{'s' if (repeats or 1) > 1 else ''}")
    if train.get("seed") is not None:
        parts.append(f"seed {train['seed']}")
    return ", ".join(parts) + "."


def _read_summary(path: Path) -> dict[str, Any]:
    """Load ``summary.json``, saying what to run when it is missing or broken."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `mpoxscan cv` to write it")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); rerun `mpoxscan cv`") from error
    if not isinstance(summary, dict):
        raise ValueError(f"{path} must hold a JSON object; rerun `mpoxscan cv`")
    return summary


def _pooled_from_oof(oof: OutOfFold) -> dict[str, Any]:
    """Pooled metrics of the first repeat when the summary lacks them."""
    first = oof.repeat == oof.repeat.min()
    return binary_metrics(oof.y[first], oof.probability[first], groups=oof.patient[first])


def _figures(
    summary: Mapping[str, Any], pooled: Mapping[str, Any], oof: OutOfFold, tmp: Path
) -> list[EmbeddedFigure]:
    """Draw every plot into ``tmp`` and return them as embeddable figures."""
    first_repeat = int(oof.repeat.min())
    several = len(np.unique(oof.repeat)) > 1
    pooled_name = f"pooled (repeat {first_repeat})" if several else "pooled"
    ys, ps, names = [], [], []
    for repeat, fold in sorted(set(zip(oof.repeat.tolist(), oof.fold.tolist(), strict=True))):
        rows = (oof.repeat == repeat) & (oof.fold == fold)
        ys.append(oof.y[rows])
        ps.append(oof.probability[rows])
        names.append(f"repeat {repeat} fold {fold}" if several else f"fold {fold}")
    first = oof.repeat == first_repeat
    ys.append(oof.y[first])
    ps.append(oof.probability[first])
    names.append(pooled_name)
    n_first = int(first.sum())
    curve_note = (
        f"Thin lines: one per test fold; bold: all out-of-fold photos of repeat {first_repeat} "
        f"({n_first} photos) pooled."
    )
    highlight = {pooled_name}
    figures = [
        _embed(
            "ROC curves",
            curve_note,
            plots.plot_roc(ys, ps, tmp / "roc.png", label=names, highlight=highlight),
        ),
        _embed(
            "Precision-recall curves",
            curve_note + " The dashed line is the share of positive photos.",
            plots.plot_pr(ys, ps, tmp / "pr.png", label=names, highlight=highlight),
        ),
    ]
    if summary.get("per_source"):
        figures.append(
            _embed(
                "Called mpox and refused, per source",
                "Each source and class: the share of photos called mpox at their fold's "
                "screening threshold (95% Wilson interval; for mpox rows the sensitivity) "
                "and, in grey, the share refused as out of domain.",
                plots.plot_per_source(summary["per_source"], tmp / "per_source.png"),
            )
        )
    matrix, classes = _confusion(summary, pooled)
    if matrix is not None:
        figures.append(
            _embed(
                "Confusion matrix",
                f"Pooled out-of-fold photos at threshold {format_number(pooled.get('threshold'))}.",
                plots.plot_confusion_matrix(matrix, classes, tmp / "confusion.png"),
            )
        )
    figures.append(
        _embed(
            "Reliability diagram",
            "Observed share of positive photos against the predicted probability, pooled "
            f"out-of-fold photos of repeat {first_repeat}; bars near the diagonal mean the "
            "probabilities can be read as risks.",
            plots.plot_reliability(oof.y[first], oof.probability[first], tmp / "reliability.png"),
        )
    )
    for index, entry in enumerate(summary.get("folds", [])):
        if entry.get("history"):
            name = f"fold {entry.get('fold', index)}, repeat {entry.get('repeat', 0)}"
            path = plots.plot_training_curves(
                entry["history"],
                tmp / f"curves-{index}.png",
                best_epoch=entry.get("best_epoch"),
                title=f"Training curves, {name}",
            )
            caption = (
                "Loss and accuracy by regularisation strength C of the logistic head (one "
                "fit per C); the dotted line marks the C chosen on validation."
                if plots.history_axis(entry["history"]) is plots.C_AXIS
                else "Loss and accuracy by epoch; the dotted line marks the epoch kept."
            )
            figures.append(_embed(f"{TRAINING_TITLE}, {name}", caption, path))
    return figures


def _embed(title: str, caption: str, path: Path) -> EmbeddedFigure:
    """A figure whose PNG is inlined as a base64 data URI."""
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return EmbeddedFigure(title=title, caption=caption, uri=f"data:image/png;base64,{encoded}")


def _confusion(
    summary: Mapping[str, Any], pooled: Mapping[str, Any]
) -> tuple[list[list[int]] | None, list[str]]:
    """The pooled confusion matrix and its class names (negative first for binary)."""
    classes = [str(c) for c in summary.get("classes", [])]
    if "confusion_matrix" in pooled:
        return pooled["confusion_matrix"], [str(c) for c in pooled.get("classes", classes)]
    if all(key in pooled for key in ("tp", "fp", "tn", "fn")):
        if len(classes) != 2:
            classes = ["negative", str(summary.get("positive_class") or "positive")]
        matrix = [[pooled["tn"], pooled["fp"]], [pooled["fn"], pooled["tp"]]]
        return matrix, classes
    return None, classes


def _data_caption(summary: Mapping[str, Any]) -> str:
    """One sentence on the data set and the folds."""
    data = summary.get("data", {})
    config = summary.get("config", {})
    text = (
        f"{data.get('n_images', '?')} photos of {data.get('n_patients', '?')} patients; "
        f"positive class: {summary.get('positive_class') or 'n/a'}; "
        f"model classes: {', '.join(map(str, summary.get('classes', []))) or 'n/a'}."
    )
    if "folds" in config:
        text += f" {config['folds']} patient-grouped folds x {config.get('repeats', 1)} repeats."
    return text


def _data_rows(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Per-class counts as (class, description) pairs; dict values are listed key=value."""
    rows = []
    for name, value in data.get("per_class", {}).items():
        if isinstance(value, Mapping):
            text = ", ".join(f"{key}: {val}" for key, val in value.items())
        else:
            text = f"{value} photos"
        rows.append((str(name), text))
    return rows


def _pooled_rows(pooled: Mapping[str, Any]) -> list[dict[str, str]]:
    """Image-level and patient-level values side by side, one dict per metric."""
    patients = {row.key: row for row in metric_rows(pooled.get("patient_level") or {})}
    rows = []
    for row in metric_rows(pooled):
        other = patients.get(row.key)
        rows.append(
            {
                "label": row.label,
                "value": row.value,
                "ci": row.ci,
                "n": row.n,
                "p_value": other.value if other else "",
                "p_ci": other.ci if other else "",
                "p_n": other.n if other else "",
            }
        )
    return rows


def _mean_std_rows(mean_std: Mapping[str, Mapping[str, Any]]) -> list[dict[str, str]]:
    """Mean ± SD rows with the range and number of folds behind them."""
    rows = []
    for key, stats in mean_std.items():
        values = [float(v) for v in stats.get("values", []) if v is not None]
        finite = [v for v in values if math.isfinite(v)]
        rows.append(
            {
                "label": _label(key),
                "mean_sd": _mean_sd(stats),
                "range": format_ci([min(finite), max(finite)]) if finite else "n/a",
                "n": str(len(finite)),
            }
        )
    return rows


def _mean_sd(stats: Mapping[str, Any]) -> str:
    """The "mean ± SD" text of a ``summarize_folds`` entry."""
    return f"{format_number(stats.get('mean'))} ± {format_number(stats.get('std'))}"


def _best_of(entry: Mapping[str, Any], by_c: bool) -> str:
    """The kept epoch of a fold, or (logistic head) the C of that grid position."""
    best = entry.get("best_epoch")
    if not by_c or best is None:
        return "" if best is None else str(best)
    chosen = [row.get("C") for row in entry.get("history") or [] if row.get("epoch") == best]
    return f"{chosen[0]:g}" if chosen and chosen[0] is not None else str(best)


def _fold_table(folds: list[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-fold table."""
    present = [k for k in FOLD_COLUMNS if any(k in f.get("metrics", {}) for f in folds)]
    by_c = any(plots.history_axis(f.get("history") or []) is plots.C_AXIS for f in folds)
    best = "Chosen C" if by_c else "Best epoch"
    header = ["Repeat", "Fold", "Photos", "Patients", best, "T", "Threshold"]
    header += [_label(k).split(" (")[0] for k in present]
    rows = []
    for index, entry in enumerate(folds):
        metrics = entry.get("metrics", {})
        cells = [
            str(entry.get("repeat", 0)),
            str(entry.get("fold", index)),
            str(metrics.get("n_images", entry.get("n_test_images", ""))),
            str(metrics.get("n_patients", entry.get("n_test_patients", ""))),
            _best_of(entry, by_c),
            format_number(entry["temperature"], 2) if "temperature" in entry else "",
            format_number(entry["threshold"]) if "threshold" in entry else "",
        ]
        cells += [format_number(metrics.get(k)) for k in present]
        rows.append(cells)
    return header, rows


def _fold_threshold(folds: list[Mapping[str, Any]]) -> str:
    """The threshold behind the per-fold metrics, as text for a caption."""
    thresholds = {f.get("metrics", {}).get("threshold") for f in folds}
    if len(thresholds) == 1 and None not in thresholds:
        return f"threshold {format_number(thresholds.pop())}"
    return "each fold's threshold"


def _label(key: str) -> str:
    """The display name of a metric key."""
    return METRIC_LABELS.get(key, key.replace("_", " "))


def _target_sensitivity(summary: Mapping[str, Any]) -> str:
    """The screening target sensitivity from the training config, formatted, or ""."""
    target = summary.get("config", {}).get("train", {}).get("target_sensitivity")
    return "" if target is None else format_number(target, 2)


def _limits(summary: Mapping[str, Any], pooled: Mapping[str, Any]) -> list[str]:
    """The "how to read this" paragraphs, with this run's numbers."""
    data = summary.get("data", {})
    config = summary.get("config", {})
    n_images = pooled.get("n_images") or 0
    prevalence = pooled.get("n_positive", 0) / n_images if n_images else math.nan
    target = _target_sensitivity(summary)
    screening = (
        f" The screening rows use a threshold chosen on each fold's validation patients to "
        f"reach sensitivity {target} there; it is never tuned on test patients."
        if target
        else ""
    )
    return [
        "Every probability here is out-of-fold: each photo was scored by a model that was "
        "trained without any photo of the same patient "
        f"({data.get('n_patients', '?')} patients, {config.get('folds', '?')} folds, "
        f"{config.get('repeats', 1)} repeat(s)). Pooled figures use the first repeat, so each "
        "photo counts once.",
        "Intervals are 95%: Wilson score intervals for proportions (accuracy, sensitivity, "
        "specificity, PPV, NPV) and percentile bootstrap intervals that resample whole "
        "patients for balanced accuracy, F1 and the AUCs. Patient-level figures count a "
        "patient as positive when any of their photos is, scored by their highest-probability "
        "photo. Mean ± SD across folds shows how much the figures move between splits; it is "
        "not a confidence interval.",
        f"Pooled metrics and the confusion matrix use threshold "
        f"{format_number(pooled.get('threshold'))}.{screening}",
        f"Limits: {format_number(prevalence * 100, 0)}% of these photos are positive, a share "
        "set by how the data set was collected, not by any clinic, so PPV and NPV do not carry "
        "over to practice. Photos gathered from the same sources share cameras, lighting and "
        "skin tones, which can flatter every figure here; only a test on data from elsewhere "
        "shows how the model travels. This is a research tool, not a diagnostic device: a "
        "negative result does not rule out mpox.",
    ]


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f;
       margin: 0; background: #fafafa; }
main { max-width: 1100px; margin: 0 auto; padding: 1.5rem; background: #fff; }
h1 { font-size: 1.7rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.3rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; margin-top: 2rem; }
.meta, figcaption, caption { color: #555; font-size: 0.9rem; }
.scroll { overflow-x: auto; max-width: 100%; }
.recipe { font-size: 1.05rem; margin: 0.2rem 0; }
table { border-collapse: collapse; margin: 0.6rem 0; font-variant-numeric: tabular-nums; }
caption { text-align: left; caption-side: bottom; padding-top: 0.3rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f0f0f3; }
figure { margin: 1.2rem 0; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
pre { background: #f5f5f7; padding: 0.7rem; overflow-x: auto; font-size: 0.85rem; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 1rem; }
</style>
</head>
<body>
<main>
<h1>{{ title }}</h1>
<p class="recipe"><strong>{{ recipe }}</strong></p>
<p class="meta">Written {{ created }} by mpoxscan {{ writer_version }}.</p>

<section id="how-to-read">
<h2>How to read this, and its limits</h2>
{% for paragraph in limits %}<p>{{ paragraph }}</p>
{% endfor %}
</section>

<section id="data">
<h2>Data</h2>
<p>{{ data_caption }}</p>
{% if data_rows %}
<table>
<thead><tr><th>Class</th><th>Count</th></tr></thead>
<tbody>
{% for name, text in data_rows %}<tr><td>{{ name }}</td><td>{{ text }}</td></tr>
{% endfor %}</tbody>
</table>
{% endif %}
</section>

<section id="pooled">
<h2>Pooled out-of-fold metrics</h2>
<div class="scroll">
<table>
<caption>{{ pooled_caption }}. n: numerator/denominator of each proportion.</caption>
<thead><tr><th>Metric</th><th>Photos</th><th>95% CI</th><th>n</th>
<th>Patients</th><th>95% CI</th><th>n</th></tr></thead>
<tbody>
{% for row in pooled_rows %}<tr><td>{{ row.label }}</td><td>{{ row.value }}</td>
<td>{{ row.ci }}</td><td>{{ row.n }}</td><td>{{ row.p_value }}</td><td>{{ row.p_ci }}</td>
<td>{{ row.p_n }}</td></tr>
{% endfor %}</tbody>
</table>
</div>
</section>

{% if source_rows %}
<section id="sources">
<h2>Per source and class</h2>
<div class="scroll">
<table>
<caption>Out-of-fold photos of the first repeat, each at its fold's screening threshold.
{%- if leave_source_out %} Leave-one-source-out: every source without mpox photos was scored
by a model that never saw any photo of it; the mpox source was split by patient.{% endif %}
Called mpox: assessed and at or above the threshold; refused: out of domain ("retake");
sensitivity: mpox photos called mpox (a refused one is a miss). 95% Wilson intervals over
photos.</caption>
<thead><tr>{% for cell in source_header %}<th>{{ cell }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in source_rows %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</tbody>
</table>
</div>
</section>
{% endif %}

<section id="folds">
<h2>Across folds</h2>
{% if mean_std_rows %}
<div class="scroll">
<table>
<caption>Mean ± SD (ddof=1) over folds and repeats at {{ fold_threshold }}; range: lowest and
highest fold.</caption>
<thead><tr><th>Metric</th><th>Mean ± SD</th><th>Range</th><th>Folds</th></tr></thead>
<tbody>
{% for row in mean_std_rows %}<tr><td>{{ row.label }}</td><td>{{ row.mean_sd }}</td>
<td>{{ row.range }}</td><td>{{ row.n }}</td></tr>
{% endfor %}</tbody>
</table>
</div>
{% endif %}
{% if screening_rows %}
<h3>At the screening threshold</h3>
<div class="scroll">
<table>
<caption>Mean ± SD over folds at each fold's threshold chosen on its validation patients
{%- if target %} for a target sensitivity of {{ target }}{% endif %}.</caption>
<thead><tr><th>Metric</th><th>Mean ± SD</th><th>Range</th><th>Folds</th></tr></thead>
<tbody>
{% for row in screening_rows %}<tr><td>{{ row.label }}</td><td>{{ row.mean_sd }}</td>
<td>{{ row.range }}</td><td>{{ row.n }}</td></tr>
{% endfor %}</tbody>
</table>
</div>
{% endif %}
<h3>Per fold</h3>
<div class="scroll">
<table>
<caption>Test part of each fold at {{ fold_threshold }}; T: fitted temperature; Threshold:
the screening threshold chosen on the fold's validation patients.</caption>
<thead><tr>{% for cell in fold_header %}<th>{{ cell }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in fold_rows %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</tbody>
</table>
</div>
</section>

<section id="plots">
<h2>Curves</h2>
<div class="grid">
{% for figure in figures %}<figure>
<img src="{{ figure.uri }}" alt="{{ figure.title }}">
<figcaption><strong>{{ figure.title }}.</strong> {{ figure.caption }}</figcaption>
</figure>
{% endfor %}</div>
</section>

{% if training_figures %}
<section id="training">
<h2>Training curves per fold</h2>
{% for figure in training_figures %}<figure>
<img src="{{ figure.uri }}" alt="{{ figure.title }}">
<figcaption><strong>{{ figure.title }}.</strong> {{ figure.caption }}</figcaption>
</figure>
{% endfor %}
</section>
{% endif %}

<section id="reproduce">
<h2>Command and versions</h2>
<p>Run with:</p>
<pre><code>{{ command }}</code></pre>
<table>
<thead><tr><th>Package</th><th>Version</th></tr></thead>
<tbody>
{% for name, version in versions %}<tr><td>{{ name }}</td><td>{{ version }}</td></tr>
{% endfor %}</tbody>
</table>
<details>
<summary>Full configuration</summary>
<pre>{{ config }}</pre>
</details>
</section>
</main>
</body>
</html>
"""
