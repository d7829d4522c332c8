"""The two training recipes behind `mpoxscan train` and `mpoxscan cv`, and their shared set-up.

A run scans the dataset (:func:`load_index`), builds the model (:func:`build_model`), trains it
with the recipe the configuration names (:func:`fit_recipe`: fine-tuning through
:func:`~mpoxscan.training.loop.fit`, or the frozen-features recipe), then fits the temperature
and threshold on the validation photos and scores the test photos (:func:`calibrate_and_score`).
`train` saves the result as a bundle (:mod:`mpoxscan.training.train`); `cv` does it per fold
(:mod:`mpoxscan.training.cv`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mpoxscan.data.audit import find_split_leaks
from mpoxscan.data.copies import CopyConfig, GroupMerge, merge_copies
from mpoxscan.data.datasets import DatasetIndex
from mpoxscan.data.loading import ImageDataset
from mpoxscan.data.preprocessing import Preprocessing
from mpoxscan.data.sources import load_sources
from mpoxscan.data.splits import Split
from mpoxscan.data.transforms import normalize_batch
from mpoxscan.evaluation.calibration import calibrate_logits, calibrated_probabilities
from mpoxscan.inference.quality import NeighbourOodDetector
from mpoxscan.models import create_model, get_model_spec
from mpoxscan.models.region_embedding import RegionEmbedder
from mpoxscan.training.config import DataConfig, ModelConfig, TrainConfig, with_recipe
from mpoxscan.training.frozen_features import (
    FeatureCache,
    fit_frozen_head,
    frozen_embeddings,
    frozen_logits,
)
from mpoxscan.training.loop import FitResult, fit, predict_logits

log = logging.getLogger(__name__)


def load_index(data_cfg: DataConfig, cache_dir: str | Path | None = None) -> DatasetIndex:
    """Read the data source(s); copies of one photo under two patient ids become one patient."""
    return index_for_splitting(data_cfg, cache_dir)[0]


def index_for_splitting(
    data_cfg: DataConfig, cache_dir: str | Path | None = None
) -> tuple[DatasetIndex, list[GroupMerge]]:
    """Read the data source(s) and merge the photo groups of copies, so that no split
    separates them.

    Copies (identical, re-encoded, cropped, rotated or mirrored) are found by
    ``mpoxscan.data.copies`` with the pretrained region embedder; the merges are logged.

    Args:
        data_cfg: the dataset.
        cache_dir: where photo embeddings are cached by file hash (``None``: memory only).

    Returns:
        The index with merged photo groups, and the merges (recorded in the bundle and the CV
        summary).
    """
    index = load_sources(
        data_cfg.paths,
        positive=data_cfg.positive,
        multiclass=data_cfg.multiclass,
        patient_pattern=data_cfg.patient_pattern,
    )
    log.info("finding copies among %d photos before splitting", len(index.records))
    config = CopyConfig(cache_dir=Path(cache_dir) if cache_dir else None)
    merged, merges = merge_copies(index, embed=RegionEmbedder(), config=config)
    if merges:
        log.warning(
            "copies of one photo under different photo groups: %d group(s) merged before "
            "splitting (%s)",
            sum(len(m.members) - 1 for m in merges),
            "; ".join(" + ".join(m.members) for m in merges),
        )
    return merged, merges


def merges_dict(merges: list[GroupMerge]) -> list[dict[str, Any]]:
    """The merges as JSON, for ``model.json`` and the CV summary (``data.copy_merges``)."""
    return [{"group": m.group, "members": list(m.members)} for m in merges]


def fit_ood(train_embeddings: np.ndarray, train_ds: ImageDataset) -> NeighbourOodDetector:
    """The out-of-domain detector on every training photo's embedding (all skin sources of
    the training data): distance to the nearest training photos, so that skin photos of any
    source pass and noise, screenshots or text do not (see
    :class:`~mpoxscan.inference.quality.NeighbourOodDetector`). Grouped by patient: the
    threshold comes from distances to other patients' photos."""
    groups = [record.patient for record in train_ds.records]
    return NeighbourOodDetector().fit(train_embeddings, groups=groups)


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


@torch.no_grad()
def embed_photos(model: nn.Module, dataset: ImageDataset, prep: Preprocessing) -> np.ndarray:
    """Pooled backbone embeddings ``(N, C)`` of every photo of ``dataset``."""
    model.eval()
    embeddings = [
        model.embed(normalize_batch(images, prep)).numpy()
        for images, _ in torch.utils.data.DataLoader(dataset, batch_size=32)
    ]
    return np.concatenate(embeddings)


@dataclass
class Scored:
    """A trained model calibrated on validation photos and scored on test photos.

    Attributes:
        temperature: divides the logits (fitted on validation).
        threshold: on the positive-class probability (chosen on validation; 0.5 multi-class).
        choice: how the threshold was chosen (empty for multi-class).
        proba: ``(n, n_classes)`` calibrated probabilities of the test photos.
        labels: their true class indices.
    """

    temperature: float
    threshold: float
    choice: dict[str, Any]
    proba: np.ndarray
    labels: np.ndarray


def calibrate_and_score(
    fitted: FittedModel,
    val_ds: ImageDataset,
    test_ds: ImageDataset,
    binary: bool,
    target_sensitivity: float,
) -> Scored:
    """Fit the temperature and threshold on ``val_ds`` only, then score ``test_ds``."""
    val_logits, val_labels = fitted.logits(val_ds)
    temperature, threshold, choice = calibrate_logits(
        val_logits, val_labels.numpy(), binary, target_sensitivity
    )
    test_logits, test_labels = fitted.logits(test_ds)
    proba = calibrated_probabilities(test_logits, temperature, binary)
    return Scored(temperature, threshold, choice, proba, test_labels.numpy())
