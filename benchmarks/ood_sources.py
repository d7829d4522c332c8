"""The out-of-domain check fitted on all skin sources: refusal per source, and of non-skin.

Embeds every photo of a data manifest (default: ``benchmarks/shared-data.toml``) with a
bundle's backbone (default: ``models/default``, ImageNet EfficientNet-Lite0, the embedding the
frozen-features recipe fits its detector on), then fits detectors several ways and reports the
share refused:

- **bundled**: the bundle's own detector (a Gaussian fitted on MSLD training patients only);
- **all sources**: a Gaussian (``OodDetector``) and the nearest-neighbour detector
  (``NeighbourOodDetector``, what ``train`` fits now) on the training part (80% of photo
  groups, stratified by source and class) of every source, scored on the held-out 20%;
- **source left out**: each fitted on every source but one, scored on the one left out (how a
  kind of skin photo the detector never saw fares).

Each is also scored on the non-skin probes of ``mpoxscan.evaluation.ood_probes`` (noise,
screenshots, text pages, drawings, scikit-image's sample photos). Embeddings are cached in
``--cache`` (an ``.npz``) so a rerun takes seconds.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/ood_sources.py --out /tmp/ood.md
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from _common import REPO_ROOT, machine
from mpoxscan.data.datasets import DatasetIndex
from mpoxscan.data.images import decode_image
from mpoxscan.data.sources import load_sources
from mpoxscan.data.splits import split_dataset
from mpoxscan.evaluation.ood_probes import SKIMAGE_SAMPLES, non_skin_probes
from mpoxscan.evaluation.per_source import ScoredPhotos, per_source_figures
from mpoxscan.inference.predictor import Predictor
from mpoxscan.inference.quality import NeighbourOodDetector, OodDetector

BATCH = 32


def embed_all(predictor: Predictor, index: DatasetIndex, cache: Path) -> np.ndarray:
    """Embeddings of every record, from ``cache`` when it holds the same files."""
    names = np.array([str(r.path) for r in index.records])
    if cache.is_file():
        stored = np.load(cache, allow_pickle=False)
        if np.array_equal(stored["paths"], names):
            return stored["embeddings"]
    chunks = []
    for start in range(0, len(index.records), BATCH):
        images = [decode_image(r.path) for r in index.records[start : start + BATCH]]
        chunks.append(predictor.embed(images))
        print(f"embedded {start + len(images)}/{len(index.records)}", flush=True)
    embeddings = np.concatenate(chunks)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, paths=names, embeddings=embeddings)
    return embeddings


def refusal_rows(index, embeddings, mask, detector) -> dict[str, dict]:
    """Per-source refusal of the records in ``mask``: ``{source: per-source row}``."""
    records = [r for r, keep in zip(index.records, mask, strict=True) if keep]
    refused = detector.is_out_of_domain(embeddings[mask])
    photos = ScoredPhotos.build(
        [r.source for r in records],
        [r.class_name for r in records],
        [r.label for r in records],
        [r.patient for r in records],
        np.zeros(len(records)),
        threshold=1.0,
        refused=refused,
    )
    by_source: dict[str, dict] = {}
    for row in per_source_figures(photos):  # a source's "(all)" row comes after its classes
        by_source[row["source"]] = row
    return by_source


def share(row: dict) -> str:
    low, high = row["refused_ci"]
    k, n = row["refused_n"]
    return f"{row['refused']:.1%} ({100 * low:.1f}–{100 * high:.1f}; {k}/{n})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT / "benchmarks/shared-data.toml")
    parser.add_argument("--bundle", type=Path, default=REPO_ROOT / "models/default")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/mpoxscan-ood-embeddings.npz"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    started = time.time()
    predictor = Predictor.load(args.bundle)
    index = load_sources([args.data])
    embeddings = embed_all(predictor, index, args.cache)
    probes = non_skin_probes()
    probe_embeddings = {kind: predictor.embed(images) for kind, images in probes.items()}

    split = split_dataset(index, val_fraction=0.0001, test_fraction=0.2, seed=0)
    test_paths = {r.path for r in split.test}
    is_test = np.array([r.path in test_paths for r in index.records])
    train_groups = [r.patient for r, t in zip(index.records, is_test, strict=True) if not t]
    gaussian = OodDetector().fit(embeddings[~is_test], groups=train_groups)
    neighbours = NeighbourOodDetector().fit(embeddings[~is_test], groups=train_groups)
    detectors = {
        "bundled (Gaussian, MSLD only)": predictor.ood_,
        "Gaussian, all sources": gaussian,
        "neighbours, all sources": neighbours,
    }
    kinds = {"Gaussian": OodDetector, "neighbours": NeighbourOodDetector}

    sources = [spec.name for spec in index.sources]
    lines = [
        f"Machine: {machine()}. Bundle: `{args.bundle}`; data: `{args.data}` "
        f"({len(index.records)} photos). Embedding cache: `{args.cache}`.",
        "",
        "| source (held-out photos) | "
        + " | ".join(detectors)
        + " | "
        + " | ".join(f"{name}, source left out" for name in kinds)
        + " |",
        "|---|" + "---|" * (len(detectors) + len(kinds)),
    ]
    held_rows = {name: refusal_rows(index, embeddings, is_test, d) for name, d in detectors.items()}
    for source in sources:
        cells = [share(held_rows[name][source]) for name in detectors]
        in_source = np.array([r.source == source for r in index.records])
        others = [r.patient for r, s in zip(index.records, in_source, strict=True) if not s]
        for kind in kinds.values():
            left_out = kind().fit(embeddings[~in_source], groups=others)
            cells.append(share(refusal_rows(index, embeddings, in_source, left_out)[source]))
        lines.append(f"| {source} | " + " | ".join(cells) + " |")
    for kind, vectors in probe_embeddings.items():
        cells = []
        for detector in detectors.values():
            refused = detector.is_out_of_domain(vectors)
            cells.append(f"{refused.mean():.0%} ({refused.sum()}/{len(refused)})")
        lines.append(f"| non-skin: {kind} | " + " | ".join(cells) + " | | |")
    lines += [""]
    for name, detector in detectors.items():
        flags = detector.is_out_of_domain(probe_embeddings["photo"])
        passed = [photo for photo, out in zip(SKIMAGE_SAMPLES, flags, strict=True) if not out]
        lines.append(
            f"- {name}: threshold {detector.threshold_:.3g}; scikit-image photos let through: "
            f"{', '.join(passed) or 'none'}."
        )
    lines += ["", f"Took {time.time() - started:.0f} s."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
