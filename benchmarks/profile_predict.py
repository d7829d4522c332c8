"""Where the CPU of ``mpoxscan predict`` goes, step by step, in milliseconds per photo.

Run from the repository root, on an idle machine (the load is printed)::

    .venv/bin/python benchmarks/profile_predict.py --bundle models/default --folder DIR

Each step of the local engine (``inference/batch.py``) runs alone in this thread over the
folder's photos, and its thread CPU time (``time.thread_time``) is divided by the photos:
reading (``read_photo``: file, decode at the reduced DCT scale, EXIF, RGB), the photo checks
(``check_photo``: grayscale, exposure, Laplacian), the model input (``photo_pixels`` into the
float32 batch), the model (ONNX Runtime with one intra-op thread, so its work is in this
thread; batches of 8), ``Predictor.judge`` (the out-of-domain nearest-neighbour distance, the
no-lesion head, the predictions) and the rows written as CSV. Their sum is the CPU a photo
needs whatever the threads, and ``2000 / sum`` the most 2 idle cores could do. The model is
also timed with 2 intra-op threads (wall time per photo, what one batch waits for).

For the threads of the real command, sample it with py-spy (not a project dependency)::

    py-spy record --nonblocking --threads -r 200 -f raw -o spy.txt -- \\
        mpoxscan predict --model-dir models/default DIR --out X.csv
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from _common import machine
from mpoxscan.data.images import IMAGE_SUFFIXES
from mpoxscan.data.photos import photo_pixels, read_photo
from mpoxscan.inference.batch import BATCH_SIZE, _Writer, prediction_rows, prepare_batch
from mpoxscan.inference.predictor import Predictor
from mpoxscan.inference.quality import check_photo


def per_photo(step: Callable[[], Any], photos: int) -> tuple[Any, float, float]:
    """Run ``step`` once: its result, thread CPU ms and wall ms per photo."""
    cpu, wall = time.thread_time(), time.perf_counter()
    result = step()
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    return result, 1000 * cpu / photos, 1000 * wall / photos


def batches(items: list[Any], size: int = BATCH_SIZE) -> list[list[Any]]:
    """``items`` in consecutive lists of ``size``."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def profile(bundle: Path, files: list[Path]) -> list[tuple[str, float, float]]:
    """``(step, CPU ms/photo, wall ms/photo)`` of each step of the local engine."""
    single = Predictor.load(bundle, backend="onnx", threads=1)
    double = Predictor.load(bundle, backend="onnx", threads=2)
    size, quality, n = single.image_size_, single.quality, len(files)
    steps = []
    photos, cpu, wall = per_photo(lambda: [read_photo(path, size) for path in files], n)
    steps.append(("read_photo (file, reduced decode, EXIF, RGB)", cpu, wall))
    _, cpu, wall = per_photo(lambda: [check_photo(photo, quality) for photo in photos], n)
    steps.append(("check_photo (size, exposure, sharpness)", cpu, wall))

    def pixels_of(chunk: list[Any]) -> np.ndarray:
        pixels = np.empty((len(chunk), 3, size, size), dtype=np.float32)
        for i, photo in enumerate(chunk):
            pixels[i] = photo_pixels(photo, size).transpose(2, 0, 1)
        return pixels

    inputs, cpu, wall = per_photo(lambda: [pixels_of(chunk) for chunk in batches(photos)], n)
    steps.append(("photo_pixels into the float32 batch", cpu, wall))
    single.predict_pixels(inputs[0])
    double.predict_pixels(inputs[0])
    outputs, cpu, wall = per_photo(lambda: [single.predict_pixels(x) for x in inputs], n)
    steps.append(("model, batch 8, 1 ONNX Runtime thread", cpu, wall))
    _, cpu, wall = per_photo(lambda: [single.judge(*output) for output in outputs], n)
    steps.append(("judge (out-of-domain kNN, no-lesion head, predictions)", cpu, wall))
    prepared = [prepare_batch(chunk, size, quality) for chunk in batches(files)]
    rows = [prediction_rows(single, batch) for batch in prepared]
    with tempfile.TemporaryDirectory() as work:
        writer = _Writer(Path(work) / "rows.csv", "csv", single.classes_)
        _, cpu, wall = per_photo(lambda: [writer.write(chunk) for chunk in rows], n)
        writer.close()
    steps.append(("rows written as CSV", cpu, wall))
    _, cpu, wall = per_photo(lambda: [double.predict_pixels(x) for x in inputs], n)
    steps.append(("(model, batch 8, 2 threads: wall is what a batch waits)", cpu, wall))
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/default"))
    parser.add_argument("--folder", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=600, help="photos at most")
    args = parser.parse_args()
    files = sorted(path for path in args.folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)[
        : args.limit
    ]
    print(f"before: {machine()}; {len(files)} photos of {args.folder}")
    steps = profile(args.bundle, files)
    print("| step | CPU ms/photo | wall ms/photo |")
    print("|---|---|---|")
    for name, cpu, wall in steps:
        print(f"| {name} | {cpu:.2f} | {wall:.2f} |")
    total = sum(cpu for name, cpu, _ in steps if not name.startswith("("))
    print(f"| **sum (one thread)** | **{total:.2f}** | 2-core bound {2000 / total:.0f} photos/s |")
    print(f"after: {machine()}")


if __name__ == "__main__":
    main()
