"""Pretrained features of a photo and of its sub-windows, for finding cropped copies.

The copy finder (``mpoxscan.data.copies``) compares photos by these: a crop of a photo looks
like one of its windows, so the whole of one photo is compared with every window of the other.
All windows come from one forward pass: they are average pools over parts of the backbone's last
feature map, not separate crops.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from mpoxscan.data.preprocessing import to_array
from mpoxscan.models.onnx_forward import MIN_PASSES, OnnxForward
from mpoxscan.models.registry import create_model

#: Windows pooled from a 7 x 7 feature map, as (top, left, height, width) fractions of it:
#: the whole map first, then its four corners at 6/7 and 5/7 of the side (crops of about
#: 75 % and 50 % of the area) and the centre at 5/7.
WINDOWS: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 0.0, 1.0, 1.0),
    *((top, left, 6 / 7, 6 / 7) for top in (0.0, 1 / 7) for left in (0.0, 1 / 7)),
    *((top, left, 5 / 7, 5 / 7) for top in (0.0, 2 / 7) for left in (0.0, 2 / 7)),
    (1 / 7, 1 / 7, 5 / 7, 5 / 7),
)


class RegionEmbedder:
    """Unit-length pooled backbone features of a photo's whole and of its windows.

    Calling it on ``n`` photos returns a float32 ``(n, len(WINDOWS), C)`` array; row 0 of each
    photo is its whole. ``name`` changes whenever the numbers would, so caches key on it.

    Args:
        model_name: a registry model with bundled ImageNet weights.
        batch_size: photos per forward pass.
    """

    def __init__(self, model_name: str = "efficientnet-lite0", batch_size: int = 32):
        self.model_name = model_name
        self.batch_size = batch_size
        self.name = f"{model_name}-windows{len(WINDOWS)}-v1"
        self.model_: torch.nn.Module | None = None
        self.fast_: OnnxForward | None = None

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed photos; returns ``(n, len(WINDOWS), C)`` float32 unit vectors.

        From the first call with at least ``MIN_PASSES`` photos on, the backbone runs in ONNX
        Runtime (several times faster on CPU, same features to about 1e-4). The next batch is
        resized and normalised on a second thread while the backbone runs on this one.
        """
        model = self._model()
        prep = model.preprocessing
        if self.fast_ is None and len(images) >= MIN_PASSES:
            self.fast_ = OnnxForward(model, prep.image_size)
        forward = self.fast_ or model.forward_features
        starts = range(0, len(images), self.batch_size)

        def prepared(start: int) -> np.ndarray:
            chunk = images[start : start + self.batch_size]
            return np.stack([to_array(img, prep) for img in chunk])

        out = []
        with ThreadPoolExecutor(1) as pool:
            ahead = pool.submit(prepared, starts[0]) if starts else None
            for k in range(len(starts)):
                batch = ahead.result()
                ahead = pool.submit(prepared, starts[k + 1]) if k + 1 < len(starts) else None
                with torch.inference_mode():
                    features = forward(torch.from_numpy(batch))
                out.append(pool_windows(features).numpy())
        if not out:
            return np.zeros((0, len(WINDOWS), 0), np.float32)
        return np.concatenate(out).astype(np.float32)

    def _model(self) -> torch.nn.Module:
        if self.model_ is None:
            self.model_ = create_model(self.model_name, num_outputs=1, pretrained=True).eval()
        return self.model_


def pool_windows(features: torch.Tensor) -> torch.Tensor:
    """Average-pool ``(N, C, H, W)`` features over each of ``WINDOWS``; unit length per window.

    Returns:
        ``(N, len(WINDOWS), C)``.
    """
    height, width = features.shape[2:]
    pooled = []
    for top, left, h, w in WINDOWS:
        r0, c0 = round(top * height), round(left * width)
        r1, c1 = r0 + max(1, round(h * height)), c0 + max(1, round(w * width))
        pooled.append(features[:, :, r0:r1, c0:c1].mean(dim=(2, 3)))
    stacked = torch.stack(pooled, dim=1)
    return torch.nn.functional.normalize(stacked, dim=2)
