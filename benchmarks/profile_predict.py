"""Where the time of batch prediction goes: cProfile of the main thread, decode CPU time.

Run: ``.venv/bin/python benchmarks/profile_predict.py [--images 600]`` after
``benchmarks/make_bundles.py``. The main thread runs ONNX Runtime and writes rows; the decode
thread's CPU time is measured separately (cProfile sees one thread only).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import tempfile
import threading
import time
from pathlib import Path

from _common import WORK_DIR, bundle_dir, machine, write_jpeg_folder
from mpoxscan.inference import batch
from mpoxscan.inference.batch import BatchConfig, LocalEngine, predict_to_file
from mpoxscan.inference.predictor import Predictor


def decode_cpu_seconds(files: list[Path], size: int) -> float:
    """CPU seconds to decode and resize the files in one thread, nothing else running."""
    start = time.thread_time()
    for chunk in batch.chunked(files, 32):
        batch.prepare_batch(chunk, size)
    return time.thread_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--model", default="efficientnet-lite0")
    args = parser.parse_args()
    folder = write_jpeg_folder(WORK_DIR / f"photos-224-{args.images}", args.images)
    files = sorted(folder.iterdir())
    print(f"machine: {machine()}")
    predictor = Predictor.load(bundle_dir(args.model), backend="onnx")
    engine = LocalEngine(predictor, BatchConfig())
    out = Path(tempfile.mkdtemp()) / "results.csv"
    predict_to_file(engine, files[:64], out)  # warm up
    out.unlink()

    profiler = cProfile.Profile()
    cpu, wall = time.process_time(), time.perf_counter()
    profiler.enable()
    summary = predict_to_file(engine, [folder], out)
    profiler.disable()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    shutil.rmtree(out.parent)
    n = summary.predicted + summary.failed
    print(
        f"{n} images in {wall:.2f} s ({n / wall:.1f} img/s); process CPU {cpu:.2f} s "
        f"({1000 * cpu / n:.2f} ms/img, {cpu / wall:.2f} cores busy); "
        f"active threads at the end: {threading.active_count()}"
    )
    decode = decode_cpu_seconds(files, predictor.image_size_)
    print(f"decode + resize alone, one thread: {1000 * decode / len(files):.2f} ms CPU/img")
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(12)
    print("main thread, by own time (wall):")
    print("\n".join(stream.getvalue().splitlines()[6:22]))
    print(f"after: {machine()}")


if __name__ == "__main__":
    main()
