"""Model speed: single-photo latency and batch throughput, PyTorch eager vs ONNX Runtime.

Run: ``.venv/bin/python benchmarks/model_speed.py [--models efficientnet-lite0 ...]
[--repeats 3] [--seconds 4]`` after ``benchmarks/make_bundles.py``. Both backends go through
``Predictor.predict_pixels`` (the inference contract: 0-255 pixels in, probabilities and
embedding out) on random 224x224 pixels, with 2 threads each. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from _common import IMAGE_SIZE, MODELS, bundle_dir, machine
from mpoxscan.inference.predictor import Predictor

BATCH_SIZES = (1, 8, 32)
THREADS = 2


def latencies(predictor: Predictor, seconds: float, min_runs: int = 20) -> list[float]:
    """Seconds per single-photo call, for ``seconds`` (at least ``min_runs`` calls)."""
    pixels = np.random.default_rng(0).uniform(0, 255, (1, 3, IMAGE_SIZE, IMAGE_SIZE))
    pixels = pixels.astype(np.float32)
    for _ in range(3):
        predictor.predict_pixels(pixels)
    times: list[float] = []
    end = time.perf_counter() + seconds
    while len(times) < min_runs or time.perf_counter() < end:
        start = time.perf_counter()
        predictor.predict_pixels(pixels)
        times.append(time.perf_counter() - start)
    return times


def throughput(predictor: Predictor, batch: int, seconds: float) -> float:
    """Photos per second at a batch size, over about ``seconds`` (at least one batch)."""
    pixels = np.random.default_rng(1).uniform(0, 255, (batch, 3, IMAGE_SIZE, IMAGE_SIZE))
    pixels = pixels.astype(np.float32)
    predictor.predict_pixels(pixels)
    runs, start = 0, time.perf_counter()
    while runs < 1 or time.perf_counter() - start < seconds:
        predictor.predict_pixels(pixels)
        runs += 1
    return runs * batch / (time.perf_counter() - start)


def measure(model: str, backend: str, repeats: int, seconds: float) -> dict[str, float]:
    """p50/p99 latency (ms) and best/median throughput per batch size of one model+backend."""
    predictor = Predictor.load(bundle_dir(model), backend=backend, threads=THREADS)
    result: dict[str, float] = {}
    runs = [latencies(predictor, seconds) for _ in range(repeats)]
    # The best repeat: on a shared machine the others carry other people's load.
    best = min(runs, key=statistics.median)
    result["p50_ms"] = 1000 * float(np.percentile(best, 50))
    result["p99_ms"] = 1000 * float(np.percentile(best, 99))
    for batch in BATCH_SIZES:
        rates = [throughput(predictor, batch, seconds) for _ in range(repeats)]
        result[f"b{batch}_best"] = max(rates)
        result[f"b{batch}_median"] = statistics.median(rates)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    print(f"machine: {machine()}; torch {torch.__version__}")
    header = "| model | backend | p50 ms | p99 ms | " + " | ".join(
        f"batch {b} img/s (best / median)" for b in BATCH_SIZES
    )
    print(header + " |")
    print("|" + "---|" * (4 + len(BATCH_SIZES)))
    for model in args.models:
        for backend in ("torch", "onnx"):
            r = measure(model, backend, args.repeats, args.seconds)
            rates = " | ".join(
                f"{r[f'b{b}_best']:.1f} / {r[f'b{b}_median']:.1f}" for b in BATCH_SIZES
            )
            name = "PyTorch eager" if backend == "torch" else "ONNX Runtime"
            print(f"| {model} | {name} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {rates} |")
    print(f"after: {machine()}")


if __name__ == "__main__":
    main()
