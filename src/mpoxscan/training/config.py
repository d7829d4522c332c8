"""Typed configuration for training and cross-validation; recorded verbatim in ``model.json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from mpoxscan.data.transforms import AugmentConfig


def _from_dict(cls, values: dict[str, Any]):
    """Build dataclass ``cls`` from a dict, naming any unknown key instead of ignoring it."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(known)}")
    return cls(**values)


@dataclass
class DataConfig:
    """Where the photos are and how they become labelled, patient-grouped splits."""

    data_dir: str
    # None: the class whose folder name matches mpox/monkeypox.
    positive: str | None = None
    multiclass: bool = False
    # None: the patient is the file stem up to the first "_" (the MSLD naming).
    patient_pattern: str | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 0.5:
                raise ValueError(f"DataConfig.{name} must be between 0 and 0.5, got {value}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataConfig:
        """Build from a dict such as the one stored in ``model.json``."""
        return _from_dict(cls, values)


@dataclass
class ModelConfig:
    """Which network to build, from the model registry."""

    name: str = "efficientnet-lite0"
    # None: the architecture's native input size (224 for EfficientNet-Lite0).
    image_size: int | None = None
    # None: the architecture's own default.
    dropout: float | None = None
    pretrained: bool = True
    # ImageNet weights file for vgg16 (Keras notop .h5 or torchvision .pth).
    weights: str | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Build from a dict such as the one stored in ``model.json``."""
        return _from_dict(cls, values)


@dataclass
class TrainConfig:
    """How the one training loop runs; the defaults are the recipe chosen on validation data."""

    epochs: int = 15
    batch_size: int = 16
    # The new head learns fast; the pretrained backbone moves ten times slower so that its
    # ImageNet features survive a dataset of a few hundred photos.
    head_lr: float = 1e-3
    backbone_lr: float = 1e-4
    weight_decay: float = 1e-4
    # Early stopping on validation loss; the best epoch's weights are restored.
    patience: int = 4
    seed: int = 0
    freeze_backbone: bool = False
    # Screening favours sensitivity: the threshold is set on validation data to reach it.
    target_sensitivity: float = 0.95
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig(**self.augment)
        if self.epochs < 1:
            raise ValueError(f"TrainConfig.epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"TrainConfig.batch_size must be at least 1, got {self.batch_size}")
        if not 0.0 < self.target_sensitivity <= 1.0:
            raise ValueError(
                f"TrainConfig.target_sensitivity must be in (0, 1], got {self.target_sensitivity}"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict such as the one stored in ``model.json``."""
        return _from_dict(cls, values)


def config_dict(data: DataConfig, model: ModelConfig, train: TrainConfig) -> dict[str, Any]:
    """The three configs as one JSON-ready dict, as stored in ``model.json["config"]``."""
    return {"data": asdict(data), "model": asdict(model), "train": asdict(train)}
