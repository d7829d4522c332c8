"""How the copy finder's cost grows with the number of photos (benchmarks/audit.md).

Runs ``scan_copies`` on seeded random subsets of the five ``../shared/data`` sources, with the
embedding cache that ``mpoxscan audit --cache-dir`` filled (so the subsets time the hashing,
the candidate search and the geometric checks; the embedding is one forward pass per photo,
linear by construction, and is timed cold by the audit run itself).

    PYTHONPATH=src OMP_NUM_THREADS=2 nice -n 10 python benchmarks/audit_scaling.py \\
        --cache-dir runs/audit-cache --sizes 500 1000 2000 4031
"""

from __future__ import annotations

import argparse
import random
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
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000, 4031])
    args = parser.parse_args()
    index = load_sources([args.data / name for name in SOURCES])
    embed = RegionEmbedder()
    config = CopyConfig(cache_dir=args.cache_dir)
    print(machine())
    print("| photos | seconds | pairs | geometric |")
    print("|---:|---:|---:|---:|")
    for size in args.sizes:
        records = random.Random(0).sample(index.records, min(size, len(index.records)))
        start = time.perf_counter()
        scan = scan_copies(records, embed=embed, config=config)
        seconds = time.perf_counter() - start
        geometric = sum(p.stage == "geometric" for p in scan.pairs)
        print(f"| {len(records)} | {seconds:.1f} | {len(scan.pairs)} | {geometric} |", flush=True)


if __name__ == "__main__":
    main()
