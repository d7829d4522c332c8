"""Is a batched model call cheaper than concurrent single ones? ``Predictor.assess_many`` in one
process, as the web server runs it (one BLAS thread), without HTTP.

For each layout (threads calling the predictor at once x photos per call) it prints photos/s
and CPU time per photo of the whole process; the results page is ``benchmarks/speed.md`` (d)::

    .venv/bin/python benchmarks/assess_batching.py --photos-dir ../shared/data/msld-v1
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image
from threadpoolctl import threadpool_limits

from _common import machine
from mpoxscan.inference.predictor import Predictor

LAYOUTS = ((1, 1), (2, 1), (1, 8), (2, 8))


def run(predictor: Predictor, photos: list[Image.Image], threads: int, batch: int, total: int):
    """``(photos/s, CPU ms per photo)`` for ``total`` photos in calls of ``batch``."""
    calls = [[photos[(i + j) % len(photos)] for j in range(batch)] for i in range(0, total, batch)]
    started, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(predictor.assess_many, calls))
    wall = time.perf_counter() - started
    done = len(calls) * batch
    return done / wall, (time.process_time() - cpu) * 1000 / done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("models/default"))
    parser.add_argument("--photos-dir", type=Path, required=True)
    parser.add_argument("--total", type=int, default=192, help="photos per measurement")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    threadpool_limits(limits=1, user_api="blas")  # as `mpoxscan serve` does
    predictor = Predictor.load(args.model_dir)
    paths = sorted(p for p in args.photos_dir.rglob("*") if p.suffix.lower() in {".jpg", ".png"})
    photos = [Image.open(p).convert("RGB") for p in paths[:64]]
    predictor.assess_many(photos[:8])  # first-call set-up of the batch-8 shape
    print(machine())
    print("| threads | photos per call | photos/s | CPU ms per photo |")
    print("|---|---|---|---|")
    for _ in range(args.repeats):
        for threads, batch in LAYOUTS:
            rate, cpu_ms = run(predictor, photos, threads, batch, args.total)
            print(f"| {threads} | {batch} | {rate:.0f} | {cpu_ms:.1f} |")
    print(machine())


if __name__ == "__main__":
    main()
