"""How a photo becomes a model input, with Pillow and numpy only.

Kept apart from ``transforms`` (torch and kornia, for training) so that ONNX-only serving and
batch prediction start without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Preprocessing:
    """How a photo becomes a model input.

    Attributes:
        image_size: side of the square input in pixels.
        mean: per-channel value subtracted, on the 0-255 pixel scale (RGB order).
        std: per-channel divisor, on the 0-255 pixel scale.
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def resize_image(img: Image.Image, size: int) -> Image.Image:
    """Resize to ``size x size`` with bilinear filtering (the aspect ratio is not kept).

    Training and serving both call this, so a model sees photos resized the same way.

    Args:
        img: an RGB image.
        size: side of the output in pixels.

    Returns:
        The resized image.
    """
    if img.size == (size, size):
        return img
    return img.resize((size, size), Image.Resampling.BILINEAR)


def to_array(img: Image.Image, prep: Preprocessing) -> np.ndarray:
    """Turn a photo into a normalised float32 ``(3, size, size)`` array, with numpy only.

    The ONNX server uses this; it gives the numbers of
    ``normalize_batch(to_unit_tensor(img, prep.image_size), prep)`` (within 1e-5).

    Args:
        img: an image (converted to RGB when it is not).
        prep: the model's preprocessing.

    Returns:
        The CHW array.
    """
    pixels = np.asarray(resize_image(as_rgb(img), prep.image_size), dtype=np.float32)
    mean = np.asarray(prep.mean, dtype=np.float32)
    std = np.asarray(prep.std, dtype=np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))


def as_rgb(img: Image.Image) -> Image.Image:
    """The image itself when it is RGB, else an RGB copy."""
    return img if img.mode == "RGB" else img.convert("RGB")
