"""The README's headline row of a cross-validation run (``mpoxscan cv --out DIR``).

MSLD mpox sensitivity at the fold thresholds, MSLD mpox-vs-others ROC AUC (patient
bootstrap), and the share of each source's photos called mpox, each with its 95% interval:

    python benchmarks/cv_headline.py runs/final-cv runs/final-loso
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from mpoxscan.evaluation.metrics import binary_metrics

MSLD = "msld-v1"
NEGATIVE_SOURCES = ("healthy-abdomen", "skin-id-smartphone", "sd198-subset", "insect-bites")


def percent(share: float, ci: list[float]) -> str:
    """``12.0% (9.7-14.8)``."""
    return f"{100 * share:.1f}% ({100 * ci[0]:.1f}–{100 * ci[1]:.1f})"


def msld_auc(run: Path) -> str:
    """ROC AUC of MSLD mpox against MSLD's others, out of fold, patient-bootstrap interval."""
    with (run / "oof.csv").open() as file:
        rows = [r for r in csv.DictReader(file) if r["source"] == MSLD]
    labels = np.array([int(r["label"]) for r in rows])
    proba = np.array([float(r["probability"]) for r in rows])
    metrics = binary_metrics(labels, proba, groups=[r["patient"] for r in rows])
    low, high = metrics["roc_auc_ci"]
    return f"{metrics['roc_auc']:.3f} ({low:.3f}–{high:.3f})"


def headline(run: Path) -> str:
    """One Markdown table row for the run."""
    rows = json.loads((run / "summary.json").read_text())["per_source"]
    cell = {(r["source"], r["class"]): r for r in rows}
    mpox = cell[(MSLD, "Monkey Pox")]
    sens = percent(mpox["sensitivity"], mpox["sensitivity_ci"]) + f", {mpox['photos']} photos"
    others = cell[(MSLD, "Others")]
    shares = [percent(others["called"], others["called_ci"])]
    for source in NEGATIVE_SOURCES:
        only = [r for r in rows if r["source"] == source]
        row = cell.get((source, "(all)"), only[0])  # one-class sources have no "(all)" row
        refused = f"; {100 * row['refused']:.0f}% refused" if row["refused"] >= 0.05 else ""
        shares.append(percent(row["called"], row["called_ci"])[:-1] + refused + ")")
    return f"| `{run}` | {sens} | {msld_auc(run)} | " + " | ".join(shares) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="--out folders of mpoxscan cv")
    args = parser.parse_args()
    for run in args.runs:
        print(headline(run))


if __name__ == "__main__":
    main()
