"""The tutorial's small Keras CNN, layer for layer, as a baseline trained from scratch."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mpoxscan.data.preprocessing import Preprocessing
from mpoxscan.models.registry import ChannelsLastFlatten, MpoxNet, register_model

#: (filters, kernel size) of each "valid" convolution; each is followed by ReLU and a 2x2 pool.
SEED_CONVS: tuple[tuple[int, int], ...] = ((16, 3), (32, 3), (64, 2), (128, 2), (32, 2))
HIDDEN_UNITS = 32
NATIVE_SIZE = 224
#: Keras ``ImageDataGenerator(rescale=1/255)``.
RESCALE_MEAN = (0.0, 0.0, 0.0)
RESCALE_STD = (255.0, 255.0, 255.0)


def seed_cnn_map_size(image_size: int) -> int:
    """Side of the map after the last pool (what ``Flatten`` sees) for an input side.

    Raises:
        ValueError: if the input is too small for five conv + pool stages.
    """
    size = image_size
    for _, kernel in SEED_CONVS:
        size = (size - kernel + 1) // 2
        if size < 1:
            raise ValueError(
                f"image_size {image_size} is too small for seed-cnn; use at least 66 pixels"
            )
    return size


class SeedCNN(MpoxNet):
    """Five "valid" conv/ReLU/max-pool stages, Flatten (channels-last), Dense 32, output.

    ``forward_features`` returns the last ReLU's map (before its pool) so Grad-CAM sees the
    finer map; the pool belongs to the head, which keeps the Keras layer order.
    """

    def __init__(self, num_outputs: int, image_size: int, dropout: float):
        prep = Preprocessing(image_size=image_size, mean=RESCALE_MEAN, std=RESCALE_STD)
        super().__init__(num_outputs, prep)
        side = seed_cnn_map_size(image_size)
        layers: list[nn.Module] = []
        in_channels = 3
        for index, (filters, kernel) in enumerate(SEED_CONVS):
            if index > 0:
                layers.append(nn.MaxPool2d(2, 2))
            layers += [nn.Conv2d(in_channels, filters, kernel), nn.ReLU()]
            in_channels = filters
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.MaxPool2d(2, 2),
            ChannelsLastFlatten(),
            nn.Linear(side * side * in_channels, HIDDEN_UNITS),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(HIDDEN_UNITS, num_outputs),
        )
        self.cam_layer = self.features[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def conv_layers(self) -> list[nn.Conv2d]:
        """Return the convolutions in Keras layer order (used by the Keras importer)."""
        return [m for m in self.features if isinstance(m, nn.Conv2d)]

    def dense_layers(self) -> list[nn.Linear]:
        """Return the dense layers in Keras layer order (used by the Keras importer)."""
        return [m for m in self.head if isinstance(m, nn.Linear)]


@register_model(
    "seed-cnn",
    image_size=NATIVE_SIZE,
    mean=RESCALE_MEAN,
    std=RESCALE_STD,
    description="The tutorial's small Keras CNN (5 conv layers), trained from scratch",
)
def build_seed_cnn(
    *,
    num_outputs: int,
    pretrained: bool,
    weights: Path | None,
    dropout: float | None,
    image_size: int,
) -> SeedCNN:
    """Build the seed CNN.

    It has no pretrained weights: ``pretrained`` is ignored. To start from a Keras-trained
    seed CNN, use :func:`mpoxscan.inference.keras_import.import_keras_model`.

    Args:
        num_outputs: number of logits (1 for binary).
        pretrained: ignored.
        weights: must be ``None``.
        dropout: dropout before the output layer (default 0, as in the tutorial).
        image_size: input side in pixels (at least 66).

    Raises:
        ValueError: if ``weights`` is given or ``image_size`` is too small.
    """
    del pretrained  # nothing to load: the tutorial trained this network from scratch
    if weights is not None:
        raise ValueError(
            f"seed-cnn has no pretrained weights to load from {weights}; drop --weights, "
            "or import a Keras-trained model with `mpoxscan import-keras`"
        )
    return SeedCNN(num_outputs, image_size, dropout or 0.0)
