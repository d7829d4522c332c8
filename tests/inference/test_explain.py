"""Grad-CAM finds what raised the score; overlays keep the photo's size and colours."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mpoxscan.inference.explain import grad_cam, heatmap_png_bytes, overlay_heatmap

SIZE = 64


class BrightSpotNet(nn.Module):
    """A tiny MpoxNet-like model whose logit grows (or shrinks) with bright patches.

    ``forward_features`` is an 8x8 map of local brightness above mid-grey; the head sums it,
    so the logit depends only on where the photo is bright.
    """

    def __init__(self, sign: float = 1.0):
        super().__init__()
        self.detect = nn.Conv2d(3, 1, kernel_size=8, stride=8)
        with torch.no_grad():
            self.detect.weight.fill_(1.0 / (3 * 64))
            self.detect.bias.fill_(-0.5)
        self.cam_layer = nn.ReLU()
        self.sign = sign

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam_layer(self.detect(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.sign * features.sum(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def photo_with_square(top: int, left: int) -> torch.Tensor:
    """A dark [0, 1] photo with one bright 16x16 square."""
    x = torch.full((1, 3, SIZE, SIZE), 0.1)
    x[:, :, top : top + 16, left : left + 16] = 1.0
    return x


@pytest.mark.parametrize(("top", "left"), [(0, 0), (48, 48), (0, 40)])
def test_heat_is_highest_where_the_evidence_is(top, left):
    size = (60, 90)  # a non-square photo: rows and columns must not swap
    heat = grad_cam(BrightSpotNet(), photo_with_square(top, left), size=size)
    assert heat.shape == (1, *size)
    assert heat.max() == pytest.approx(1.0) and heat.min() >= 0.0
    row, col = np.unravel_index(np.argmax(heat[0]), size)
    assert top / SIZE <= row / size[0] < (top + 16) / SIZE
    assert left / SIZE <= col / size[1] < (left + 16) / SIZE
    rows = slice(round(top / SIZE * size[0]), round((top + 16) / SIZE * size[0]))
    cols = slice(round(left / SIZE * size[1]), round((left + 16) / SIZE * size[1]))
    inside = np.zeros(size, dtype=bool)
    inside[rows, cols] = True
    assert heat[0][inside].mean() > 10 * heat[0][~inside].mean()


def test_evidence_against_the_class_gives_an_empty_map():
    heat = grad_cam(BrightSpotNet(sign=-1.0), photo_with_square(0, 0))
    assert heat.shape == (1, SIZE, SIZE)
    assert np.all(heat == 0.0)


def test_each_photo_of_a_batch_gets_its_own_map():
    batch = torch.cat([photo_with_square(0, 0), photo_with_square(48, 48)])
    heat = grad_cam(BrightSpotNet(), batch)
    assert heat[0, :16, :16].mean() > heat[0, 48:, 48:].mean()
    assert heat[1, 48:, 48:].mean() > heat[1, :16, :16].mean()


def test_overlay_keeps_size_and_blends_by_alpha():
    photo = Image.new("RGB", (90, 60), (10, 200, 30))
    heat = np.linspace(0, 1, 30 * 45, dtype=np.float32).reshape(30, 45)
    assert overlay_heatmap(photo, heat, alpha=0.0).tobytes() == photo.tobytes()
    full = np.asarray(overlay_heatmap(photo, heat, alpha=1.0), dtype=int)
    assert full.shape == (60, 90, 3)
    assert not np.array_equal(full[0, 0], full[-1, -1])  # cold and hot ends differ in colour
    half = np.asarray(overlay_heatmap(photo, heat, alpha=0.5), dtype=int)
    expected = (np.asarray(photo, dtype=float) + full) / 2
    assert np.abs(half - expected).max() <= 1


def test_overlay_refuses_bad_arguments():
    photo = Image.new("RGB", (8, 8))
    with pytest.raises(ValueError, match="alpha"):
        overlay_heatmap(photo, np.zeros((8, 8)), alpha=1.5)
    with pytest.raises(ValueError, match="heatmap"):
        overlay_heatmap(photo, np.zeros((8, 8, 3)))


def test_png_bytes_decode_to_an_overlay_of_the_photo_size():
    photo = Image.new("RGB", (40, 30), (120, 80, 60))
    data = heatmap_png_bytes(photo, np.ones((30, 40), np.float32))
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == "PNG" and decoded.size == (40, 30) and decoded.mode == "RGB"
