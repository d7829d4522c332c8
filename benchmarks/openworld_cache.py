"""Cache EfficientNet-Lite0 views of every photo of the five sources (open-world benchmarks).

For each photo (decoded and resized to 224 px as ``mpoxscan`` does): view 0 the photo, 1 its
mirror, 2 the default training augmentation, 3 and 4 the default augmentation after random
style changes (``mpoxscan.data.style.random_style``); MSLD photos also get the fixed style
probes (``STYLE_PROBES``). Stored per view: the pooled embedding (what a head on frozen
features sees) and the input of backbone block 13 (float16), from which the last three blocks
can be fine-tuned. Near-duplicate photos are merged into one group first, across sources.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/openworld_cache.py --out CACHE_DIR
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mpoxscan.data.audit import merge_duplicate_patients
from mpoxscan.data.datasets import ImageRecord
from mpoxscan.data.images import decode_image
from mpoxscan.data.preprocessing import resize_image
from mpoxscan.data.style import STYLE_PROBES, StyleConfig, random_style
from mpoxscan.data.transforms import AugmentConfig, build_augmentation, normalize_batch
from mpoxscan.models import create_model
from openworld_common import SOURCES, Photo, scan_sources, write_index

START = 13  # cache the input of block 13: the last three blocks can be fine-tuned
SIZE = 224


def merged_groups(photos: list[Photo]) -> list[Photo]:
    """Photos with near-duplicates merged into one group (negatives across sources)."""
    records = [
        ImageRecord(p.path, "mpox" if p.mpox else "negative", int(p.mpox), p.group, None)
        for p in photos
    ]
    merged = merge_duplicate_patients(records)
    return [replace(p, group=r.patient) for p, r in zip(photos, merged, strict=True)]


def seed_of(path: Path, view: int) -> int:
    return int(hashlib.sha256(f"{path.name}:{view}".encode()).hexdigest()[:8], 16)


def views_of(
    pixels: np.ndarray, path: Path, msld: bool, augment, style: StyleConfig, views: list[int]
) -> list:
    """The views of one photo as float ``(3, S, S)`` tensors in [0, 1] (MSLD: all five and the
    style probes; other sources: ``views``)."""

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float().div(255.0)

    def augmented(a: np.ndarray, view: int) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_of(path, view))
            return augment(tensor(a)[None])[0]

    out = []
    for view in range(5) if msld else views:
        if view == 0:
            out.append(tensor(pixels))
        elif view == 1:
            out.append(tensor(pixels).flip(-1))
        elif view == 2:
            out.append(augmented(pixels, 2))
        else:
            styled = random_style(pixels, style, np.random.default_rng(seed_of(path, view)))
            out.append(augmented(styled, view))
    if msld:
        out += [tensor(probe(pixels)) for probe in STYLE_PROBES.values()]
    return out


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sources", nargs="*", default=list(SOURCES))
    parser.add_argument(
        "--views", default="0,2,3", help="views of non-MSLD photos (CPU time: 3 of 5 views)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    index = args.out / "index.csv"
    photos = merged_groups(scan_sources())
    write_index(photos, index)
    print(f"{len(photos)} photos, {len({p.group for p in photos})} groups", flush=True)
    model = create_model("efficientnet-lite0", num_outputs=1, pretrained=True).eval()
    prep = model.preprocessing
    augment = build_augmentation(AugmentConfig(), SIZE)
    style = StyleConfig()
    for source in args.sources:
        view_ids = (
            list(range(5)) if source == "msld-v1" else [int(v) for v in args.views.split(",")]
        )
        target = args.out / f"{source}.npz"
        if target.exists():
            continue
        start = time.time()
        embs, blocks = [], []
        for photo in (p for p in photos if p.source == source):
            pixels = np.asarray(resize_image(decode_image(photo.path), SIZE), dtype=np.uint8)
            views = views_of(pixels, photo.path, source == "msld-v1", augment, style, view_ids)
            x = normalize_batch(torch.stack(views), prep)
            block_in = model.forward_until(x, START)
            emb = model.forward_from(block_in, START).mean(dim=(2, 3))
            embs.append(emb.numpy().astype(np.float32))
            blocks.append(block_in.numpy().astype(np.float16))
        np.savez(
            target,
            emb=np.stack(embs),
            blocks=np.stack(blocks),
            probe_names=np.array(list(STYLE_PROBES)),
            views=np.array(view_ids),
        )
        print(f"{source}: {len(embs)} photos in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
