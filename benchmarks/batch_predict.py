"""End-to-end batch prediction throughput: ``mpoxscan predict DIR --out``, decoding included.

Run: ``.venv/bin/python benchmarks/batch_predict.py [--images 600] [--repeats 3]
[--model efficientnet-lite0] [--sweep] [--ort-options] [--ray]`` after
``benchmarks/make_bundles.py``. Parts:

- ``cli`` (always): the command as a user runs it, in a fresh process each time; reports
  the rate the command prints (the run itself) and files / wall time (with start-up).
- ``--sweep``: the library in this process over batch size x worker threads x ONNX Runtime
  threads, to choose the defaults.
- ``--ort-options``: ONNX Runtime session options (thread spinning, graph optimisation).
- ``--big``: phone-sized JPEGs with one or two worker threads.
- ``--ray``: ``--engine ray`` against the single process, and Ray actor layouts.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO_ROOT, WORK_DIR, bundle_dir, machine, write_jpeg_folder
from mpoxscan.inference.batch import BatchConfig, LocalEngine, predict_to_file
from mpoxscan.inference.predictor import Predictor

MPOXSCAN = str(Path(sys.executable).with_name("mpoxscan"))


def run_cli(args: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run ``mpoxscan predict ... --out`` once: (printed images/s, files / wall second)."""
    out = Path(tempfile.mkdtemp()) / "results.csv"
    start = time.perf_counter()
    done = subprocess.run(
        [MPOXSCAN, "predict", *args, "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
        cwd=REPO_ROOT,
    )
    wall = time.perf_counter() - start
    rows = sum(1 for _ in out.open()) - 1
    shutil.rmtree(out.parent)
    text = " ".join(done.stdout.split())
    rate = float(re.search(r"([\d.]+) images/s", text).group(1))
    return rate, rows / wall


def report(name: str, results: list[tuple[float, float]]) -> None:
    runs = [r for r, _ in results]
    walls = [w for _, w in results]
    print(
        f"| {name} | {max(runs):.1f} | {statistics.median(runs):.1f} | "
        f"{max(walls):.1f} | {statistics.median(walls):.1f} |"
    )


def cli_part(model: str, folder: Path, repeats: int) -> None:
    print("\n| command | run img/s best | run img/s median | wall img/s best | wall median |")
    print("|---|---|---|---|---|")
    base = ["--model-dir", str(bundle_dir(model)), str(folder)]
    report("mpoxscan predict DIR --out X.csv", [run_cli(base) for _ in range(repeats)])
    report(
        "same, OMP_NUM_THREADS=1",
        [run_cli(base, {"OMP_NUM_THREADS": "1"}) for _ in range(repeats)],
    )


def library_rate(engine, folder: Path, repeats: int) -> tuple[list[float], list[float]]:
    """Images per second and CPU milliseconds per image (all threads) of repeated runs.

    CPU time per image barely depends on what else the machine runs, so
    ``2000 / cpu_ms`` bounds what 2 idle cores would do.
    """
    rates, cpu_ms = [], []
    for _ in range(repeats):
        out = Path(tempfile.mkdtemp()) / "results.csv"
        cpu = time.process_time()
        summary = predict_to_file(engine, [folder], out)
        cpu_ms.append(1000 * (time.process_time() - cpu) / (summary.predicted + summary.failed))
        rates.append(summary.images_per_second)
        shutil.rmtree(out.parent)
    return rates, cpu_ms


def rate_cells(rates: list[float], cpu_ms: list[float]) -> str:
    best_cpu = min(cpu_ms)
    return (
        f"{max(rates):.1f} | {statistics.median(rates):.1f} | {best_cpu:.2f} | "
        f"{2000 / best_cpu:.0f}"
    )


RATE_HEADER = "img/s best | img/s median | CPU ms/img (best) | 2-core bound img/s"


def sweep_part(model: str, folder: Path, repeats: int) -> None:
    print(f"\n| batch | workers | ORT threads | {RATE_HEADER} |")
    print("|---|---|---|---|---|---|---|")
    for threads in (2, 1):
        predictor = Predictor.load(bundle_dir(model), backend="onnx", threads=threads)
        for batch, workers in itertools.product((8, 16, 32, 64), (1, 2)):
            engine = LocalEngine(predictor, BatchConfig(batch_size=batch, workers=workers))
            cells = rate_cells(*library_rate(engine, folder, repeats))
            print(f"| {batch} | {workers} | {threads} | {cells} |")


def ort_options_part(model: str, folder: Path, repeats: int) -> None:
    import onnxruntime as ort

    variants = {
        "as shipped (ENABLE_ALL, no spinning)": {},
        "spinning on": {"spin": "1"},
        "ENABLE_EXTENDED": {"level": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED},
        "ENABLE_BASIC": {"level": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC},
    }
    print(f"\n| ONNX Runtime session | {RATE_HEADER} |")
    print("|---|---|---|---|---|")
    for name, change in variants.items():
        predictor = Predictor.load(bundle_dir(model), backend="onnx", threads=2)
        options = ort.SessionOptions()
        options.graph_optimization_level = change.get(
            "level", ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        )
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = 2
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", change.get("spin", "0"))
        # Swap the session for one with these options (benchmark only).
        predictor.onnx_model_.session_ = ort.InferenceSession(
            str(bundle_dir(model) / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        cells = rate_cells(*library_rate(LocalEngine(predictor), folder, repeats))
        print(f"| {name} | {cells} |")


def big_photos_part(model: str, repeats: int) -> None:
    from jpeg_draft import write_big_jpegs

    folder = WORK_DIR / "big-jpegs"
    count = len(write_big_jpegs(folder))
    print(f"\n{count} phone-sized JPEGs (1600x1200 to 4000x3000) in {folder}")
    print(f"| workers | {RATE_HEADER} |")
    print("|---|---|---|---|---|")
    predictor = Predictor.load(bundle_dir(model), backend="onnx")
    for workers in (1, 2):
        engine = LocalEngine(predictor, BatchConfig(workers=workers))
        print(f"| {workers} | {rate_cells(*library_rate(engine, folder, repeats))} |")


def ray_part(model: str, folder: Path, repeats: int) -> None:
    from mpoxscan.inference.ray_engine import RayConfig, RayEngine

    print("\n| engine | run img/s best | run img/s median | wall img/s best | wall median |")
    print("|---|---|---|---|---|")
    base = ["--model-dir", str(bundle_dir(model)), str(folder)]
    report("local (single process)", [run_cli(base) for _ in range(repeats)])
    report("--engine ray", [run_cli([*base, "--engine", "ray"]) for _ in range(repeats)])
    print("\n| Ray layout (in one process, Ray start-up included) | img/s best | img/s median |")
    print("|---|---|---|")
    for actors, cpus in ((2, 1), (1, 2)):
        engine = RayEngine.load(
            bundle_dir(model), BatchConfig(), RayConfig(actors=actors, cpus_per_actor=cpus)
        )
        rates, _ = library_rate(engine, folder, repeats)  # the actors' CPU is not ours
        print(
            f"| {actors} actor(s) x {cpus} ORT thread(s) | {max(rates):.1f} | "
            f"{statistics.median(rates):.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--ort-options", action="store_true")
    parser.add_argument("--ray", action="store_true")
    parser.add_argument("--big", action="store_true", help="phone-sized photos, worker threads")
    parser.add_argument("--skip-cli", action="store_true")
    args = parser.parse_args()
    folder = write_jpeg_folder(WORK_DIR / f"photos-224-{args.images}", args.images)
    print(f"machine: {machine()}")
    print(f"{args.images} generated 224x224 JPEGs in {folder}, model {args.model}")
    if not args.skip_cli:
        cli_part(args.model, folder, args.repeats)
    if args.sweep:
        sweep_part(args.model, folder, args.repeats)
    if args.ort_options:
        ort_options_part(args.model, folder, args.repeats)
    if args.big:
        big_photos_part(args.model, args.repeats)
    if args.ray:
        ray_part(args.model, folder, args.repeats)
    print(f"\nafter: {machine()}")


if __name__ == "__main__":
    main()
