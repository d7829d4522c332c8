"""OnnxForward: the frozen backbone in ONNX Runtime gives PyTorch's feature maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mpoxscan.models.onnx_forward import OnnxForward
from mpoxscan.models.region_embedding import RegionEmbedder
from mpoxscan.models.registry import create_model


@pytest.mark.parametrize(("name", "size"), [("efficientnet-lite0", 224), ("seed-cnn", 64)])
def test_feature_maps_equal_pytorch(name, size):
    model = create_model(name, num_outputs=1, pretrained=name != "seed-cnn").eval()
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.forward_features(x)
    got = OnnxForward(model, size)(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_region_embedder_switches_engine_for_large_batches_with_equal_vectors(monkeypatch):
    from mpoxscan.models import region_embedding

    rng = np.random.default_rng(1)
    photos = [Image.fromarray(rng.integers(0, 255, (96, 128, 3), np.uint8)) for _ in range(4)]
    eager = RegionEmbedder()(photos)
    monkeypatch.setattr(region_embedding, "MIN_PASSES", 4)
    fast_embedder = RegionEmbedder()
    fast = fast_embedder(photos)
    assert fast_embedder.fast_ is not None
    np.testing.assert_allclose(fast, eager, atol=1e-4)
