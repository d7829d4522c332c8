"""Model registry: names users type (``vgg16``) mapped to builders, and the common model base.

Every model is an :class:`MpoxNet`: a feature extractor that ends in a convolutional map and a
``head`` module that turns that map into logits. Training, Grad-CAM, the out-of-domain
detector and ONNX export only rely on the methods defined here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from mpoxscan.data.preprocessing import Preprocessing
from mpoxscan.errors import MpoxscanError


class WeightsError(MpoxscanError, ValueError):
    """A pretrained weights file is missing, of an unknown kind or does not fit the model."""

    code = "bad_weights"


def assign_parameter(
    param: nn.Parameter, value: np.ndarray | torch.Tensor, *, source: Path, layer: str
) -> None:
    """Copy a weight array into ``param``, checking its shape.

    Args:
        param: the parameter to overwrite (its dtype is kept).
        value: the new values, already in PyTorch's layout.
        source: the file they come from (named in errors).
        layer: the layer they belong to (named in errors).

    Raises:
        WeightsError: if the shapes differ.
    """
    if isinstance(value, torch.Tensor):
        tensor = value.detach().to(param.dtype)
    else:
        tensor = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)).to(param.dtype)
    if tensor.shape != param.shape:
        raise WeightsError(
            f"{source}: layer {layer} holds shape {tuple(tensor.shape)} where the model needs "
            f"{tuple(param.shape)}; check that the file was made for this architecture"
        )
    with torch.no_grad():
        param.copy_(tensor)


class ChannelsLastFlatten(nn.Module):
    """Flatten ``(N, C, H, W)`` in ``(H, W, C)`` order, as Keras ``Flatten`` does.

    Keeping Keras' order means a Keras ``Dense`` kernel after ``Flatten`` loads unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).flatten(1)


class MpoxNet(nn.Module):
    """Base class of every registered model.

    Subclasses set ``self.head`` (the modules after the feature map), ``self.cam_layer`` (the
    module whose output :meth:`forward_features` returns) and implement
    :meth:`forward_features` and :meth:`forward_head`.

    Attributes:
        architecture: the registry name the model was built under.
        num_outputs: number of logits (1 for binary screening).
        preprocessing: the input normalisation this model's weights expect.
    """

    architecture: str = ""
    head: nn.Module
    cam_layer: nn.Module
    #: Backbone blocks that :meth:`forward_until` / :meth:`forward_from` split at; 0 when the
    #: model cannot be split there (partial fine-tuning needs a model with blocks).
    num_blocks: int = 0

    def __init__(self, num_outputs: int, preprocessing: Preprocessing):
        super().__init__()
        self.num_outputs = num_outputs
        self.preprocessing = preprocessing

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the last convolutional feature map ``(N, C, H, W)``."""
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Turn a feature map into ``(N, num_outputs)`` logits (no sigmoid or softmax)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_until(self, x: torch.Tensor, block: int) -> torch.Tensor:
        """Return the input of backbone block ``block``: the stem and the blocks before it.

        ``forward_from(forward_until(x, k), k)`` equals ``forward_features(x)``.

        Raises:
            NotImplementedError: the model has no blocks to split at (``num_blocks == 0``).
        """
        raise NotImplementedError(f"{self.architecture or type(self).__name__} has no blocks")

    def forward_from(self, x: torch.Tensor, block: int) -> torch.Tensor:
        """Run blocks ``block`` and on (and what follows them) up to the last feature map."""
        raise NotImplementedError(f"{self.architecture or type(self).__name__} has no blocks")

    def in_blocks_before(self, state_key: str, block: int) -> bool:
        """Whether a ``state_dict`` key belongs to what :meth:`forward_until` runs."""
        raise NotImplementedError(f"{self.architecture or type(self).__name__} has no blocks")

    def freeze_blocks_before(self, block: int) -> None:
        """Freeze what :meth:`forward_until` runs; blocks ``block`` and on stay trainable."""
        raise NotImplementedError(f"{self.architecture or type(self).__name__} has no blocks")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Return global-average-pooled features ``(N, C)``, the out-of-domain detector's input."""
        return self.forward_features(x).mean(dim=(2, 3))

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Yield the parameters of the classification head."""
        yield from self.head.parameters()

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Yield every parameter outside the head, frozen ones included.

        Filter on ``requires_grad`` when building an optimizer.
        """
        head_ids = {id(p) for p in self.head.parameters()}
        yield from (p for p in self.parameters() if id(p) not in head_ids)

    def freeze_backbone(self, trainable_from: str | None = None) -> None:
        """Freeze the backbone, optionally leaving its last layers trainable.

        Args:
            trainable_from: name prefix of the first backbone parameter to keep trainable
                (for example ``"features.21"``); it and every later backbone parameter stay
                trainable. ``None`` freezes the whole backbone.

        Raises:
            ValueError: if no backbone parameter name starts with ``trainable_from``.
        """
        head_ids = {id(p) for p in self.head.parameters()}
        named = [(n, p) for n, p in self.named_parameters() if id(p) not in head_ids]
        start = len(named)
        if trainable_from is not None:
            prefix = trainable_from.rstrip(".") + "."
            matches = [i for i, (n, _) in enumerate(named) if n.startswith(prefix)]
            if not matches:
                raise ValueError(
                    f"No backbone parameter starts with {trainable_from!r}; pass a module name "
                    f"such as {named[-1][0].rsplit('.', 1)[0]!r}"
                )
            start = matches[0]
        for i, (_, param) in enumerate(named):
            param.requires_grad = i >= start

    def unfreeze_backbone(self) -> None:
        """Make every backbone parameter trainable (fine-tuning the whole network)."""
        for param in self.backbone_parameters():
            param.requires_grad = True


class ModelBuilder(Protocol):
    """The signature every registered builder has (``image_size`` already resolved)."""

    def __call__(
        self,
        *,
        num_outputs: int,
        pretrained: bool,
        weights: Path | None,
        dropout: float | None,
        image_size: int,
    ) -> MpoxNet: ...


@dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    Attributes:
        name: the name users type.
        builder: the function :func:`create_model` calls.
        preprocessing: the default input normalisation; a model built with other weights
            records its own in ``model.preprocessing``, which is what inference must use.
        description: one line for ``mpoxscan models`` and the docs.
    """

    name: str
    builder: ModelBuilder
    preprocessing: Preprocessing
    description: str


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    *,
    image_size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    description: str,
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register a model builder under ``name`` (a decorator).

    Args:
        name: the name users type (``"seed-cnn"``).
        image_size: the native input side in pixels.
        mean: per-channel mean on the 0-255 scale (RGB) the default weights expect.
        std: per-channel divisor on the 0-255 scale.
        description: one line describing the model.

    Returns:
        The decorator, which returns the builder unchanged.
    """

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY:
            raise ValueError(f"Model {name!r} is registered twice; give the new one another name")
        prep = Preprocessing(image_size=image_size, mean=mean, std=std)
        _REGISTRY[name] = ModelSpec(name, builder, prep, description)
        return builder

    return decorator


def get_model_spec(name: str) -> ModelSpec:
    """Return the :class:`ModelSpec` registered as ``name``.

    Raises:
        KeyError: if no model has that name; the message lists the valid names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"Unknown model {name!r}; choose one of: {', '.join(list_models())}"
        ) from None


def list_models() -> list[str]:
    """Return the registered model names, sorted."""
    return sorted(_REGISTRY)


def create_model(
    name: str,
    *,
    num_outputs: int,
    pretrained: bool = True,
    weights: Path | str | None = None,
    dropout: float | None = None,
    image_size: int | None = None,
) -> MpoxNet:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`.
        num_outputs: number of logits: 1 for binary screening, the class count otherwise.
        pretrained: start from the model's bundled ImageNet weights where it has them. Use
            ``False`` when a state dict (a bundle) is loaded right after.
        weights: a weights file to start from (VGG16: the Keras notop ``.h5`` or torchvision
            ``.pth``; EfficientNet-Lite: a ``.pth`` state dict of the same variant).
        dropout: dropout before the output layer; ``None`` keeps the model's default.
        image_size: input side in pixels; ``None`` keeps the model's native size.

    Returns:
        The model, with ``model.preprocessing`` set to what its weights expect.

    Raises:
        KeyError: for an unknown name.
        ValueError: for a non-positive ``num_outputs``/``image_size`` or a ``dropout``
            outside ``[0, 1)``.
        WeightsError: when ``weights`` cannot be read or does not fit the model.
    """
    spec = get_model_spec(name)
    if num_outputs < 1:
        raise ValueError(f"num_outputs must be at least 1 (1 for binary), got {num_outputs}")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    model = spec.builder(
        num_outputs=num_outputs,
        pretrained=pretrained,
        weights=Path(weights) if weights is not None else None,
        dropout=dropout,
        image_size=image_size or spec.preprocessing.image_size,
    )
    model.architecture = name
    return model
