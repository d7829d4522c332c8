"""Torch-side preprocessing and training augmentation (torch and kornia).

The Pillow/numpy half that serving needs is in ``preprocessing``.
"""

from __future__ import annotations

from dataclasses import dataclass

import kornia.augmentation as K
import numpy as np
import torch
from PIL import Image
from torch import nn

from mpoxscan.data.preprocessing import Preprocessing, as_rgb, resize_image, to_array


def to_unit_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """Resize and convert to a float32 ``(3, size, size)`` tensor with values in [0, 1].

    Args:
        img: an image (converted to RGB when it is not).
        size: side of the output in pixels.

    Returns:
        The CHW tensor.
    """
    pixels = np.asarray(resize_image(as_rgb(img), size), dtype=np.uint8)
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255.0)


def normalize_batch(batch01: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """Normalise [0, 1] images as the model expects: ``(x * 255 - mean) / std``.

    Args:
        batch01: a ``(3, H, W)`` image or ``(N, 3, H, W)`` batch with values in [0, 1].
        prep: the model's preprocessing.

    Returns:
        A new tensor of the same shape.
    """
    mean = torch.tensor(prep.mean, dtype=batch01.dtype, device=batch01.device).view(3, 1, 1)
    std = torch.tensor(prep.std, dtype=batch01.dtype, device=batch01.device).view(3, 1, 1)
    return (batch01 * 255.0 - mean) / std


def to_tensor(img: Image.Image, prep: Preprocessing) -> torch.Tensor:
    """Like ``to_array`` but returns a torch tensor (the same numbers).

    Args:
        img: an image (converted to RGB when it is not).
        prep: the model's preprocessing.

    Returns:
        A float32 ``(3, size, size)`` tensor.
    """
    return torch.from_numpy(to_array(img, prep))


@dataclass
class AugmentConfig:
    """Random changes applied to training photos (on [0, 1] batches, before normalising).

    The defaults are mild: lesion colour and texture carry the diagnosis, so strong colour or
    geometric changes would teach the model to ignore them.

    Attributes:
        hflip: probability of a left-right flip (lesions have no handedness).
        vflip: probability of an upside-down flip; 0 because body photos (faces, hands) have a
            natural up and the test photos are upright.
        rotation: maximum rotation in degrees either way (hand-held photos are a little tilted).
        crop_scale: range of the area kept by the random resized crop; a high lower bound so
            lesions near the edge are rarely cut out.
        brightness: colour-jitter brightness factor range, ``1 ± brightness`` (lighting varies).
        contrast: colour-jitter contrast range, ``1 ± contrast``.
        saturation: colour-jitter saturation range, ``1 ± saturation``.
        hue: colour-jitter hue shift, in turns; small because redness is a clinical sign.
    """

    hflip: float = 0.5
    vflip: float = 0.0
    rotation: float = 15.0
    crop_scale: tuple[float, float] = (0.8, 1.0)
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.02


def build_augmentation(cfg: AugmentConfig, image_size: int | Preprocessing) -> nn.Module:
    """Build the training augmentation as a kornia module.

    The module takes a float ``(N, 3, H, W)`` batch in [0, 1] and returns an augmented batch of
    ``(N, 3, image_size, image_size)`` in [0, 1]; normalise afterwards with
    ``normalize_batch``. Its randomness comes from torch's generator, so
    ``torch.manual_seed`` makes it reproducible.

    Args:
        cfg: what to vary.
        image_size: the model's input side, or its ``Preprocessing``.

    Returns:
        A kornia ``AugmentationSequential`` (an ``nn.Module``).
    """
    size = image_size.image_size if isinstance(image_size, Preprocessing) else image_size
    steps: list[nn.Module] = []
    if cfg.crop_scale != (1.0, 1.0):
        steps.append(K.RandomResizedCrop((size, size), scale=cfg.crop_scale))
    else:
        steps.append(K.Resize((size, size)))
    if cfg.hflip > 0:
        steps.append(K.RandomHorizontalFlip(p=cfg.hflip))
    if cfg.vflip > 0:
        steps.append(K.RandomVerticalFlip(p=cfg.vflip))
    if cfg.rotation > 0:
        # Reflection padding instead of black corners, which a model could learn as a cue.
        steps.append(K.RandomAffine(degrees=cfg.rotation, padding_mode="reflection", p=1.0))
    if any((cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)):
        steps.append(
            K.ColorJitter(
                brightness=cfg.brightness,
                contrast=cfg.contrast,
                saturation=cfg.saturation,
                hue=cfg.hue,
                p=1.0,
            )
        )
    return K.AugmentationSequential(*steps)
