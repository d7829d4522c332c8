"""Nested, patient-grouped cross-validation of the frozen-features recipes on MSLD v1.

The honest estimate of "pick the best recipe, then train it": in each outer fold the recipe is
chosen by an inner patient-grouped CV on that fold's training patients only, then trained on
them (validation part carved from them as usual) and scored once on the outer test patients,
which took no part in the choice. The outer folds use a seed the model-selection runs did not.

    python benchmarks/accuracy_nested.py --outer-seed 100 --out runs/accuracy/nested-100

Only frozen-features candidates are nested: with cached embeddings an inner fold costs seconds,
where a fine-tuned one costs minutes. Embeddings come from ``runs/feature-cache`` (filled by
``accuracy_cv.py``); missing ones are computed. Writes ``summary.json`` and ``oof.csv`` and
appends a line to ``runs/accuracy/results.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, machine
from mpoxscan.data.splits import Fold, grouped_folds
from mpoxscan.evaluation.metrics import to_jsonable
from mpoxscan.training.config import (
    DataConfig,
    FeatureConfig,
    ModelConfig,
    TrainConfig,
)
from mpoxscan.training.cv import fold_figures, run_fold, write_oof
from mpoxscan.training.frozen_features import FeatureCache
from mpoxscan.training.recipes import load_index

DATA = REPO_ROOT.parent / "shared/data/msld-v1"
CACHE = REPO_ROOT / "runs/feature-cache"
INNER_FOLDS = 4


@dataclass(frozen=True)
class Candidate:
    """One recipe the inner CV may choose."""

    name: str
    model: ModelConfig
    train: TrainConfig


def candidates(names: list[str] | None = None) -> list[Candidate]:
    """The frozen-features grid of the model-selection table (10 training views each)."""

    def make(name: str, model: str, size: int | None, **features: Any) -> Candidate:
        feature_cfg = FeatureConfig(cache_dir=str(CACHE), train_views=10, **features)
        return Candidate(
            name,
            ModelConfig(name=model, image_size=size),
            TrainConfig(recipe="frozen-features", features=feature_cfg),
        )

    grid = [
        make("lite0-logreg", "efficientnet-lite0", None, head="logreg", tta=False),
        make("lite0-logreg-tta", "efficientnet-lite0", None, head="logreg", tta=True),
        make("lite0-linear-tta", "efficientnet-lite0", None, head="linear", tta=True),
        make("lite1-logreg-tta", "efficientnet-lite1", None, head="logreg", tta=True),
        make("lite2-logreg-tta", "efficientnet-lite2", None, head="logreg", tta=True),
    ]
    return [c for c in grid if names is None or c.name in names]


def inner_score(
    pool_fold: Fold, index, candidate: Candidate, cache: FeatureCache, seed: int
) -> dict[str, float]:
    """Mean accuracy and ROC AUC of a candidate over an inner CV of one outer training part."""
    pool = pool_fold.train + pool_fold.val
    metrics = []
    for inner in grouped_folds(pool, n_folds=INNER_FOLDS, seed=seed):
        entry, _ = run_fold(inner, index, candidate.model, candidate.train, cache=cache)
        metrics.append(entry["metrics"])
    return {
        "accuracy": float(np.mean([m["accuracy"] for m in metrics])),
        "roc_auc": float(np.mean([m["roc_auc"] for m in metrics])),
    }


def nested_cv(outer_seed: int, names: list[str] | None, out_dir: Path) -> dict[str, Any]:
    """Run the nested CV; returns the summary also written to ``out_dir/summary.json``."""
    index = load_index(DataConfig(data_dir=str(DATA)))
    grid = candidates(names)
    cache = FeatureCache(CACHE)
    entries, rows, choices = [], [], []
    for fold in grouped_folds(index.records, n_folds=5, seed=outer_seed):
        scores = {c.name: inner_score(fold, index, c, cache, outer_seed + 1) for c in grid}
        best = max(grid, key=lambda c: (scores[c.name]["accuracy"], scores[c.name]["roc_auc"]))
        entry, fold_rows = run_fold(fold, index, best.model, best.train, cache=cache)
        entry["chosen"] = best.name
        entry["inner_scores"] = scores
        entries.append(entry)
        rows.extend(fold_rows)
        choices.append(best.name)
        accuracy = entry["metrics"]["accuracy"]
        print(f"fold {fold.index}: chose {best.name}; outer accuracy {accuracy:.3f}", flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_oof(rows, out_dir / "oof.csv")
    summary = to_jsonable(
        {
            "outer_seed": outer_seed,
            "inner_folds": INNER_FOLDS,
            "candidates": [c.name for c in grid],
            "chosen": choices,
            **fold_figures(entries, rows),
            "folds": entries,
        }
    )
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outer-seed", type=int, default=100)
    parser.add_argument("--candidates", nargs="*", default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/accuracy/nested"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    summary = nested_cv(args.outer_seed, args.candidates, REPO_ROOT / args.out)
    line = {
        "variant": f"nested-{args.outer_seed}",
        "role": "final (nested)",
        "command": shlex.join(["python", "benchmarks/accuracy_nested.py", *sys.argv[1:]]),
        "wall_s": round(time.time() - started, 1),
        "machine": machine(),
        "mean_std": summary["mean_std"],
        "screening_mean_std": summary["screening_mean_std"],
        "pooled": summary["pooled"],
        "split": f"5 outer x 1 ({INNER_FOLDS} inner)",
        "chosen": summary["chosen"],
    }
    with (REPO_ROOT / "runs/accuracy/results.jsonl").open("a") as handle:
        handle.write(json.dumps(line) + "\n")
    print(json.dumps({k: v["mean"] for k, v in summary["mean_std"].items()}))


if __name__ == "__main__":
    main()
