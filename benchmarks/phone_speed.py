"""Phone photos at the speed of the hardware: the issue 14 targets, fp32 against int8.

Run from the repository root (the load average is printed beside every number, because a
shared machine makes timings noisy)::

    .venv/bin/python benchmarks/phone_speed.py --bundle models/default \\
        --int8-bundle /tmp/int8-bundle [--many 5000] [--profile]

Photos: the MSLD photos as they are (224x224 JPEGs, 600 files by hard links) and blown up to
1600x1200, 3000x2250 and 4000x3000 JPEGs (quality 90, light sensor-like noise) and 4000x3000
HEIC, ``--per-size`` of each written once under ``$MPOXSCAN_BENCH_DIR/phone`` (default
``benchmarks/work/phone``), and hard-linked ``--files`` times in all into the folder that is
timed (so a run lasts long enough to time; the page cache serves every read either way). For
each bundle it measures:

- ``mpoxscan predict --model-dir B DIR --out X.csv`` as a subprocess: the rate the command
  prints (photo checks included), its wall time and peak RSS, the rows by status;
- the bare model in the same process: ``Predictor.predict_pixels`` on prepared batches of 8,
  as ``predict`` runs it (2 threads sharing a 1-thread session) and as one 2-thread session;
- one 4000x3000 JPEG through ``POST /api/v1/predict`` of ``mpoxscan serve``, one client:
  p50/p99 latency (``load_test.latency_levels``);
- with ``--many N``: a folder of N phone photos (hard links to the 4000x3000 JPEGs), peak RSS;
- with ``--profile``: cProfile of the local engine on the 4000x3000 folder (where time goes).
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import io
import os
import pstats
import re
import resource
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pillow_heif
import psutil
from PIL import Image

from _common import REPO_ROOT, WORK_DIR, machine
from load_test import ServerProcess, UploadCase, latency_levels
from mpoxscan.data.datasets import scan_dataset
from mpoxscan.inference.predictor import Predictor

SIZES = ((1600, 1200), (3000, 2250), (4000, 3000))
MPOXSCAN = Path(sys.executable).with_name("mpoxscan")


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def blow_up(source: Path, size: tuple[int, int], target: Path, seed: int) -> Path:
    """A 224x224 photo enlarged to a phone's size, with noise, saved as JPEG or HEIC."""
    if not target.exists():
        rng = np.random.default_rng(seed)
        big = np.asarray(Image.open(source).convert("RGB").resize(size, Image.BICUBIC), float)
        big += rng.normal(0.0, 3.0, big.shape)
        image = Image.fromarray(np.clip(big, 0, 255).astype(np.uint8))
        if target.suffix == ".heic":
            pillow_heif.register_heif_opener()
            image.save(target, quality=90)
        else:
            image.save(target, quality=90)
    return target


def make_folders(
    data: Path, per_size: int, small: int, only: list[str] | None = None, files: int = 0
) -> dict[str, Path]:
    """The benchmark's photo folders, by name."""
    records = scan_dataset(data).records
    root = WORK_DIR / "phone"
    folders = {"224x224 JPEG": root / "224"}
    folders["224x224 JPEG"].mkdir(parents=True, exist_ok=True)
    for i in range(small):
        target = folders["224x224 JPEG"] / f"{i:05d}.jpg"
        if not target.exists():
            os.link(records[i % len(records)].path, target)
    jobs = [(f"{w}x{h} JPEG", (w, h), ".jpg") for w, h in SIZES] + [
        ("4000x3000 HEIC", (4000, 3000), ".heic")
    ]
    for name, size, suffix in jobs:
        if only and name not in only:
            continue
        folder = root / name.replace(" ", "-")
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_size):
            record = records[(i * 7) % len(records)]
            blow_up(record.path, size, folder / f"{i:04d}{suffix}", i)
        folders[name] = linked(folder, files, suffix) if files > per_size else folder
    return folders


def linked(folder: Path, count: int, suffix: str) -> Path:
    """A folder of ``count`` hard links to the photos of ``folder``, in turn."""
    target = folder.with_name(f"{folder.name}-x{count}")
    target.mkdir(exist_ok=True)
    sources = sorted(folder.glob(f"*{suffix}"))
    for i in range(count):
        link = target / f"{i:05d}{suffix}"
        if not link.exists():
            os.link(sources[i % len(sources)], link)
    return target


def cli_run(bundle: Path, folder: Path, out: Path) -> dict[str, object]:
    """``mpoxscan predict DIR --out X.csv`` in a subprocess: rate, wall, peak RSS, statuses."""
    out.unlink(missing_ok=True)
    before = load()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    process = psutil.Popen(
        [str(MPOXSCAN), "predict", "--model-dir", str(bundle), str(folder), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    peak = 0
    while process.poll() is None:
        try:
            peak = max(peak, process.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    wall = time.perf_counter() - start
    process.wait()
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(getattr(cpu_after, f) - getattr(cpu_before, f) for f in ("ru_utime", "ru_stime"))
    text = process.stdout.read()
    match = re.search(r"([\d.]+) images/s", text)
    with out.open(newline="") as handle:
        statuses = Counter(row["status"] for row in csv.DictReader(handle))
    files = sum(statuses.values())
    return {
        "rate": float(match.group(1)) if match else float("nan"),
        "wall_rate": files / wall,
        "peak_mb": peak / 2**20,
        # CPU of the whole command (start-up included) per photo, and what 2 idle cores
        # would then do: far less sensitive to the other jobs than the rates.
        "cpu_ms": 1000 * cpu / max(files, 1),
        "statuses": dict(statuses),
        "load": f"{before} -> {load()}",
    }


def bare_model(bundle: Path, seconds: float = 4.0) -> dict[str, tuple[float, float, str]]:
    """Photos/s, CPU ms/photo and load of the graph alone (``predict_pixels``, batches of 8):
    as ``predict`` runs it (2 threads, one 1-thread session) and as one 2-thread session."""
    found = {}
    for name, threads, callers in (("2 x 1 thread", 1, 2), ("1 x 2 threads", 2, 1)):
        predictor = Predictor.load(bundle, backend="onnx", threads=threads)
        before = load()
        rate, cpu_ms = model_rate(predictor, callers, seconds)
        found[name] = (rate, cpu_ms, f"{before} -> {load()}")
    return found


def model_rate(predictor: Predictor, callers: int, seconds: float) -> tuple[float, float]:
    """Photos/s and CPU ms/photo of ``callers`` threads running batches of 8 for ``seconds``."""
    size = predictor.image_size_
    pixels = np.random.default_rng(0).uniform(0, 255, (8, 3, size, size)).astype(np.float32)
    predictor.predict_pixels(pixels)
    done = [0] * callers
    stop = time.perf_counter() + seconds

    def work(i: int) -> None:
        while time.perf_counter() < stop:
            predictor.predict_pixels(pixels)
            done[i] += len(pixels)

    cpu, start = time.process_time(), time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return sum(done) / wall, 1000 * cpu / sum(done)


def api_latency(bundle: Path, photo: Path, requests: int) -> tuple[float, float, str]:
    """p50 and p99 ms of one phone JPEG through POST /api/v1/predict, one client."""
    case = UploadCase("phone", photo.read_bytes(), True)
    with ServerProcess(bundle, log_level="warning") as server:
        before = load()
        report = latency_levels(server.url, [case], levels=(1,), requests_per_level=requests)[1]
    return report.p50_ms, report.p99_ms, f"{before} -> {load()}"


def many_photos(folder: Path, count: int) -> Path:
    """A folder of ``count`` phone photos: hard links to the photos of ``folder``."""
    target = WORK_DIR / "phone" / f"many-{count}"
    target.mkdir(parents=True, exist_ok=True)
    sources = sorted(folder.iterdir())
    for i in range(count):
        link = target / f"{i:05d}.jpg"
        if not link.exists():
            os.link(sources[i % len(sources)], link)
    return target


def profile(bundle: Path, folder: Path) -> str:
    """cProfile of the local engine on a folder: the top functions by cumulative time."""
    from mpoxscan.inference.batch import open_engine, predict_to_file

    engine = open_engine(bundle)
    profiler = cProfile.Profile()
    profiler.enable()
    predict_to_file(engine, [folder], WORK_DIR / "profile.csv")
    profiler.disable()
    (WORK_DIR / "profile.csv").unlink()
    buffer = io.StringIO()
    pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(15)
    return buffer.getvalue()


def table(bundles: dict[str, Path], folders: dict[str, Path], only: list[str] | None) -> None:
    """``mpoxscan predict`` on every folder with every bundle, as a Markdown table.

    *run CPU ms/photo* leaves out the command's start-up: the CPU of the same command on one
    photo (imports, loading the bundle) is subtracted before dividing by the photos.
    """
    one = WORK_DIR / "phone" / "one"
    one.mkdir(parents=True, exist_ok=True)
    if not (one / "0.jpg").exists():
        os.link(sorted(folders["224x224 JPEG"].iterdir())[0], one / "0.jpg")
    print(
        "| graph | photos | files | predict img/s (printed) | whole command img/s "
        "| run CPU ms/photo | 2-core bound img/s | peak RSS MiB | statuses | load before -> after |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for graph, bundle in bundles.items():
        start_up = cli_run(bundle, one, WORK_DIR / "phone-results.csv")
        print(
            f"| {graph} | start-up (1 photo) | 1 | | | {start_up['cpu_ms']:.0f} ms CPU, "
            f"{1000 / start_up['wall_rate']:.0f} ms wall | | {start_up['peak_mb']:.0f} | "
            f"| {start_up['load']} |",
            flush=True,
        )
        for name, folder in folders.items():
            if only and name not in only:
                continue
            found = cli_run(bundle, folder, WORK_DIR / "phone-results.csv")
            files = sum(found["statuses"].values())
            run_cpu = (found["cpu_ms"] * files - start_up["cpu_ms"]) / files
            print(
                f"| {graph} | {name} | {files} | {found['rate']:.1f} | {found['wall_rate']:.1f} "
                f"| {run_cpu:.1f} | {2000 / run_cpu:.0f} "
                f"| {found['peak_mb']:.0f} | {found['statuses']} | {found['load']} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path, default=REPO_ROOT / "models" / "default")
    parser.add_argument("--int8-bundle", type=Path)
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared/data/msld-v1")
    parser.add_argument("--per-size", type=int, default=48)
    parser.add_argument("--files", type=int, default=240, help="files in each timed folder")
    parser.add_argument("--small", type=int, default=600)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--many", type=int, default=0)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--only", nargs="*", help="folder names to run (default: all)")
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=("table", "bare", "api"), help="parts to skip"
    )
    args = parser.parse_args()
    print(f"machine: {machine()}", flush=True)
    folders = make_folders(args.data, args.per_size, args.small, args.only, args.files)
    bundles = {"fp32": args.bundle}
    if args.int8_bundle:
        bundles["int8"] = args.int8_bundle
    if "table" not in args.skip:
        table(bundles, folders, args.only)
    for graph, bundle in bundles.items():
        if "bare" not in args.skip:
            for layout, (rate, cpu_ms, where) in bare_model(bundle).items():
                print(
                    f"bare model {graph}, {layout}: {rate:.1f} photos/s, {cpu_ms:.2f} ms CPU/photo"
                    f" at batch 8 (load {where})"
                )
        if "api" not in args.skip:
            photo = sorted(folders["4000x3000 JPEG"].iterdir())[0]
            p50, p99, where = api_latency(bundle, photo, args.requests)
            print(
                f"API {graph}, one 4000x3000 JPEG, 1 client: p50 {p50} ms, p99 {p99} ms ({where})"
            )
    if args.many:
        folder = many_photos(folders["4000x3000 JPEG"], args.many)
        for graph, bundle in bundles.items():
            found = cli_run(bundle, folder, WORK_DIR / "many-results.csv")
            print(f"{args.many} phone photos, {graph}: {found}", flush=True)
    if args.profile:
        print(profile(args.int8_bundle or args.bundle, folders["4000x3000 JPEG"]))
    print(f"after: {machine()}")


if __name__ == "__main__":
    main()
