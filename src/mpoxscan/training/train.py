"""Train one model on a patient-grouped split and save it as a bundle (`mpoxscan train`)."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from mpoxscan.data.datasets import DatasetIndex, ImageRecord, fingerprint_records
from mpoxscan.data.loading import ImageDataset
from mpoxscan.data.preprocessing import Preprocessing
from mpoxscan.data.sources import sources_summary
from mpoxscan.data.splits import Split, split_dataset
from mpoxscan.evaluation.metrics import screening_metrics, to_jsonable
from mpoxscan.evaluation.plots import plot_test_results, plot_training_curves
from mpoxscan.inference.bundle import save_bundle
from mpoxscan.inference.no_lesion import NoLesionDetector, is_no_lesion_class
from mpoxscan.training.config import (
    DataConfig,
    ModelConfig,
    TrainConfig,
    config_dict,
    with_recipe,
)
from mpoxscan.training.loop import FitResult, num_outputs_of
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

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Where the bundle went and what it measured on its held-out test patients."""

    bundle_dir: Path
    test_metrics: dict[str, Any]
    history: list[dict[str, float]]
    best_epoch: int


def train_bundle(
    data_cfg: DataConfig,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    out_dir: Path,
    *,
    command: str = "",
    show_progress: bool = True,
) -> TrainResult:
    """Train on the train split, choose the epoch/temperature/threshold on validation, measure
    on the test patients, and save everything as a bundle in ``out_dir``.

    Args:
        data_cfg: the dataset and how it is split (by patient, stratified by class).
        model_cfg: the registry model to build.
        train_cfg: the training recipe.
        out_dir: the bundle directory to write (created; files in it are replaced).
        command: the command line that started the run, recorded in ``model.json``.
        show_progress: draw per-epoch progress bars.

    Returns:
        A :class:`TrainResult` with the bundle path and the test metrics.
    """
    train_cfg = with_recipe(train_cfg, model_cfg)
    index, merges = index_for_splitting(data_cfg, train_cfg.features.cache_dir)
    split = split_dataset(
        index,
        val_fraction=data_cfg.val_fraction,
        test_fraction=data_cfg.test_fraction,
        seed=train_cfg.seed,
    )
    leaks = warn_about_leaks(split)
    log.info(
        "training %s (%s) on %d/%d/%d train/val/test photos",
        model_cfg.name,
        train_cfg.recipe,
        *(len(getattr(split, name)) for name in _SPLITS),
    )
    model, prep = build_model(model_cfg, num_outputs_for(index), train_cfg.seed)
    binary = num_outputs_of(model) == 1
    log.info("decoding the photos")
    datasets = {name: ImageDataset(getattr(split, name), prep.image_size) for name in _SPLITS}
    log.info("fitting the model")
    fitted = fit_recipe(
        model,
        datasets["train"],
        datasets["val"],
        prep,
        model_cfg,
        train_cfg,
        show_progress=show_progress,
    )
    result = fitted.result
    log.info("calibrating on the validation patients, scoring the test patients")
    scored = calibrate_and_score(
        fitted, datasets["val"], datasets["test"], binary, train_cfg.target_sensitivity
    )
    test_patients = [record.patient for record in datasets["test"].records]
    test_metrics = screening_metrics(
        scored.labels, scored.proba, index.classes, scored.threshold, binary, test_patients
    )
    meta = _bundle_meta(
        index, split, datasets, model, model_cfg, prep, data_cfg, train_cfg, command, result
    )
    meta.update(temperature=scored.temperature, threshold=scored.threshold)
    meta["metrics"] = to_jsonable({"test": test_metrics, "threshold_choice": scored.choice})
    meta["data"]["leak_warnings"] = leaks
    meta["data"]["copy_merges"] = merges_dict(merges)
    log.info("fitting the out-of-domain detector, writing the bundle")
    train_embeddings = fitted.embeddings(datasets["train"])
    ood = fit_ood(train_embeddings, datasets["train"])
    no_lesion = fit_no_lesion_head(
        train_embeddings, datasets["train"], fitted.embeddings(datasets["val"]), datasets["val"]
    )
    with tempfile.TemporaryDirectory(prefix="mpoxscan-plots-") as folder:
        plots = Path(folder)
        plot_training_curves(result.history, plots / "curves.png")
        plot_test_results(
            plots, scored.labels, scored.proba, index.classes, scored.threshold, binary
        )
        # One atomic save: a crash leaves the old bundle, never weights without their plots.
        bundle_dir = save_bundle(
            out_dir, model, meta, ood=ood, no_lesion=no_lesion, extra_files=sorted(plots.iterdir())
        )
    return TrainResult(bundle_dir, test_metrics, result.history, result.best_epoch)


_SPLITS = ("train", "val", "test")


def fit_no_lesion_head(
    train_embeddings: np.ndarray,
    train_ds: ImageDataset,
    val_embeddings: np.ndarray,
    val_ds: ImageDataset,
) -> NoLesionDetector | None:
    """Fit the "no lesion seen" head when the photos include skin without a lesion.

    Photos of class folders named like "Healthy" (:func:`is_no_lesion_class`) are the no-lesion
    class, every other photo a lesion; the threshold is chosen on the validation photos.
    Returns ``None`` (no head) unless both splits have both kinds.
    """
    y_train = np.array([is_no_lesion_class(r.class_name) for r in train_ds.records], dtype=bool)
    y_val = np.array([is_no_lesion_class(r.class_name) for r in val_ds.records], dtype=bool)
    if y_train.all() or not y_train.any() or y_val.all() or not y_val.any():
        return None
    return NoLesionDetector().fit(train_embeddings, y_train, val_embeddings, y_val)


def _bundle_meta(
    index: DatasetIndex,
    split: Split,
    datasets: dict[str, ImageDataset],
    model: nn.Module,
    model_cfg: ModelConfig,
    prep: Preprocessing,
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    command: str,
    result: FitResult,
) -> dict[str, Any]:
    return {
        "architecture": {
            "name": model_cfg.name,
            "num_outputs": num_outputs_of(model),
            "image_size": prep.image_size,
            "dropout": model_cfg.dropout,
        },
        "classes": list(index.classes),
        "positive_class": index.positive_class,
        "multiclass": index.multiclass,
        "preprocessing": asdict(prep),
        "config": config_dict(data_cfg, model_cfg, train_cfg),
        "command": command,
        "data_fingerprint": fingerprint_records(index.records),
        "data": {
            "layout": index.layout,
            "sources": sources_summary(index),
            "splits": {name: _split_counts(datasets[name].records) for name in _SPLITS},
        },
        "training": {"history": result.history, "best_epoch": result.best_epoch},
    }


def _split_counts(records: list[ImageRecord]) -> dict[str, int]:
    return {"images": len(records), "patients": len({record.patient for record in records})}
