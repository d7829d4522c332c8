"""Shared helpers of the benchmark scripts: generated photos, benchmark bundles, machine info."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Bundles and photo folders the benchmarks make (ignored by git: see benchmarks/.gitignore).
WORK_DIR = Path(os.environ.get("MPOXSCAN_BENCH_DIR", REPO_ROOT / "benchmarks" / "work"))
MODELS = ("efficientnet-lite0", "seed-cnn", "vgg16")
IMAGE_SIZE = 224

# The generated lesion photos of tests/testdata.py: one generator for tests and benchmarks.
sys.path.insert(0, str(REPO_ROOT / "tests"))
from testdata import make_lesion_photo, make_unsplit_dataset  # noqa: E402

__all__ = [
    "IMAGE_SIZE",
    "MODELS",
    "REPO_ROOT",
    "WORK_DIR",
    "bundle_dir",
    "machine",
    "make_lesion_photo",
    "make_unsplit_dataset",
    "write_jpeg_folder",
]


def bundle_dir(model: str) -> Path:
    """Where ``make_bundles.py`` puts the 224x224 bundle of ``model``."""
    return WORK_DIR / "bundles" / model


def write_jpeg_folder(folder: Path, count: int, size: int = IMAGE_SIZE) -> Path:
    """Write ``count`` generated ``size x size`` lesion JPEGs (kept when already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"photo_{i:05d}.jpg"
        if not path.exists():
            make_lesion_photo(i % 2 == 0, seed=i, size=size).save(path, quality=90)
    return folder


def machine() -> str:
    """CPU model, usable cores and load, for the results page."""
    model = platform.processor() or "unknown CPU"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(
            line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{model}, {len(os.sched_getaffinity(0))} usable cores, load average {load}"
