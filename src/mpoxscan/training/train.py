"""Train one model on a patient-grouped split and save it as a bundle (`mpoxscan train`)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mpoxscan.data.audit import find_split_leaks, merge_duplicates
from mpoxscan.data.datasets import DatasetIndex, ImageRecord, fingerprint_records, scan_dataset
from mpoxscan.data.loading import ImageDataset
from mpoxscan.data.preprocessing import Preprocessing
from mpoxscan.data.splits import Split, split_dataset
from mpoxscan.data.transforms import normalize_batch
from mpoxscan.evaluation.calibration import apply_temperature, choose_threshold, fit_temperature
from mpoxscan.evaluation.metrics import binary_metrics, multiclass_metrics, to_jsonable
from mpoxscan.evaluation.plots import plot_confusion_matrix, plot_roc, plot_training_curves
from mpoxscan.inference.bundle import save_bundle
from mpoxscan.inference.quality import OodDetector
from mpoxscan.models import create_model, get_model_spec
from mpoxscan.training.config import (
    DataConfig,
    ModelConfig,
    TrainConfig,
    config_dict,
    with_recipe,
)
from mpoxscan.training.frozen_features import (
    FeatureCache,
    fit_frozen_head,
    frozen_embeddings,
    frozen_logits,
)
from mpoxscan.training.loop import FitResult, fit, num_outputs_of, predict_logits

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Where the bundle went and what it measured on its held-out test patients."""

    bundle_dir: Path
    test_metrics: dict[str, Any]
    history: list[dict[str, float]]
    best_epoch: int


def build_model(
    model_cfg: ModelConfig, num_outputs: int, seed: int = 0
) -> tuple[nn.Module, Preprocessing]:
    """Create the registry model (initialised from ``seed``) and the preprocessing it expects."""
    torch.manual_seed(seed)
    model = create_model(
        model_cfg.name,
        num_outputs=num_outputs,
        pretrained=model_cfg.pretrained,
        weights=Path(model_cfg.weights) if model_cfg.weights else None,
        dropout=model_cfg.dropout,
        image_size=model_cfg.image_size,
    )
    prep = getattr(model, "preprocessing", None) or get_model_spec(model_cfg.name).preprocessing
    if model_cfg.image_size:
        prep = replace(prep, image_size=model_cfg.image_size)
    return model, prep


def starts_pretrained(model_cfg: ModelConfig) -> bool:
    """Whether the backbone starts from ImageNet weights (and so deserves a lower rate)."""
    if model_cfg.name == "vgg16":
        return model_cfg.weights is not None
    return model_cfg.pretrained and model_cfg.name.startswith("efficientnet")


def num_outputs_for(index: DatasetIndex) -> int:
    """One logit for binary screening, one per class otherwise."""
    return len(index.classes) if index.multiclass else 1


def warn_about_leaks(split: Split) -> list[str]:
    """Warn (and return the findings) when photos or patients straddle the split."""
    leaks = find_split_leaks(split)
    for leak in leaks:
        warnings.warn(f"split leak: {leak}", stacklevel=2)
    return leaks


@dataclass
class FittedModel:
    """A model trained by a recipe, with how that recipe scores photos.

    Attributes:
        result: the training history and chosen epoch (or ``C``).
        logits: ``dataset -> (logits, labels)`` as the recipe scores photos (the frozen-features
            recipe reads cached embeddings and may average test-time views).
        embeddings: ``dataset -> (N, C)`` pooled embeddings, for the out-of-domain detector.
    """

    result: FitResult
    logits: Callable[[ImageDataset], tuple[torch.Tensor, torch.Tensor]]
    embeddings: Callable[[ImageDataset], np.ndarray]


def fit_recipe(
    model: nn.Module,
    train_ds: ImageDataset,
    val_ds: ImageDataset,
    prep: Preprocessing,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    cache: FeatureCache | None = None,
    show_progress: bool = True,
) -> FittedModel:
    """Train ``model`` in place with the recipe ``train_cfg.recipe`` names (``None``: the
    model's default, see :func:`~mpoxscan.training.config.default_recipe`).

    Args:
        model: the registry model from :func:`build_model`.
        train_ds: the training photos.
        val_ds: the validation photos (epoch, ``C`` and early stopping are chosen on them).
        prep: the model's preprocessing.
        model_cfg: the model configuration (whether the backbone starts pretrained).
        train_cfg: the training recipe.
        cache: embeddings shared between calls (cross-validation folds); the
            frozen-features recipe makes one from ``train_cfg.features.cache_dir`` otherwise.
        show_progress: draw per-epoch progress bars (fine-tuning).

    Returns:
        A :class:`FittedModel`.
    """
    train_cfg = with_recipe(train_cfg, model_cfg)
    if train_cfg.recipe == "frozen-features":
        cache = cache if cache is not None else FeatureCache(train_cfg.features.cache_dir)
        result = fit_frozen_head(model, train_ds, val_ds, train_cfg, prep, cache)
        return FittedModel(
            result,
            lambda ds: frozen_logits(model, ds, train_cfg, prep, cache),
            lambda ds: frozen_embeddings(model, ds, train_cfg, prep, cache),
        )
    if train_cfg.trainable_from is not None:
        model.freeze_backbone(trainable_from=train_cfg.trainable_from)
    backbone_lr = train_cfg.backbone_lr if starts_pretrained(model_cfg) else train_cfg.head_lr
    result = fit(
        model,
        train_ds,
        val_ds,
        train_cfg,
        prep,
        backbone_lr=backbone_lr,
        show_progress=show_progress,
    )
    return FittedModel(
        result,
        lambda ds: predict_logits(model, ds, prep),
        lambda ds: embed_photos(model, ds, prep),
    )


def calibrate(
    model: nn.Module,
    val_ds: ImageDataset,
    prep: Preprocessing,
    binary: bool,
    target_sensitivity: float,
) -> tuple[float, float, dict[str, Any]]:
    """Fit the temperature and pick the decision threshold, both on validation data only."""
    logits, labels = predict_logits(model, val_ds, prep)
    return calibrate_logits(logits, labels, binary, target_sensitivity)


def calibrate_logits(
    logits: torch.Tensor, labels: torch.Tensor, binary: bool, target_sensitivity: float
) -> tuple[float, float, dict[str, Any]]:
    """:func:`calibrate` on validation logits already computed."""
    logits_np, labels_np = _logits_array(logits, binary), labels.numpy()
    temperature = fit_temperature(logits_np, labels_np, binary=binary)
    if not binary:
        return temperature, 0.5, {}
    p = apply_temperature(logits_np, temperature, binary=True)[:, 1]
    choice = choose_threshold(labels_np, p, target_sensitivity=target_sensitivity)
    return temperature, float(choice["threshold"]), choice


def score_split(
    model: nn.Module,
    dataset: ImageDataset,
    prep: Preprocessing,
    temperature: float,
    binary: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated class probabilities (n, n_classes) and labels for every photo of a split."""
    return calibrated(*predict_logits(model, dataset, prep), temperature, binary)


def calibrated(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float, binary: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (n, n_classes) from logits and a temperature, and the labels."""
    return apply_temperature(_logits_array(logits, binary), temperature, binary), labels.numpy()


def split_metrics(
    proba: np.ndarray,
    labels: np.ndarray,
    records: list[ImageRecord],
    classes: list[str],
    threshold: float,
    binary: bool,
) -> dict[str, Any]:
    """Metrics with confidence intervals, grouped by patient for the bootstrap."""
    groups = [record.patient for record in records]
    if binary:
        return binary_metrics(labels, proba[:, 1], threshold=threshold, groups=groups)
    return multiclass_metrics(labels, proba, classes, groups=groups)


@torch.no_grad()
def embed_photos(model: nn.Module, dataset: ImageDataset, prep: Preprocessing) -> np.ndarray:
    """Pooled backbone embeddings ``(N, C)`` of every photo of ``dataset``."""
    model.eval()
    embeddings = [
        model.embed(normalize_batch(images, prep)).numpy()
        for images, _ in torch.utils.data.DataLoader(dataset, batch_size=32)
    ]
    return np.concatenate(embeddings)


def fit_ood_detector(model: nn.Module, dataset: ImageDataset, prep: Preprocessing) -> OodDetector:
    """Fit the out-of-domain detector on the training photos' backbone embeddings."""
    groups = [record.patient for record in dataset.records]
    return OodDetector().fit(embed_photos(model, dataset, prep), groups=groups)


def load_index(data_cfg: DataConfig) -> DatasetIndex:
    """Scan the dataset; copies of one photo under two patient ids become one patient."""
    index = scan_dataset(
        data_cfg.data_dir,
        positive=data_cfg.positive,
        multiclass=data_cfg.multiclass,
        patient_pattern=data_cfg.patient_pattern,
    )
    return merge_duplicates(index)


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
    index = load_index(data_cfg)
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
    temperature, threshold, choice = calibrate_logits(
        *fitted.logits(datasets["val"]), binary, train_cfg.target_sensitivity
    )
    proba, labels = calibrated(*fitted.logits(datasets["test"]), temperature, binary)
    test_metrics = split_metrics(
        proba, labels, datasets["test"].records, index.classes, threshold, binary
    )
    meta = _bundle_meta(
        index, split, datasets, model, model_cfg, prep, data_cfg, train_cfg, command, result
    )
    meta.update(temperature=temperature, threshold=threshold)
    meta["metrics"] = to_jsonable({"test": test_metrics, "threshold_choice": choice})
    meta["data"]["leak_warnings"] = leaks
    # Grouped by patient: the threshold comes from distances of patients left out of the fit.
    train_patients = [record.patient for record in datasets["train"].records]
    log.info("fitting the out-of-domain detector, writing the bundle")
    ood = OodDetector().fit(fitted.embeddings(datasets["train"]), groups=train_patients)
    bundle_dir = save_bundle(out_dir, model, meta, ood=ood)
    _write_plots(bundle_dir, result, proba, labels, index.classes, threshold, binary)
    return TrainResult(bundle_dir, test_metrics, result.history, result.best_epoch)


_SPLITS = ("train", "val", "test")


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
            "splits": {name: _split_counts(datasets[name].records) for name in _SPLITS},
        },
        "training": {"history": result.history, "best_epoch": result.best_epoch},
    }


def _split_counts(records: list[ImageRecord]) -> dict[str, int]:
    return {"images": len(records), "patients": len({record.patient for record in records})}


def _logits_array(logits: torch.Tensor, binary: bool) -> np.ndarray:
    array = logits.detach().numpy().astype(np.float64)
    return array[:, 0] if binary else array


def _write_plots(
    bundle_dir: Path,
    result: FitResult,
    proba: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    threshold: float,
    binary: bool,
) -> None:
    plot_training_curves(result.history, bundle_dir / "curves.png")
    if binary:
        predicted = (proba[:, 1] >= threshold).astype(int)
        plot_roc(labels, proba[:, 1], bundle_dir / "roc.png")
    else:
        predicted = proba.argmax(axis=1)
    matrix = _confusion(labels, predicted, len(classes))
    plot_confusion_matrix(matrix, classes, bundle_dir / "confusion_matrix.png")


def _confusion(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    matrix = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(matrix, (labels.astype(int), predicted.astype(int)), 1)
    return matrix
