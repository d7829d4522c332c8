"""How the copy finder's cost grows with the number of photos (benchmarks/audit.md).

Runs ``scan_copies`` on seeded random subsets of the five ``../shared/data`` sources, each
subset cold (a fresh, empty cache: decoding, hashing, embedding, candidate search and every
local-feature check), the way a first ``mpoxscan audit`` of that many photos runs.

    PYTHONPATH=src python benchmarks/audit_scaling.py --sizes 500 1000 2000 4031
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from _common import REPO_ROOT, machine
from mpoxscan.data.copies import CopyConfig, scan_copies
from mpoxscan.data.sources import load_sources
from mpoxscan.models.region_embedding import RegionEmbedder

SOURCES = ("msld-v1", "healthy-abdomen", "skin-id-smartphone", "sd198-subset", "insect-bites")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000, 4031])
    args = parser.parse_args()
    index = load_sources([args.data / name for name in SOURCES])
    embed = RegionEmbedder()
    print(machine())
    print("| photos | wall s | CPU s | wall ms per photo | pairs | geometric |")
    print("|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        records = random.Random(0).sample(index.records, min(size, len(index.records)))
        with tempfile.TemporaryDirectory() as cache_dir:
            config = CopyConfig(cache_dir=Path(cache_dir))
            start, cpu = time.perf_counter(), time.process_time()
            scan = scan_copies(records, embed=embed, config=config)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        geometric = sum(p.stage == "geometric" for p in scan.pairs)
        per_photo = 1000 * seconds / len(records)
        print(
            f"| {len(records)} | {seconds:.0f} | {cpu:.0f} | {per_photo:.0f} "
            f"| {len(scan.pairs)} | {geometric} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
