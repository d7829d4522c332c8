"""Run the cross-validation variants of ``benchmarks/accuracy.md`` and tabulate them.

Each variant is one ``mpoxscan cv`` command on MSLD v1 (patient-grouped folds). Results go to
``runs/accuracy/<variant>/`` (summary.json, oof.csv) and one JSON line per run to
``runs/accuracy/results.jsonl`` with the command and its wall time.

    python benchmarks/accuracy_cv.py run lite0-frozen-logreg seed-cnn-finetune
    python benchmarks/accuracy_cv.py table            # markdown rows of every finished run
    python benchmarks/accuracy_cv.py list             # the variants and their commands

Embeddings of the frozen-features variants are kept in ``runs/feature-cache`` and shared
between variants with the same backbone and image size, so only the first of them pays for
the forward passes. Runs use one torch thread (``OMP_NUM_THREADS=1``): on the shared 2-core
machine this was twice as fast as two threads.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, machine

DATA = "../shared/data/msld-v1"
OUT_ROOT = Path("runs/accuracy")
CACHE = "runs/feature-cache"
SELECTION = ("--folds", "5", "--repeats", "2")


def frozen(model: str, *extra: str, split: tuple[str, ...] = SELECTION) -> list[str]:
    """Arguments of a frozen-features variant: ``split`` folds (TTA unless ``--no-tta``)."""
    if "--no-tta" not in extra:
        extra = (*extra, "--tta")
    return [
        "--model",
        model,
        "--recipe",
        "frozen-features",
        "--feature-cache",
        CACHE,
        *extra,
        *split,
    ]


#: name -> (arguments after ``mpoxscan cv --data DATA --out runs/accuracy/<name>``, role).
VARIANTS: dict[str, tuple[list[str], str]] = {
    # Model selection: frozen features on seed-0 folds.
    "lite0-frozen-logreg": (
        frozen("efficientnet-lite0", "--head", "logreg", "--views", "10"),
        "selection",
    ),
    "lite0-frozen-logreg-notta": (
        frozen("efficientnet-lite0", "--head", "logreg", "--views", "10", "--no-tta"),
        "selection",
    ),
    "lite0-frozen-logreg-v1": (
        frozen("efficientnet-lite0", "--head", "logreg", "--views", "1", "--no-tta"),
        "selection",
    ),
    "lite0-frozen-logreg-v2": (
        frozen("efficientnet-lite0", "--head", "logreg", "--views", "2"),
        "selection",
    ),
    "lite0-frozen-linear": (
        frozen("efficientnet-lite0", "--head", "linear", "--views", "10"),
        "selection",
    ),
    "lite1-frozen-logreg": (
        frozen("efficientnet-lite1", "--head", "logreg", "--views", "10"),
        "selection",
    ),
    "lite2-frozen-logreg": (
        frozen("efficientnet-lite2", "--head", "logreg", "--views", "10"),
        "selection",
    ),
    "lite0-300-frozen-logreg": (
        frozen("efficientnet-lite0", "--image-size", "300", "--head", "logreg", "--views", "10"),
        "selection",
    ),
    # Partial fine-tuning on cached block inputs (linear probe, then fine-tune the tail).
    "lite0-frozen-tail1": (
        frozen("efficientnet-lite0", "--head", "logreg", "--views", "10", "--tail-blocks", "1"),
        "selection",
    ),
    # Five blocks cost minutes per fold to fine-tune: 5 folds x 1 repeat only.
    "lite0-frozen-tail5": (
        frozen(
            "efficientnet-lite0",
            "--head",
            "logreg",
            "--views",
            "10",
            "--tail-blocks",
            "5",
            split=("--folds", "5"),
        ),
        "selection",
    ),
    # Fine-tuning (the training loop's default recipe), 5 folds x 1 repeat.
    "lite0-finetune": (
        ["--model", "efficientnet-lite0", "--recipe", "finetune", "--folds", "5"],
        "selection",
    ),
    "lite0-finetune-last5": (
        [
            *("--model", "efficientnet-lite0", "--recipe", "finetune"),
            *("--trainable-from", "backbone._blocks.11", "--folds", "5"),
        ],
        "selection",
    ),
    "seed-cnn-finetune": (
        ["--model", "seed-cnn", "--recipe", "finetune", "--folds", "5"],
        "baseline",
    ),
    "seed-cnn-finetune-long": (
        [
            *("--model", "seed-cnn", "--recipe", "finetune", "--epochs", "40"),
            *("--patience", "10", "--folds", "5"),
        ],
        "baseline",
    ),
    # The chosen default (no recipe flags) on folds the selection never saw (seed 1).
    "final-default": (
        ["--feature-cache", CACHE, "--seed", "1", "--folds", "5", "--repeats", "3"],
        "final (fixed recipe)",
    ),
}


def command_for(name: str) -> list[str]:
    """The ``mpoxscan cv`` command line of a variant."""
    args, _ = VARIANTS[name]
    return ["mpoxscan", "cv", "--data", DATA, "--out", str(OUT_ROOT / name), *args]


def run(name: str) -> dict:
    """Run one variant from the repository root; returns (and appends) its results line."""
    command = command_for(name)
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    executable = [str(REPO_ROOT / ".venv/bin/mpoxscan"), *command[1:]]
    started = time.time()
    subprocess.run(executable, cwd=REPO_ROOT, env=env, check=True)
    wall = time.time() - started
    summary = json.loads((REPO_ROOT / OUT_ROOT / name / "summary.json").read_text())
    line = {
        "variant": name,
        "role": VARIANTS[name][1],
        "command": shlex.join(command),
        "wall_s": round(wall, 1),
        "machine": machine(),
        "mean_std": summary["mean_std"],
        "screening_mean_std": summary["screening_mean_std"],
        "pooled": summary["pooled"],
        "split": f"{summary['config']['folds']} x {summary['config']['repeats']}",
    }
    with (REPO_ROOT / OUT_ROOT / "results.jsonl").open("a") as handle:
        handle.write(json.dumps(line) + "\n")
    return line


def _pm(stats: dict) -> str:
    return f"{100 * stats['mean']:.1f} ± {100 * stats['std']:.1f}"


def _ci(pooled: dict, key: str) -> str:
    low, high = pooled[f"{key}_ci"]
    return f"{100 * pooled[key]:.1f} ({100 * low:.1f}-{100 * high:.1f})"


def latest_results() -> dict[str, dict]:
    """The last ``results.jsonl`` line of every variant, in first-run order."""
    latest: dict[str, dict] = {}
    for text in (REPO_ROOT / OUT_ROOT / "results.jsonl").read_text().splitlines():
        line = json.loads(text)
        latest[line["variant"]] = line
    return latest


def table() -> str:
    """Markdown table of the latest run of every variant: fold mean ± SD, then pooled."""
    rows = [
        "| variant | role | folds x repeats | accuracy % | ROC AUC % | sensitivity % "
        "| specificity % | wall (min) | command |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for line in latest_results().values():
        stats = line["mean_std"]
        rows.append(
            f"| `{line['variant']}` | {line['role']} | {line['split']} | "
            f"{_pm(stats['accuracy'])} | {_pm(stats['roc_auc'])} | "
            f"{_pm(stats['sensitivity'])} | {_pm(stats['specificity'])} | "
            f"{line['wall_s'] / 60:.0f} | `{line['command']}` |"
        )
    return "\n".join(rows)


def pooled_table(names: list[str]) -> str:
    """Pooled out-of-fold figures (first repeat) with 95% CIs, per photo and per patient."""
    rows = [
        "| variant | level | n | accuracy % | ROC AUC % | sensitivity % | specificity % |",
        "|---|---|---|---|---|---|---|",
    ]
    results = latest_results()
    for name in names:
        pooled = results[name]["pooled"]
        for level, figures, n in (
            ("photo", pooled, pooled["n_images"]),
            ("patient", pooled["patient_level"], pooled["n_patients"]),
        ):
            rows.append(
                f"| `{name}` | {level} | {n} | {_ci(figures, 'accuracy')} | "
                f"{_ci(figures, 'roc_auc')} | {_ci(figures, 'sensitivity')} | "
                f"{_ci(figures, 'specificity')} |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("run").add_argument("variants", nargs="+", choices=sorted(VARIANTS))
    sub.add_parser("table")
    sub.add_parser("pooled").add_argument("variants", nargs="+")
    sub.add_parser("list")
    args = parser.parse_args()
    if args.action == "run":
        for name in args.variants:
            line = run(name)
            print(name, json.dumps({k: line["mean_std"][k]["mean"] for k in line["mean_std"]}))
    elif args.action == "table":
        print(table())
    elif args.action == "pooled":
        print(pooled_table(args.variants))
    else:
        for name in VARIANTS:
            print(f"{name}: {shlex.join(command_for(name))}")


if __name__ == "__main__":
    main()
