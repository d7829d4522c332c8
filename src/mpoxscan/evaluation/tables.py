"""Terminal tables of metrics with their confidence intervals and sample sizes (rich)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from mpoxscan.evaluation.per_source import COLUMNS, per_source_cells

#: Display names, in display order, of the metrics a table shows when present.
METRIC_LABELS: dict[str, str] = {
    "accuracy": "Accuracy",
    "sensitivity": "Sensitivity (recall)",
    "specificity": "Specificity",
    "ppv": "PPV (precision)",
    "npv": "NPV",
    "balanced_accuracy": "Balanced accuracy",
    "f1": "F1",
    "macro_f1": "Macro F1",
    "weighted_f1": "Weighted F1",
    "roc_auc": "ROC AUC",
    "macro_roc_auc": "Macro ROC AUC (one-vs-rest)",
    "pr_auc": "PR AUC (average precision)",
    "log_loss": "Log loss",
}

# Numerator and denominator of each proportion, from the confusion counts.
_FRACTIONS = {
    "accuracy": (("tp", "tn"), ("tp", "tn", "fp", "fn")),
    "sensitivity": (("tp",), ("tp", "fn")),
    "specificity": (("tn",), ("tn", "fp")),
    "ppv": (("tp",), ("tp", "fp")),
    "npv": (("tn",), ("tn", "fn")),
}


@dataclass(frozen=True)
class MetricRow:
    """One metric ready for display: ``value`` and ``ci`` formatted, ``n`` as "k/n" or a count."""

    key: str
    label: str
    value: str
    ci: str
    n: str


def format_number(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals; ``"n/a"`` for None or nan (an undefined metric)."""
    if value is None:
        return "n/a"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    number = float(value)
    return "n/a" if not math.isfinite(number) else f"{number:.{digits}f}"


def format_ci(ci: Sequence[Any] | None, digits: int = 3) -> str:
    """A ``[low, high]`` interval as ``"low–high"``; ``"n/a"`` when missing or undefined."""
    if not ci or any(v is None or not math.isfinite(float(v)) for v in ci):
        return "n/a"
    low, high = ci
    return f"{float(low):.{digits}f}–{float(high):.{digits}f}"


def metric_rows(metrics: Mapping[str, Any]) -> list[MetricRow]:
    """The displayable rows of a binary or multi-class metrics dict, in a fixed order.

    Args:
        metrics: a dict from ``binary_metrics`` or ``multiclass_metrics`` (or its
            ``patient_level`` sub-dict).

    Returns:
        One :class:`MetricRow` per metric present, with its interval and sample size.
    """
    total = metrics.get("n_images", metrics.get("n_patients"))
    rows = []
    for key, label in METRIC_LABELS.items():
        if key not in metrics:
            continue
        rows.append(
            MetricRow(
                key=key,
                label=label,
                value=format_number(metrics[key]),
                ci=format_ci(metrics.get(f"{key}_ci")) if f"{key}_ci" in metrics else "",
                n=_sample_size(metrics, key, total),
            )
        )
    return rows


def sample_caption(metrics: Mapping[str, Any]) -> str:
    """A one-line account of the sample behind ``metrics`` (images, patients, threshold)."""
    parts = []
    if "n_images" in metrics:
        parts.append(f"{metrics['n_images']} images")
    if "n_patients" in metrics:
        parts.append(f"{metrics['n_patients']} patients")
    text = " from ".join(parts) if parts else "unknown sample size"
    if "n_positive" in metrics:
        text += f" ({metrics['n_positive']} positive, {metrics['n_negative']} negative)"
    if "threshold" in metrics:
        text += f"; threshold {format_number(metrics['threshold'])}"
    return text


def metrics_table(metrics: Mapping[str, Any], title: str) -> Table:
    """A terminal table of each metric with its 95% CI and n, at image and patient level.

    Args:
        metrics: a dict from ``binary_metrics`` (patient-level columns are added when it has a
            ``patient_level`` sub-dict) or ``multiclass_metrics``.
        title: the table title.

    Returns:
        A :class:`rich.table.Table`; print it with ``rich.console.Console().print(table)``.
    """
    patients = metrics.get("patient_level")
    caption = sample_caption(metrics) + (
        "; 95% CIs: Wilson for proportions, bootstrap over "
        f"{metrics.get('bootstrap_unit', 'image')}s for the rest"
    )
    table = Table(title=title, caption=caption)
    table.add_column("Metric", style="bold")
    table.add_column("Images", justify="right")
    table.add_column("95% CI", justify="right")
    table.add_column("n", justify="right")
    patient_rows: dict[str, MetricRow] = {}
    if isinstance(patients, Mapping):
        patient_rows = {row.key: row for row in metric_rows(patients)}
        table.add_column("Patients", justify="right")
        table.add_column("95% CI", justify="right")
        table.add_column("n", justify="right")
    for row in metric_rows(metrics):
        cells = [row.label, row.value, row.ci, row.n]
        if isinstance(patients, Mapping):
            other = patient_rows.get(row.key)
            cells += [other.value, other.ci, other.n] if other else ["", "", ""]
        table.add_row(*cells)
    return table


def folds_table(
    fold_metrics: Sequence[Mapping[str, Any]],
    summary: Mapping[str, Mapping[str, Any]],
    *,
    with_mean: bool = True,
) -> Table:
    """Per-fold metrics with a closing mean ± SD row.

    Args:
        fold_metrics: per fold either ``{"fold", "repeat", "metrics": {...}}`` (as in a
            cross-validation ``summary.json``) or a plain metrics dict.
        summary: the output of ``summarize_folds``; its keys are the columns.
        with_mean: end with the ``mean ± SD`` row (leave it out when
            :func:`cv_summary_table` follows).

    Returns:
        A :class:`rich.table.Table` with one row per fold and a ``mean ± SD`` row.
    """
    keys = list(summary)
    table = Table(title="Cross-validation folds", caption="SD: spread between folds (ddof=1)")
    for column in ("Repeat", "Fold", "Images", "Patients"):
        table.add_column(column, justify="right")
    for key in keys:
        table.add_column(_column_label(key), justify="right")
    for index, entry in enumerate(fold_metrics):
        metrics = entry.get("metrics", entry)
        cells = [
            str(entry.get("repeat", 0)),
            str(entry.get("fold", index)),
            str(metrics.get("n_images", "")),
            str(metrics.get("n_patients", "")),
        ]
        cells += [format_number(_dotted(metrics, key)) for key in keys]
        table.add_row(*cells, end_section=with_mean and index == len(fold_metrics) - 1)
    if with_mean:
        cells = ["mean ± SD", "", "", ""]
        cells += [_mean_sd(summary[k]) for k in keys]
        table.add_row(*cells, style="bold")
    return table


def cv_summary_table(
    summary: Mapping[str, Mapping[str, Any]], pooled: Mapping[str, Any], n_folds: int
) -> Table:
    """One row per measure: mean ± SD over the folds, and the pooled out-of-fold figure with
    its 95% interval (narrow enough for an 80-column terminal).

    Args:
        summary: the output of ``summarize_folds`` (``mean_std`` of a CV summary).
        pooled: the pooled out-of-fold metrics (``pooled`` of a CV summary).
        n_folds: how many folds (times repeats) the means are over.

    Returns:
        A :class:`rich.table.Table`.
    """
    table = Table(
        title="Cross-validation summary",
        caption=f"{pooled.get('n_images', '?')} photos of {pooled.get('n_patients', '?')} "
        "patients; pooled: every photo scored once, by the fold that did not train on it",
    )
    table.add_column("Measure")
    table.add_column(f"mean ± SD ({n_folds} folds)", justify="right")
    table.add_column("pooled (95% CI)", justify="right")
    for key, stats in summary.items():
        value = _dotted(pooled, key)
        interval = format_ci(_dotted(pooled, f"{key}_ci"))
        table.add_row(_column_label(key), _mean_sd(stats), f"{format_number(value)} ({interval})")
    return table


def _mean_sd(stats: Mapping[str, Any]) -> str:
    return f"{format_number(stats['mean'])} ± {format_number(stats['std'])}"


def _column_label(key: str) -> str:
    """A short column heading for a possibly dotted metric key."""
    *prefix, name = key.split(".")
    label = METRIC_LABELS.get(name, name).split(" (")[0]
    return f"{label} (patients)" if prefix == ["patient_level"] else label


def _dotted(metrics: Mapping[str, Any], key: str) -> Any:
    """Value of a dotted key, or None when absent."""
    value: Any = metrics
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _sample_size(metrics: Mapping[str, Any], key: str, total: Any) -> str:
    """ "k/n" for a proportion when the confusion counts are known, else the sample size."""
    if key in _FRACTIONS and all(c in metrics for c in ("tp", "fp", "tn", "fn")):
        numerator, denominator = _FRACTIONS[key]
        k = sum(int(metrics[c]) for c in numerator)
        n = sum(int(metrics[c]) for c in denominator)
        return f"{k}/{n}"
    if key == "accuracy" and "n_correct" in metrics:
        return f"{metrics['n_correct']}/{total}"
    return "" if total is None else str(total)


#: Findings listed one by one in the audit table; the rest are counted ("and N more").
AUDIT_LISTED = 8


def audit_table(report: Mapping[str, Any]) -> Table:
    """A dataset audit (``AuditReport.to_dict()``) as a table a person can read at once.

    Counts per class, then each kind of finding with its count and the first few cases; the
    caption gives the verdict. Photos per patient stay in the JSON report (``--json``).

    Args:
        report: the audit as a dict.

    Returns:
        A :class:`rich.table.Table`.
    """
    verdict = "LEAK: photos or patients straddle the splits" if report["has_leaks"] else "no leak"
    table = Table(
        title=f"Audit of {report['root']} ({report['layout']}, {report['n_images']} photos)",
        caption=f"Verdict: {verdict}",
    )
    table.add_column("Check")
    table.add_column("Found", justify="right")
    table.add_column("Cases")
    for name, photos in report["photos_per_class"].items():
        patients = report["patients_per_class"].get(name, "?")
        table.add_row(f"class {name}", str(photos), f"photos of {patients} patients")
    findings = [
        ("unreadable files", [f"{u['path']}: {u['reason']}" for u in report["unreadable"]]),
        ("exact duplicates", [" = ".join(group) for group in report["exact_duplicates"]]),
        ("copies (re-encoded, cropped, ...)", _pair_lines(report["near_duplicates"])),
        ("duplicates across splits or folds", _pair_lines(report["cross_split"])),
        ("patients in more than one part", list(report["patient_leaks"])),
        ("same photo under two classes", _pair_lines(report["cross_class"])),
    ]
    if len(report.get("sources", [])) > 1:
        findings.append(("copies across audited sets", _pair_lines(report["cross_source"])))
    if report.get("against"):
        others = ", ".join(str(p) for p in report["against"])
        findings.append((f"also in {others}", _pair_lines(report["against_duplicates"])))
    for name, cases in findings:
        table.add_row(name, str(len(cases)), _listed(cases))
    for note in report.get("notes", []):
        table.add_row("note", "", note)
    return table


def _pair_lines(pairs: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = []
    for pair in pairs:
        how = pair["how"]
        where = f", {pair['where']}" if pair.get("where") else ""
        lines.append(f"{pair['a']} ~ {pair['b']} ({how}{where})")
    return lines


def _listed(cases: Sequence[str]) -> str:
    shown = "\n".join(cases[:AUDIT_LISTED])
    more = len(cases) - AUDIT_LISTED
    return shown + (f"\n… and {more} more" if more > 0 else "")


def per_source_table(rows: Sequence[Mapping[str, Any]], title: str) -> Table:
    """Per-source figures (``per_source_figures``) with their 95% Wilson intervals.

    Args:
        rows: the rows, one per source and class.
        title: the table title.

    Returns:
        A :class:`rich.table.Table`.
    """
    table = Table(
        title=title,
        caption="Called mpox: assessed and at or above the screening threshold; refused: "
        "'retake'; sensitivity: mpox photos called mpox. Percent, 95% Wilson intervals.",
    )
    # Whole percentages keep the table narrow; cells wrap rather than being cut short.
    for index, column in enumerate(COLUMNS):
        table.add_column(column, justify="left" if index < 2 else "right", overflow="fold")
    for cells in per_source_cells(list(rows), digits=0):
        table.add_row(*cells)
    return table
