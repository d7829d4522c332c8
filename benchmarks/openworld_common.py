"""Shared pieces of the open-world benchmarks (``openworld_*.py``): sources, groups, caches.

The five sources of ``../shared/data`` (see its README) are read in place. Every photo gets a
source, its class folder, a coarse class for multi-class heads and a photo group qualified by
source (MSLD: also by class, its patient ids are unique only within a class); near-duplicate
photos are merged into one group across sources (``merge_duplicate_patients`` with every
negative filed under one class). ``openworld_cache.py`` writes the cached views per source to
``<cache>/<source>.npz``; the experiment scripts read them with :func:`load_cache`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = REPO_ROOT.parent / "shared" / "data"
SOURCES = ("msld-v1", "healthy-abdomen", "skin-id-smartphone", "sd198-subset", "insect-bites")
NEGATIVE_SOURCES = SOURCES[1:]
MPOX_CLASS = "Monkey Pox"
#: Coarse classes of the multi-class heads, index = output.
COARSE = ("mpox", "msld-other", "healthy", "bite", "rash")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
#: Cached views: 0 photo, 1 mirror, 2 default augmentation, 3-4 default augmentation + random
#: style changes; MSLD photos also get the fixed style probes after them (view 5 on). To save
#: CPU, the other sources have the views of ``openworld_cache.py --views`` only (default 0, 2
#: and 3; the cache behind ``accuracy.md`` has view 0 only; ``Cache.have`` says which).
PLAIN_VIEWS = (0, 1, 2)
STYLE_VIEWS = (3, 4)


@dataclass(frozen=True)
class Photo:
    """One photo of the open-world data."""

    path: Path
    source: str
    class_name: str
    group: str

    @property
    def mpox(self) -> bool:
        return self.source == "msld-v1" and self.class_name == MPOX_CLASS

    @property
    def coarse(self) -> int:
        if self.source == "msld-v1":
            return 0 if self.mpox else 1
        if self.class_name == "Healthy":
            return 2
        return 3 if self.source == "insect-bites" else 4


def scan_sources(root: Path = DATA_ROOT) -> list[Photo]:
    """Every photo of the five sources, sorted by source then path, with raw group ids."""
    photos = []
    for source in SOURCES:
        for class_dir in sorted(p for p in (root / source).iterdir() if p.is_dir()):
            for path in sorted(class_dir.rglob("*")):
                if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
                    continue
                stem = path.stem.split("_")[0]
                qualifier = f"{source}/{class_dir.name}" if source == "msld-v1" else source
                photos.append(Photo(path, source, class_dir.name, f"{qualifier}/{stem}"))
    return photos


def write_index(photos: list[Photo], path: Path) -> None:
    """Write the photos (with their merged groups) as CSV."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "source", "class", "group"])
        for p in photos:
            writer.writerow([str(p.path), p.source, p.class_name, p.group])


def read_index(path: Path) -> list[Photo]:
    """Read what :func:`write_index` wrote."""
    with path.open(newline="") as f:
        return [
            Photo(Path(r["path"]), r["source"], r["class"], r["group"]) for r in csv.DictReader(f)
        ]


@dataclass
class Cache:
    """Cached views of every photo, aligned with ``photos``.

    Attributes:
        photos: the photos.
        emb: float32 ``(N, 5, 1280)`` pooled embeddings of views 0-4 (see module constants);
            zeros where a photo lacks a view.
        have: bool ``(N, 5)``: which views each photo has.
        probes: ``{probe name: (n_msld, 1280)}`` embeddings of MSLD photos after a fixed style
            change, rows in the order of the MSLD photos.
        blocks: float16 ``(N, 5, 192, 7, 7)`` inputs of backbone block 13, or ``None`` when not
            loaded.
    """

    photos: list[Photo]
    emb: np.ndarray
    have: np.ndarray
    probes: dict[str, np.ndarray]
    blocks: np.ndarray | None = None


def load_cache(cache_dir: Path, *, blocks: bool = False) -> Cache:
    """Read the per-source ``.npz`` files written by ``openworld_cache.py``."""
    photos = read_index(cache_dir / "index.csv")
    embs, haves, block_parts, probes = [], [], [], {}
    for source in SOURCES:
        with np.load(cache_dir / f"{source}.npz") as data:
            views = [int(v) for v in data["views"]] if "views" in data else list(range(5))
            emb = np.zeros((len(data["emb"]), 5, data["emb"].shape[-1]), np.float32)
            emb[:, views] = data["emb"][:, : len(views)]
            have = np.zeros((len(emb), 5), bool)
            have[:, views] = True
            embs.append(emb)
            haves.append(have)
            if blocks:
                part = np.zeros((len(emb), 5, *data["blocks"].shape[2:]), np.float16)
                part[:, views] = data["blocks"][:, : len(views)]
                block_parts.append(part)
            if source == "msld-v1":
                names = [str(n) for n in data["probe_names"]]
                for k, name in enumerate(names):
                    probes[name] = data["emb"][:, len(views) + k]
                    if blocks:
                        probes[f"blocks:{name}"] = data["blocks"][:, len(views) + k]
    return Cache(
        photos=photos,
        emb=np.concatenate(embs),
        have=np.concatenate(haves),
        probes=probes,
        blocks=np.concatenate(block_parts) if blocks else None,
    )


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a proportion ``k / n``."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def fmt_share(k: int, n: int) -> str:
    """``"12.3% (10.1-14.9), 45/366"``: a share with its Wilson interval and counts."""
    low, high = wilson(k, n)
    return f"{100 * k / n:.1f}% ({100 * low:.1f}-{100 * high:.1f}), {k}/{n}"
