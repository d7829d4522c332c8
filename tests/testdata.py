"""Test data the tests make themselves: lesion-like photos, datasets in both layouts, bundles.

A plain module (not ``conftest``) so that any test can import it by name: pytest loads every
``conftest.py`` under the same module name, so ``from conftest import ...`` is ambiguous.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO_ROOT = Path(__file__).resolve().parents[1]
MSLD_DIR = Path(os.environ.get("MPOXSCAN_MSLD_DIR", REPO_ROOT.parent / "shared/data/msld-v1"))

POSITIVE_CLASS = "Monkey Pox"
NEGATIVE_CLASS = "Others"


def make_lesion_photo(positive: bool, seed: int, size: int = 96) -> Image.Image:
    """Draw a skin-coloured photo with lesions; the two classes differ in a learnable way.

    Positive photos carry many small dark-centred pustules, negative ones a few large pale
    patches, each on a randomly tinted skin background.
    """
    rng = np.random.default_rng(seed)
    img = _skin_photo(rng, size)
    draw = ImageDraw.Draw(img)
    if positive:
        for _ in range(int(rng.integers(8, 14))):
            x, y = rng.integers(4, size - 4, 2)
            r = int(rng.integers(2, 5))
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(200, 60, 60))
            draw.ellipse([x - 1, y - 1, x + 1, y + 1], fill=(60, 20, 20))
    else:
        for _ in range(int(rng.integers(1, 3))):
            x, y = rng.integers(10, size - 10, 2)
            r = int(rng.integers(8, 14))
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(240, 200, 190))
    return img


def make_healthy_skin_photo(seed: int, size: int = 96) -> Image.Image:
    """Draw a skin-coloured photo without any lesion (the background of
    :func:`make_lesion_photo`)."""
    return _skin_photo(np.random.default_rng(seed), size)


def _skin_photo(rng: np.random.Generator, size: int) -> Image.Image:
    """A randomly tinted, unevenly lit patch of skin."""
    skin = rng.integers([150, 100, 80], [235, 180, 150])
    noise = rng.normal(0, 6, (size, size, 3))
    # A random lighting gradient and blotches make every photo distinct to a perceptual hash,
    # as real photos of different patients are.
    yy, xx = np.mgrid[0:size, 0:size] / size
    gx, gy = rng.uniform(-100, 100, 2)
    light = gx * (xx - 0.5) + gy * (yy - 0.5)
    for _ in range(4):
        cx, cy, spread = rng.uniform(0, 1, 3)
        light += rng.uniform(-80, 80) * np.exp(
            -((xx - cx) ** 2 + (yy - cy) ** 2) / (0.02 + 0.08 * spread)
        )
    light = light[..., None]
    pixels = np.clip(skin + noise + light, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def write_class_folder(
    folder: Path, positive: bool, patients: int, photos: int, seed: int, first_patient: int = 0
) -> None:
    """Write ``patients`` x ``photos`` JPEGs named like MSLD files (``P3_1.jpg``)."""
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "P" if positive else "N"
    for patient in range(first_patient, first_patient + patients):
        for photo in range(1, photos + 1):
            img = make_lesion_photo(positive, seed=seed * 10_000 + patient * 100 + photo)
            img.save(folder / f"{prefix}{patient}_{photo}.jpg", quality=92)


def make_unsplit_dataset(root: Path, patients: int = 12, photos: int = 2, seed: int = 0) -> Path:
    """An MSLD-style folder: ``root/Monkey Pox/*.jpg`` and ``root/Others/*.jpg``."""
    write_class_folder(root / POSITIVE_CLASS, True, patients, photos, seed)
    write_class_folder(root / NEGATIVE_CLASS, False, patients, photos, seed + 1)
    return root


def make_presplit_dataset(root: Path, seed: int = 0) -> Path:
    """A tutorial-style folder: ``root/Train``, ``root/Val``, ``root/Test``, a folder per class."""
    first = 0  # patients are numbered on across splits: no patient in two of them
    for offset, (split, patients) in enumerate((("Train", 8), ("Val", 3), ("Test", 3))):
        for positive, name in ((True, POSITIVE_CLASS), (False, NEGATIVE_CLASS)):
            write_class_folder(
                root / split / name,
                positive,
                patients,
                2,
                seed + 10 * offset + (not positive),
                first,
            )
        first += patients
    return root


def train_tiny_bundle(data_dir: Path, out_dir: Path, model: str = "efficientnet-lite0", **train):
    """Train a real (small, fast) bundle on generated photos; returns the TrainResult."""
    from mpoxscan.training.config import DataConfig, ModelConfig, TrainConfig
    from mpoxscan.training.train import train_bundle

    image_size = {"seed-cnn": 96, "vgg16": 32}.get(model, 64)
    train = {"epochs": 2, "batch_size": 8, "head_lr": 3e-3, **train}
    return train_bundle(
        DataConfig(data_dir=str(data_dir)),
        ModelConfig(name=model, image_size=image_size, pretrained=model != "vgg16"),
        TrainConfig(**train),
        out_dir,
        command="pytest",
        show_progress=False,
    )
