"""The tutorial's VGG16 transfer model: VGG16 base, Flatten, Dense 64, Dense 32, output.

The convolutional base is laid out like torchvision's ``vgg16().features`` (the same indices),
so ``features.*`` keys of a torchvision state dict load directly; ImageNet weights come from a
file the user passes (Keras notop ``.h5`` or torchvision ``.pth``), never from the network.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from mpoxscan.data.preprocessing import Preprocessing
from mpoxscan.models.keras_h5 import is_keras_model_file, read_keras_weights
from mpoxscan.models.registry import (
    ChannelsLastFlatten,
    MpoxNet,
    WeightsError,
    assign_parameter,
    register_model,
)

NATIVE_SIZE = 224
#: Output channels of VGG16's five blocks; blocks have 2, 2, 3, 3, 3 convolutions.
VGG16_WIDTHS: tuple[int, ...] = (64, 128, 256, 512, 512)
BLOCK_DEPTHS: tuple[int, ...] = (2, 2, 3, 3, 3)
HIDDEN_UNITS: tuple[int, int] = (64, 32)
#: The tutorial trains block4_conv3 onwards: block1-3 and block4_conv1/2 (9 convs) stay frozen.
FROZEN_CONVS = 9
#: The tutorial's ``ImageDataGenerator(rescale=1/255)``, used when no weights file is given.
RESCALE_MEAN = (0.0, 0.0, 0.0)
RESCALE_STD = (255.0, 255.0, 255.0)
#: Keras ImageNet weights expect caffe inputs: BGR minus these means, unscaled. Our input stays
#: RGB (the first conv's input channels are flipped at load), so the means are in RGB order.
CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)
CAFFE_STD = (1.0, 1.0, 1.0)
TORCHVISION_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
TORCHVISION_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def keras_conv_names() -> list[str]:
    """Return Keras' VGG16 convolution layer names in order (``block1_conv1`` ...)."""
    return [
        f"block{block}_conv{conv}"
        for block, depth in enumerate(BLOCK_DEPTHS, start=1)
        for conv in range(1, depth + 1)
    ]


def vgg16_map_size(image_size: int) -> int:
    """Side of the map after the last pool (what ``Flatten`` sees) for an input side.

    Raises:
        ValueError: if the input is smaller than 32 pixels (five 2x2 pools).
    """
    if image_size < 2 ** len(BLOCK_DEPTHS):
        raise ValueError(f"image_size {image_size} is too small for vgg16; use at least 32 pixels")
    size = image_size
    for _ in BLOCK_DEPTHS:
        size //= 2
    return size


def _vgg_features(widths: tuple[int, ...]) -> nn.Sequential:
    """torchvision's ``features`` layout without its final pool (index 30; no parameters)."""
    layers: list[nn.Module] = []
    in_channels = 3
    for block, (width, depth) in enumerate(zip(widths, BLOCK_DEPTHS, strict=True)):
        if block > 0:
            layers.append(nn.MaxPool2d(2, 2))
        for _ in range(depth):
            # Not in-place: Grad-CAM hooks must see the ReLU output as its own tensor.
            layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU()]
            in_channels = width
    return nn.Sequential(*layers)


class VGG16(MpoxNet):
    """VGG16 base (``features``), max-pool, Flatten (channels-last), Dense 64, Dense 32, output.

    ``forward_features`` returns block5_conv3's ReLU map; block5_pool opens the head, which
    keeps Keras' layer order so a Keras ``Dense`` kernel after ``Flatten`` loads unchanged.
    """

    def __init__(
        self,
        num_outputs: int,
        image_size: int,
        dropout: float,
        widths: tuple[int, ...] = VGG16_WIDTHS,
    ):
        prep = Preprocessing(image_size=image_size, mean=RESCALE_MEAN, std=RESCALE_STD)
        super().__init__(num_outputs, prep)
        side = vgg16_map_size(image_size)
        self.features = _vgg_features(widths)
        self.head = nn.Sequential(
            nn.MaxPool2d(2, 2),
            ChannelsLastFlatten(),
            nn.Linear(side * side * widths[-1], HIDDEN_UNITS[0]),
            nn.ReLU(),
            nn.Linear(HIDDEN_UNITS[0], HIDDEN_UNITS[1]),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(HIDDEN_UNITS[1], num_outputs),
        )
        self.cam_layer = self.features[-1]
        self._init_weights()
        self.freeze_backbone(trainable_from=self.default_trainable_from())

    def _init_weights(self) -> None:
        # torchvision's VGG initialisation: deep plain ReLU stacks need He-scaled weights.
        for conv in self.conv_layers():
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def conv_layers(self) -> list[nn.Conv2d]:
        """Return the 13 convolutions in order (block1_conv1 ... block5_conv3)."""
        return [m for m in self.features if isinstance(m, nn.Conv2d)]

    def dense_layers(self) -> list[nn.Linear]:
        """Return the dense layers in Keras layer order (used by the Keras importer)."""
        return [m for m in self.head if isinstance(m, nn.Linear)]

    def default_trainable_from(self) -> str:
        """Name of the first trainable backbone module in the tutorial's setup (block4_conv3)."""
        conv = self.conv_layers()[FROZEN_CONVS]
        index = next(i for i, m in enumerate(self.features) if m is conv)
        return f"features.{index}"


def _load_keras_notop(model: VGG16, path: Path) -> None:
    if is_keras_model_file(path):
        raise WeightsError(
            f"{path} is a whole saved Keras model, not VGG16 ImageNet weights; import it with "
            "`mpoxscan import-keras` instead of passing it as --weights"
        )
    layers = read_keras_weights(path)
    for index, (name, conv) in enumerate(zip(keras_conv_names(), model.conv_layers(), strict=True)):
        if name not in layers or not {"kernel", "bias"} <= layers[name].keys():
            raise WeightsError(
                f"{path} has no kernel and bias for layer {name}; pass Keras' "
                "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
            )
        kernel = np.transpose(layers[name]["kernel"], (3, 2, 0, 1))  # (kh,kw,in,out) -> torch
        if index == 0:
            # Keras weights were trained on BGR input; our inputs are RGB.
            kernel = kernel[:, ::-1]
        assign_parameter(conv.weight, kernel, source=path, layer=name)
        assign_parameter(conv.bias, layers[name]["bias"], source=path, layer=name)


def _load_torchvision(model: VGG16, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many kinds; its message misleads here
        raise WeightsError(
            f"{path} is neither a Keras .h5 nor a torchvision .pth weights file; pass "
            "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 or vgg16-397923af.pth"
        ) from exc
    if not isinstance(state, dict):
        raise WeightsError(
            f"{path} does not hold a state dict; pass torchvision's vgg16-397923af.pth"
        )
    ours = {f"features.{i}": m for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)}
    feature_keys = {k.rsplit(".", 1)[0] for k in state if k.startswith("features.")}
    if unexpected := sorted(feature_keys - ours.keys()):
        raise WeightsError(
            f"{path} has layers {unexpected} that plain VGG16 lacks (is it vgg16_bn?); pass "
            "torchvision's vgg16-397923af.pth"
        )
    for name, conv in ours.items():
        for kind in ("weight", "bias"):
            if f"{name}.{kind}" not in state:
                raise WeightsError(
                    f"{path} has no {name}.{kind}; pass torchvision's vgg16-397923af.pth"
                )
            assign_parameter(getattr(conv, kind), state[f"{name}.{kind}"], source=path, layer=name)


def load_vgg16_weights(model: VGG16, path: Path) -> Preprocessing:
    """Load ImageNet weights into the convolutional base and set ``model.preprocessing``.

    Args:
        model: the model to fill; its head is left as it is.
        path: Keras' ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5`` (caffe
            preprocessing; the first convolution's input channels are flipped from BGR to RGB)
            or torchvision's ``vgg16-397923af.pth`` (only ``features.*`` keys are used).

    Returns:
        The preprocessing the weights expect (also stored on the model).

    Raises:
        WeightsError: if the file is missing, of another kind, or a layer's shape differs.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"VGG16 weights file {path} not found; check the --weights path")
    if h5py.is_hdf5(path):
        _load_keras_notop(model, path)
        mean, std = CAFFE_MEAN_RGB, CAFFE_STD
    else:
        _load_torchvision(model, path)
        mean, std = TORCHVISION_MEAN, TORCHVISION_STD
    model.preprocessing = Preprocessing(model.preprocessing.image_size, mean, std)
    return model.preprocessing


@register_model(
    "vgg16",
    image_size=NATIVE_SIZE,
    mean=RESCALE_MEAN,
    std=RESCALE_STD,
    description="The tutorial's VGG16 transfer model (base frozen through block4_conv2)",
)
def build_vgg16(
    *,
    num_outputs: int,
    pretrained: bool,
    weights: Path | None,
    dropout: float | None,
    image_size: int,
    widths: tuple[int, ...] = VGG16_WIDTHS,
) -> VGG16:
    """Build the tutorial's VGG16 model, optionally from ImageNet weights in a file.

    block1-3 and block4_conv1/2 start frozen (``requires_grad=False``), as in the tutorial;
    :meth:`VGG16.unfreeze_backbone` releases them.

    Args:
        num_outputs: number of logits (1 for binary).
        pretrained: without ``weights``, only decides whether to warn that the base starts
            from random weights (mpoxscan never downloads them).
        weights: a VGG16 ImageNet weights file, see :func:`load_vgg16_weights`.
        dropout: dropout before the output layer (default 0).
        image_size: input side in pixels (at least 32); the Flatten size follows from it.
        widths: block output channels; only tests change it (a smaller network, same layout).

    Raises:
        WeightsError: if ``weights`` cannot be loaded.
    """
    model = VGG16(num_outputs, image_size, dropout or 0.0, widths)
    if weights is not None:
        load_vgg16_weights(model, weights)
    elif pretrained:
        warnings.warn(
            "vgg16 starts from random weights: mpoxscan does not download ImageNet weights. "
            "Pass --weights vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 (Keras) or "
            "vgg16-397923af.pth (torchvision) to start from ImageNet.",
            UserWarning,
            stacklevel=3,
        )
    return model
