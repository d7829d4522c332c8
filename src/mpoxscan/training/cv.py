"""Patient-grouped, stratified cross-validation (`mpoxscan cv`).

Every fold trains with the same loop as `mpoxscan train`; its epoch, temperature and threshold
are chosen on a validation part carved from the fold's training patients, never on its test
patients. Out-of-fold probabilities of every photo are written to ``oof.csv``.
"""

from __future__ import annotations

import csv
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from mpoxscan._version import __version__
from mpoxscan.data.datasets import DatasetIndex, fingerprint_records
from mpoxscan.data.loading import ImageDataset
from mpoxscan.data.sources import sources_summary
from mpoxscan.data.splits import Fold, Split, grouped_folds, leave_source_out_folds
from mpoxscan.evaluation.metrics import (
    SUMMARY_METRICS,
    binary_metrics,
    screening_metrics,
    summarize_folds,
    to_jsonable,
)
from mpoxscan.evaluation.per_source import ScoredPhotos, per_source_figures
from mpoxscan.training.config import (
    DataConfig,
    ModelConfig,
    TrainConfig,
    config_dict,
    with_recipe,
)
from mpoxscan.training.frozen_features import FeatureCache
from mpoxscan.training.loop import num_outputs_of
from mpoxscan.training.recipes import (
    build_model,
    calibrate_and_score,
    fit_ood,
    fit_recipe,
    index_for_splitting,
    merges_dict,
    num_outputs_for,
    warn_about_leaks,
)

log = logging.getLogger(__name__)  # progress: one line per fold (the CLI shows it)

OOF_COLUMNS = (
    "file",
    "patient",
    "class",
    "label",
    "fold",
    "repeat",
    "probability",
    "source",
    "threshold",
    "refused",
)


def run_fold(
    fold: Fold,
    index: DatasetIndex,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    cache: FeatureCache | None = None,
    show_progress: bool = True,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train and measure one fold; returns its summary entry and its out-of-fold rows.

    ``cache`` holds the frozen-features recipe's embeddings across folds (each photo is
    embedded once per run); the fine-tuning recipe ignores it.
    """
    warn_about_leaks(Split(fold.train, fold.val, fold.test))
    model, prep = build_model(model_cfg, num_outputs_for(index), train_cfg.seed)
    binary = num_outputs_of(model) == 1
    train_ds, val_ds, test_ds = (
        ImageDataset(records, prep.image_size) for records in (fold.train, fold.val, fold.test)
    )
    fitted = fit_recipe(
        model,
        train_ds,
        val_ds,
        prep,
        model_cfg,
        train_cfg,
        cache=cache,
        show_progress=show_progress,
    )
    result = fitted.result
    scored = calibrate_and_score(fitted, val_ds, test_ds, binary, train_cfg.target_sensitivity)
    proba, labels, threshold = scored.proba, scored.labels, scored.threshold
    records = test_ds.records
    patients = [r.patient for r in records]
    ood = fit_ood(fitted.embeddings(train_ds), train_ds)
    refused = ood.is_out_of_domain(fitted.embeddings(test_ds))
    entry = {
        "fold": fold.index,
        "repeat": fold.repeat,
        "left_out": fold.left_out,
        "best_epoch": result.best_epoch,
        "temperature": scored.temperature,
        "threshold": threshold,
        # Accuracy-style figures at p = 0.5, comparable with the published ones ...
        "metrics": screening_metrics(labels, proba, index.classes, 0.5, binary, patients),
        # ... and the screening operating point chosen on this fold's validation part.
        "screening_metrics": screening_metrics(
            labels, proba, index.classes, threshold, binary, patients
        ),
        "history": result.history,
        "n_test_images": len(records),
        "n_test_patients": len({r.patient for r in records}),
        "n_refused": int(refused.sum()),
    }
    rows = [
        {
            "file": str(record.path),
            "patient": record.patient,
            "class": record.class_name,
            "label": int(label),
            "fold": fold.index,
            "repeat": fold.repeat,
            "probability": float(p[-1] if binary else p[label]),
            "source": record.source,
            "threshold": threshold,
            "refused": int(out),
        }
        for record, label, p, out in zip(records, labels, proba, refused, strict=True)
    ]
    return entry, rows


def pooled_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Metrics over the out-of-fold probabilities of the first repeat (each photo once)."""
    first = [row for row in rows if row["repeat"] == 0]
    return binary_metrics(
        np.array([row["label"] for row in first]),
        np.array([row["probability"] for row in first]),
        threshold=0.5,
        groups=[row["patient"] for row in first],
    )


def source_figures(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-source figures over the out-of-fold rows of the first repeat, each photo judged at its
    fold's screening threshold (see :mod:`mpoxscan.evaluation.per_source`)."""
    first = [row for row in rows if row["repeat"] == 0]
    columns = ("source", "class", "label", "patient", "probability", "threshold", "refused")
    return per_source_figures(ScoredPhotos.build(*([row[c] for row in first] for c in columns)))


def fold_figures(entries: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary's figures: pooled out-of-fold metrics, and the mean ± SD over folds at
    p = 0.5 (``mean_std``) and at each fold's screening threshold (``screening_mean_std``).

    Args:
        entries: one entry per fold, as :func:`run_fold` returns them.
        rows: the out-of-fold rows of every fold.
    """
    return {
        "pooled": pooled_metrics(rows),
        "per_source": source_figures(rows),
        "mean_std": summarize_folds([e["metrics"] for e in entries], SUMMARY_METRICS),
        "screening_mean_std": summarize_folds(
            [e["screening_metrics"] for e in entries], SUMMARY_METRICS
        ),
    }


def write_oof(rows: list[dict[str, Any]], path: Path) -> None:
    """Write out-of-fold probabilities as CSV."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=OOF_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _versions() -> dict[str, str]:
    import onnxruntime
    import sklearn
    import torch

    return {
        "mpoxscan": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "scikit-learn": sklearn.__version__,
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
    }


def run_cv(
    data_cfg: DataConfig,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    out_dir: Path,
    *,
    folds: int = 5,
    repeats: int = 1,
    leave_source_out: bool = False,
    command: str = "",
    show_progress: bool = True,
) -> dict[str, Any]:
    """Cross-validate a recipe with stratified, patient-grouped folds.

    With several sources, folds are stratified by source and class. ``leave_source_out``
    instead trains on all sources but one and tests the one left out, for every source without
    mpox photos, while the mpox sources are split by patient across those folds (see
    :func:`~mpoxscan.data.splits.leave_source_out_folds`).

    Args:
        data_cfg: the dataset (an unsplit layout: every photo is tested once per repeat).
        model_cfg: the model to build for every fold.
        train_cfg: the training recipe.
        out_dir: folder for ``summary.json`` and ``oof.csv``.
        folds: number of folds K.
        repeats: number of reshuffled repeats R.
        leave_source_out: leave-one-source-out folds instead of K folds.
        command: the command line, recorded in the summary.
        show_progress: draw per-epoch progress bars (fine-tuning).

    Returns:
        The summary dict that is also written to ``summary.json``.
    """
    train_cfg = with_recipe(train_cfg, model_cfg)
    index, merges = index_for_splitting(data_cfg, train_cfg.features.cache_dir)
    if index.multiclass:
        raise NotImplementedError("cross-validation currently supports binary screening only")
    out_dir.mkdir(parents=True, exist_ok=True)
    entries, rows = [], []
    cache = FeatureCache(train_cfg.features.cache_dir)
    if leave_source_out:
        all_folds = leave_source_out_folds(index.records, repeats=repeats, seed=train_cfg.seed)
    else:
        all_folds = grouped_folds(
            index.records, n_folds=folds, repeats=repeats, seed=train_cfg.seed
        )
    log.info(
        "cross-validating %s (%s) on %d photos: %d folds x %d repeats%s",
        model_cfg.name,
        train_cfg.recipe,
        len(index.records),
        len(all_folds) // repeats,
        repeats,
        " (leave one source out)" if leave_source_out else "",
    )
    for number, fold in enumerate(all_folds, start=1):
        start = time.perf_counter()
        entry, fold_rows = run_fold(
            fold, index, model_cfg, train_cfg, cache=cache, show_progress=show_progress
        )
        entries.append(entry)
        rows.extend(fold_rows)
        log.info(
            "fold %d/%d done in %.0f s: accuracy %.3f, ROC AUC %.3f on %d test photos",
            number,
            len(all_folds),
            time.perf_counter() - start,
            entry["metrics"].get("accuracy", float("nan")),
            entry["metrics"].get("roc_auc") or float("nan"),
            entry["n_test_images"],
        )
    write_oof(rows, out_dir / "oof.csv")
    summary = to_jsonable(
        {
            "command": command,
            "versions": _versions(),
            "config": config_dict(data_cfg, model_cfg, train_cfg)
            | {"folds": len(all_folds) // repeats, "repeats": repeats}
            | ({"leave_source_out": True} if leave_source_out else {}),
            "classes": index.classes,
            "positive_class": index.positive_class,
            "data": {
                "fingerprint": fingerprint_records(index.records),
                "n_images": len(index.records),
                "n_patients": len({r.patient for r in index.records}),
                "copy_merges": merges_dict(merges),
                "per_class": {
                    name: sum(r.class_name == name for r in index.records)
                    for name in index.class_names
                },
                "sources": sources_summary(index),
            },
            **fold_figures(entries, rows),
            "folds": entries,
        }
    )
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
