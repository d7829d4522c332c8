"""Typed configuration for training and cross-validation; recorded verbatim in ``model.json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from mpoxscan.data.style import StyleConfig
from mpoxscan.data.transforms import AugmentConfig

#: How a model learns: the whole network end to end, or only its head on cached embeddings.
RECIPES = ("finetune", "frozen-features")
Recipe = Literal["finetune", "frozen-features"]
#: Heads the frozen-features recipe can train on the cached embeddings.
FEATURE_HEADS = ("linear", "logreg")
FeatureHead = Literal["linear", "logreg"]
#: How training photos are weighted: every class the same total weight, or also every
#: (source, class folder group) inside a class (see ``FeatureConfig.balance``).
BALANCES = ("class", "source")
Balance = Literal["class", "source"]


def _from_dict(cls, values: dict[str, Any]):
    """Build dataclass ``cls`` from a dict, naming any unknown key instead of ignoring it."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; known: {sorted(known)}")
    return cls(**values)


@dataclass
class DataConfig:
    """Where the photos are and how they become labelled, patient-grouped splits.

    ``data_dir`` and each of ``more_data`` is a dataset folder or a data manifest (``*.toml``,
    see :mod:`mpoxscan.data.sources`); more than one source makes a multi-source run.
    """

    data_dir: str
    more_data: list[str] = field(default_factory=list)
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

    @property
    def paths(self) -> list[str]:
        """Every data path given: ``data_dir`` then ``more_data``."""
        return [self.data_dir, *self.more_data]

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
class FeatureConfig:
    """The frozen-features recipe: the backbone embeds each photo once, only the head learns.

    Attributes:
        head: ``"logreg"`` fits an L2 logistic regression on standardised embeddings (its
            ``C`` chosen on validation log loss) and writes it into the model's output layer;
            ``"linear"`` trains the model's own head (dropout + linear) with AdamW and early
            stopping on validation loss.
        train_views: views embedded per training photo: the photo itself, its mirror image,
            then random augmentations (``TrainConfig.augment``), so the head still sees
            augmented photos although nothing is recomputed per epoch.
        tta: average the logits of a photo and its mirror image at validation and test time.
            The saved network scores one view; ``model.json`` records this flag.
        epochs: maximum epochs of the ``"linear"`` head (an epoch over cached embeddings
            costs milliseconds).
        patience: early-stopping patience of the ``"linear"`` head, in epochs.
        lr: learning rate of the ``"linear"`` head.
        logreg_cs: inverse regularisation strengths tried by the ``"logreg"`` head.
        cache_dir: folder for embeddings on disk (keyed by file hash, backbone weights, image
            size, augmentation and seed); ``None`` keeps them in memory for the run only.
        tail_blocks: partial fine-tuning (EfficientNet-Lite): cache the input of the last
            ``tail_blocks`` backbone blocks instead, fit the head as above, then fine-tune those
            blocks, the final 1x1 convolution and the head together at ``backbone_lr`` for up to
            ``tail_epochs`` epochs (early stopping after ``TrainConfig.patience``). 0: head only.
        tail_epochs: maximum epochs of that fine-tuning.
        style: style-removing augmentation of the augmented training views (views 2 and
            on): random JPEG re-encoding, resizing down and up, a watermark-like text overlay
            and white-balance shifts (:mod:`mpoxscan.data.style`), applied before
            ``TrainConfig.augment``, so the head cannot tell classes apart by a source's
            photo style. ``None``: no style changes.
        balance: ``"class"`` weights each class equally (``class_weight="balanced"``);
            ``"source"`` also gives every source's share of a class the same weight (photos of
            several sources; each source's "Healthy"-like folders count as their own share),
            so a big source cannot decide what a class looks like (``logreg`` head only).
    """

    head: FeatureHead = "logreg"
    train_views: int = 10
    tta: bool = False
    epochs: int = 300
    patience: int = 30
    lr: float = 1e-3
    logreg_cs: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
    cache_dir: str | None = None
    tail_blocks: int = 0
    tail_epochs: int = 10
    style: StyleConfig | None = None
    balance: Balance = "class"

    def __post_init__(self) -> None:
        if isinstance(self.style, dict):
            self.style = StyleConfig(**self.style)
        if self.balance not in BALANCES:
            raise ValueError(
                f"FeatureConfig.balance must be one of {BALANCES}, got {self.balance!r}"
            )
        if self.tail_blocks < 0:
            raise ValueError(f"FeatureConfig.tail_blocks must be 0 or more, got {self.tail_blocks}")
        if self.head not in FEATURE_HEADS:
            raise ValueError(
                f"FeatureConfig.head must be one of {FEATURE_HEADS}, got {self.head!r}"
            )
        if self.train_views < 1:
            raise ValueError(
                f"FeatureConfig.train_views must be at least 1, got {self.train_views}"
            )
        self.logreg_cs = tuple(float(c) for c in self.logreg_cs)
        if not self.logreg_cs or min(self.logreg_cs) <= 0:
            raise ValueError(
                f"FeatureConfig.logreg_cs must be positive numbers, got {self.logreg_cs}"
            )


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
    # Partial fine-tuning: backbone parameters before this name prefix stay frozen (e.g.
    # "backbone._blocks.13"); None trains the whole backbone.
    trainable_from: str | None = None
    # None: the model's benchmarked default (default_recipe), resolved when training starts
    # and recorded in model.json.
    recipe: Recipe | None = None
    # Screening favours sensitivity: the threshold is set on validation data to reach it.
    target_sensitivity: float = 0.95
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig(**self.augment)
        if isinstance(self.augment.crop_scale, list):  # JSON has no tuples
            self.augment.crop_scale = tuple(self.augment.crop_scale)
        if isinstance(self.features, dict):
            self.features = _from_dict(FeatureConfig, self.features)
        if self.recipe is not None and self.recipe not in RECIPES:
            raise ValueError(f"TrainConfig.recipe must be one of {RECIPES}, got {self.recipe!r}")
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


def default_recipe(model_name: str) -> Recipe:
    """The recipe ``mpoxscan train`` and ``mpoxscan cv`` use for a model unless told otherwise.

    Pretrained EfficientNet-Lite models get the frozen-features recipe, which did best under
    patient-grouped cross-validation (``benchmarks/accuracy.md``); seed-cnn and vgg16 have heads
    on the whole feature map and are fine-tuned.
    """
    return "frozen-features" if model_name.startswith("efficientnet-lite") else "finetune"


def with_recipe(train: TrainConfig, model: ModelConfig) -> TrainConfig:
    """``train`` with its recipe resolved: ``None`` becomes the model's :func:`default_recipe`."""
    if train.recipe is not None:
        return train
    return replace(train, recipe=default_recipe(model.name))


def config_dict(data: DataConfig, model: ModelConfig, train: TrainConfig) -> dict[str, Any]:
    """The three configs as one JSON-ready dict, as stored in ``model.json["config"]``."""
    return {"data": asdict(data), "model": asdict(model), "train": asdict(train)}
