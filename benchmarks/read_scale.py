"""Choose ``READ_SCALE``: how far may a phone photo be reduced before it is resized to 224?

Run: ``.venv/bin/python benchmarks/read_scale.py`` (options: ``--bundle``, ``--data``).

Every MSLD photo (224x224) is blown up to phone sizes (bicubic, light sensor-like noise, JPEG
quality 90) and read with :func:`mpoxscan.data.photos.read_photo` at ``scale`` 1, 2 and 4, and
with a full decode (what every path did before). For each it prints the decode + resize CPU
time per photo, the largest and mean probability difference to the full decode, the photos
whose label flips at the bundle's threshold, and the ROC AUC against the labels.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from _common import REPO_ROOT, WORK_DIR, machine
from mpoxscan.data.datasets import scan_dataset
from mpoxscan.data.images import decode_image
from mpoxscan.data.photos import photo_pixels, read_photo
from mpoxscan.data.preprocessing import resize_image
from mpoxscan.inference.predictor import Predictor

SIZES = ((1600, 1200), (4000, 3000))
FULL = 0  # stands for a full decode in the scale loop


def blow_up(source: Path, size: tuple[int, int], target: Path, seed: int) -> Path:
    """A 224x224 photo enlarged to a phone's size, with noise, saved as a JPEG."""
    if not target.exists():
        rng = np.random.default_rng(seed)
        big = np.asarray(Image.open(source).convert("RGB").resize(size, Image.BICUBIC), float)
        big += rng.normal(0.0, 3.0, big.shape)
        Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)).save(target, quality=90)
    return target


def pixels(path: Path, scale: int, size: int) -> tuple[np.ndarray, float]:
    start = time.process_time()
    if scale == FULL:
        array = np.asarray(resize_image(decode_image(path), size))
    else:
        array = photo_pixels(read_photo(path, size, scale=scale), size, scale)
    return array.transpose(2, 0, 1).astype(np.float32), time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path, default=REPO_ROOT / "models" / "default")
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared/data/msld-v1")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    predictor = Predictor.load(args.bundle, backend="onnx", threads=1)
    size = predictor.image_size_
    records = scan_dataset(args.data).records
    labels = np.array([int(r.class_name == predictor.positive_class_) for r in records])
    folder = WORK_DIR / "phone-msld"
    folder.mkdir(parents=True, exist_ok=True)
    print(
        "| photo size | read | CPU ms/photo (median) | max abs dp | mean abs dp | label flips "
        "| ROC AUC |"
    )
    print("|---|---|---|---|---|---|---|")
    for width, height in SIZES:
        paths = [
            blow_up(r.path, (width, height), folder / f"{width}x{height}_{i:04d}.jpg", i)
            for i, r in enumerate(records)
        ]
        reference = None
        for scale in (FULL, 4, 2, 1):
            read = [pixels(p, scale, size) for p in paths]
            batch = np.stack([a for a, _ in read])
            probability = np.concatenate(
                [
                    predictor.predict_pixels(batch[i : i + 32])[0][:, 1]
                    for i in range(0, len(batch), 32)
                ]
            )
            if reference is None:
                reference = probability
            diff = np.abs(probability - reference)
            flips = int(
                ((probability >= predictor.threshold_) != (reference >= predictor.threshold_)).sum()
            )
            name = "full decode" if scale == FULL else f"read_photo scale={scale}"
            print(
                f"| {width}x{height} | {name} | {1000 * statistics.median(t for _, t in read):.1f} "
                f"| {diff.max():.1e} | {diff.mean():.1e} | {flips} / {len(paths)} "
                f"| {roc_auc_score(labels, probability):.4f} |",
                flush=True,
            )
    print(f"after: {machine()}")


if __name__ == "__main__":
    main()
