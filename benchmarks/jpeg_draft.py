"""Does ``Image.draft`` (JPEG decoding at 1/2, 1/4 or 1/8 size) keep predictions exact?

Run: ``.venv/bin/python benchmarks/jpeg_draft.py`` after ``benchmarks/make_bundles.py``.
Phone-sized JPEGs are decoded (a) fully and resized to 224x224, as ``mpoxscan predict`` does,
and (b) with ``draft`` to the smallest DCT scale still at least ``k x 224`` on each side, then
resized the same way. Prints the pixel and probability differences and the decode times.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from _common import IMAGE_SIZE, WORK_DIR, bundle_dir, machine, make_lesion_photo
from mpoxscan.data.images import decode_image
from mpoxscan.data.preprocessing import resize_image
from mpoxscan.inference.predictor import Predictor

SIZES = ((1600, 1200), (3000, 2250), (4000, 3000))
PHOTOS_PER_SIZE = 16


def write_big_jpegs(folder: Path) -> list[Path]:
    """Generated lesion photos upscaled to phone sizes, with sensor-like noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for width, height in SIZES:
        for i in range(PHOTOS_PER_SIZE):
            path = folder / f"{width}x{height}_{i}.jpg"
            if not path.exists():
                small = make_lesion_photo(i % 2 == 0, seed=1000 + i, size=400)
                big = np.asarray(small.resize((width, height), Image.Resampling.BICUBIC), float)
                big += rng.normal(0, 4, big.shape)
                Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)).save(path, quality=90)
            paths.append(path)
    return paths


def full_pixels(path: Path) -> np.ndarray:
    return np.asarray(resize_image(decode_image(path), IMAGE_SIZE), np.float32)


def draft_pixels(path: Path, factor: int) -> np.ndarray:
    with Image.open(path) as img:
        img.draft("RGB", (factor * IMAGE_SIZE, factor * IMAGE_SIZE))
        upright = ImageOps.exif_transpose(img.convert("RGB"))
    return np.asarray(resize_image(upright, IMAGE_SIZE), np.float32)


def timed(fn, *args) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def main() -> None:
    print(f"machine: {machine()}")
    paths = write_big_jpegs(WORK_DIR / "big-jpegs")
    predictor = Predictor.load(bundle_dir("efficientnet-lite0"), backend="onnx", threads=2)
    full = [timed(full_pixels, p) for p in paths]
    p_full = predictor.predict_pixels(np.stack([f.transpose(2, 0, 1) for f, _ in full]))[0]
    print("| decode | ms/photo (median) | max pixel diff | mean pixel diff | max prob diff |")
    print("|---|---|---|---|---|")
    print(f"| full + resize | {1000 * statistics.median(t for _, t in full):.1f} | 0 | 0 | 0 |")
    for factor in (1, 2, 4):
        draft = [timed(draft_pixels, p, factor) for p in paths]
        pixels = np.stack([d.transpose(2, 0, 1) for d, _ in draft])
        p_draft = predictor.predict_pixels(pixels)[0]
        diff = np.abs(np.stack([d for d, _ in draft]) - np.stack([f for f, _ in full]))
        print(
            f"| draft to >= {factor}x{IMAGE_SIZE} + resize | "
            f"{1000 * statistics.median(t for _, t in draft):.1f} | {diff.max():.0f} | "
            f"{diff.mean():.2f} | {np.abs(p_draft - p_full).max():.1e} |"
        )
    print(f"after: {machine()}")


if __name__ == "__main__":
    main()
