"""Preprocessing parity (numpy for ONNX serving vs torch for training) and kornia augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mpoxscan.data.preprocessing import Preprocessing, resize_image, to_array
from mpoxscan.data.transforms import (
    AugmentConfig,
    build_augmentation,
    normalize_batch,
    to_tensor,
    to_unit_tensor,
)

PREP = Preprocessing(image_size=40, mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0))
IMAGENET = Preprocessing(image_size=24, mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))


def noisy_photo(width: int = 70, height: int = 50, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def test_resize_image_is_bilinear_to_a_square():
    img = noisy_photo()
    out = resize_image(img, 32)
    assert out.size == (32, 32)
    expected = img.resize((32, 32), Image.Resampling.BILINEAR)
    assert np.array_equal(np.asarray(out), np.asarray(expected))


def test_to_unit_tensor_is_chw_float_in_unit_range():
    img = Image.new("RGB", (30, 20), (255, 0, 51))
    tensor = to_unit_tensor(img, 16)
    assert tensor.shape == (3, 16, 16) and tensor.dtype == torch.float32
    assert torch.allclose(tensor[:, 5, 5], torch.tensor([1.0, 0.0, 0.2]))


def test_normalize_batch_uses_the_0_255_scale():
    white = torch.ones(2, 3, 4, 4)
    out = normalize_batch(white, PREP)
    assert out.shape == white.shape
    assert torch.allclose(out, torch.full_like(white, (255 - 127) / 128))


@pytest.mark.parametrize("prep", [PREP, IMAGENET])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_numpy_and_torch_preprocessing_agree(prep, mode):
    img = noisy_photo(seed=1).convert(mode)
    array = to_array(img, prep)
    assert array.dtype == np.float32 and array.shape == (3, prep.image_size, prep.image_size)
    reference = normalize_batch(to_unit_tensor(img, prep.image_size), prep).numpy()
    np.testing.assert_allclose(array, reference, atol=1e-5, rtol=0)
    assert np.array_equal(to_tensor(img, prep).numpy(), array)


def test_augmentation_keeps_shape_and_range_and_resizes():
    aug = build_augmentation(AugmentConfig(), 32)
    batch = torch.rand(4, 3, 48, 40)
    out = aug(batch)
    assert out.shape == (4, 3, 32, 32)
    assert out.min() >= 0 and out.max() <= 1
    same_size = torch.rand(3, 3, 32, 32)
    assert build_augmentation(AugmentConfig(), PREP)(torch.rand(3, 3, 40, 40)).shape == (
        3,
        3,
        40,
        40,
    )
    assert not torch.allclose(aug(same_size), same_size, atol=1e-3)  # it does change photos


def test_augmentation_is_reproducible_under_manual_seed():
    aug = build_augmentation(AugmentConfig(vflip=0.5), 32)
    batch = torch.rand(4, 3, 32, 32)
    torch.manual_seed(11)
    first = aug(batch)
    torch.manual_seed(11)
    again = aug(batch)
    different = aug(batch)
    assert torch.equal(first, again)
    assert not torch.equal(first, different)


def test_augmentation_can_be_turned_off():
    off = AugmentConfig(
        hflip=0,
        vflip=0,
        rotation=0,
        crop_scale=(1.0, 1.0),
        brightness=0,
        contrast=0,
        saturation=0,
        hue=0,
    )
    batch = torch.rand(2, 3, 32, 32)
    assert torch.allclose(build_augmentation(off, 32)(batch), batch, atol=1e-6)
