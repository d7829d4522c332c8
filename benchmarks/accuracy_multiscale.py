"""Do multi-scale frozen EfficientNet-Lite features beat the final embedding? (MSLD v1)

Hypothesis: lesion texture lives in intermediate layers, so globally pooled outputs of several
EfficientNet-Lite0 stages, concatenated with the final 1280-d embedding (``model.embed``),
might classify better under a linear head than the final embedding alone.

Every variant is scored on the same patient-grouped folds (``grouped_folds``, stratified) with
the head protocol of ``mpoxscan``'s frozen-features recipe (``training/frozen_features.py``):
features standardised on the training rows, L2 logistic regression (``class_weight="balanced"``) for
each ``C`` of ``FeatureConfig.logreg_cs`` (1e-4..1), the ``C`` with the lowest class-balanced
validation log loss on the fold's ``val`` patients kept. The test fold is only scored. Training
uses views 0 (photo) and 1 (mirror) of each training photo (``--train-views 10`` adds eight
augmented views, the package's own). Test figures are reported twice: view 0 alone, and
"TTA", the mean logit of views 0 and 1 (``C`` then chosen on the TTA validation loss, as
``--tta`` does in the package). Accuracy, sensitivity and specificity are at p = 0.5.

Stage ends are found from the block list: a stage ends at block ``i`` when block ``i + 1``
changes the channel count (Lite0: blocks 0, 2, 4, 7, 10, 14, 15 with 16, 24, 40, 80, 112, 192,
320 channels). For each stage end and the final feature map (after the 1x1 head convolution,
as ``model.embed``), the spatial mean, max and SD are cached once per photo and view as
``runs/multiscale-cache/<backbone>-view<k>.npy`` (float32, photos x columns) beside a
``<backbone>-layout.json`` naming the columns and the photos (with file hashes).

Usage (from the repository root, one torch thread):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/accuracy_multiscale.py --seed 0 \\
        --out runs/multiscale-seed0.json
    # confirmation on new folds, the winner named in advance, nothing chosen there:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/accuracy_multiscale.py --seed 1 \\
        --variants final,<winner> --out runs/multiscale-seed1.json

``--variants`` picks rows of ``VARIANTS`` (default: all); ``--list`` prints them. The run
prints a markdown table and writes per-fold figures to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, machine
from mpoxscan.data.loading import ImageDataset
from mpoxscan.data.splits import Fold, grouped_folds
from mpoxscan.data.transforms import AugmentConfig, build_augmentation, normalize_batch
from mpoxscan.evaluation.metrics import binary_metrics, summarize_folds
from mpoxscan.hashing import file_sha256
from mpoxscan.models import create_model
from mpoxscan.training.config import DataConfig, FeatureConfig
from mpoxscan.training.frozen_features import render_view, view_seed
from mpoxscan.training.recipes import load_index

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "msld-v1"
DEFAULT_CACHE = REPO_ROOT / "runs" / "multiscale-cache"
BACKBONES = {"lite0": "efficientnet-lite0", "lite2": "efficientnet-lite2"}
STATS = ("mean", "max", "std")
#: Seed of the augmented views (2 and on): the package's default ``TrainConfig.seed``.
VIEW_SEED = 0
METRIC_KEYS = ("accuracy", "roc_auc", "sensitivity", "specificity")
BATCH = 32


@dataclass(frozen=True)
class Variant:
    """A feature set: ``(backbone, tap, stat)`` column blocks, concatenated in this order.

    A tap is ``"final"`` (the pooled final feature map, ``model.embed`` for ``mean``) or
    ``"b<i>"``, the output of backbone block ``i``.
    """

    name: str
    parts: tuple[tuple[str, str, str], ...]
    about: str


def _parts(backbone: str, taps: tuple[str, ...], stats: tuple[str, ...]):
    return tuple((backbone, tap, stat) for tap in taps for stat in stats)


_LAST2 = ("final", "b14", "b15")
_LAST4 = ("final", "b7", "b10", "b14", "b15")
_ALL = ("final", "b0", "b2", "b4", "b7", "b10", "b14", "b15")
VARIANTS = {
    v.name: v
    for v in (
        Variant("final", _parts("lite0", ("final",), ("mean",)), "(a) final embedding (baseline)"),
        Variant("last2", _parts("lite0", _LAST2, ("mean",)), "(b) final + last 2 stage ends"),
        Variant("last4", _parts("lite0", _LAST4, ("mean",)), "(c) final + last 4 stage ends"),
        Variant("all7", _parts("lite0", _ALL, ("mean",)), "(c') final + all 7 stage ends"),
        Variant("last2-max", _parts("lite0", _LAST2, ("mean", "max")), "(d) last2, mean+max"),
        Variant("last4-max", _parts("lite0", _LAST4, ("mean", "max")), "(d) last4, mean+max"),
        Variant("last4-maxstd", _parts("lite0", _LAST4, STATS), "(d') last4, mean+max+SD"),
        Variant("final-max", _parts("lite0", ("final",), ("mean", "max")), "final, mean+max"),
        Variant(
            "lite0+lite2",
            _parts("lite0", ("final",), ("mean",)) + _parts("lite2", ("final",), ("mean",)),
            "(e) Lite0 + Lite2 final embeddings",
        ),
    )
}


# --------------------------------------------------------------------------- feature extraction


def stage_ends(model: torch.nn.Module) -> list[int]:
    """Indices of the last block of each stage: where the next block changes the channels."""
    blocks = model.backbone._blocks
    channels = [block._project_conv.out_channels for block in blocks]
    return [i for i in range(len(blocks)) if i == len(blocks) - 1 or channels[i + 1] != channels[i]]


def pool(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Spatial mean, max and SD of a ``(B, C, H, W)`` map, each ``(B, C)``."""
    return {
        "mean": x.mean(dim=(2, 3)),
        "max": x.amax(dim=(2, 3)),
        "std": x.std(dim=(2, 3), unbiased=False),
    }


def multiscale_features(
    model: torch.nn.Module, x: torch.Tensor, ends: list[int]
) -> dict[tuple[str, str], torch.Tensor]:
    """Pooled stage-end outputs and final feature map of a normalised batch, one forward pass.

    Runs the blocks exactly as ``EfficientNetLite.forward_features`` does (eval mode, so
    drop-connect is off).
    """
    net = model.backbone
    rate = net._global_params.drop_connect_rate or 0.0
    out: dict[tuple[str, str], torch.Tensor] = {}
    x = model.stem_act(net._bn0(net._conv_stem(x)))
    for index, block in enumerate(net._blocks):
        x = block(x, drop_connect_rate=rate * index / len(net._blocks))
        if index in ends:
            out.update({(f"b{index}", s): v for s, v in pool(x).items()})
    final = model.head_act(net._bn1(net._conv_head(x)))
    out.update({("final", s): v for s, v in pool(final).items()})
    return out


def layout_of(features: dict[tuple[str, str], torch.Tensor]) -> list[list]:
    """Column blocks of a cached array: ``[tap, stat, start, stop]`` in a fixed order."""
    columns, start = [], 0
    for (tap, stat), value in sorted(features.items()):
        columns.append([tap, stat, start, start + value.shape[1]])
        start += value.shape[1]
    return columns


def render_batch(dataset: ImageDataset, rows: range, view: int, hashes: list[str], augmenter):
    """View ``view`` of photos ``rows`` as a ``[0, 1]`` batch, the package's way."""
    return torch.stack(
        [
            render_view(dataset.images[i], view, augmenter, view_seed(hashes[i], view, VIEW_SEED))
            for i in rows
        ]
    )


@torch.inference_mode()
def extract_view(model, dataset: ImageDataset, hashes: list[str], view: int):
    """Pooled features of one view of every photo: ``(N, D)`` float32 and its layout."""
    model.eval()
    prep = model.preprocessing
    augmenter = build_augmentation(AugmentConfig(), prep.image_size)
    ends = stage_ends(model)
    chunks, layout = [], None
    for start in range(0, len(dataset), BATCH):
        rows = range(start, min(start + BATCH, len(dataset)))
        x = normalize_batch(render_batch(dataset, rows, view, hashes, augmenter), prep)
        feats = multiscale_features(model, x, ends)
        if layout is None:
            layout = layout_of(feats)
            check_final_embedding(model, x, feats[("final", "mean")])
        chunks.append(torch.cat([feats[(t, s)] for t, s, _, _ in layout], dim=1))
    return torch.cat(chunks).numpy().astype(np.float32), layout


def check_final_embedding(model, x: torch.Tensor, final_mean: torch.Tensor) -> None:
    """The cached final-map mean must be ``model.embed`` (the recipe's embedding)."""
    if not torch.allclose(model.embed(x), final_mean, atol=1e-4):
        raise RuntimeError("pooled final feature map differs from model.embed")


class MultiscaleCache:
    """Per-backbone feature arrays, one ``.npy`` per view, checked against the photo list."""

    def __init__(self, folder: Path, records, data_dir: Path):
        self.folder, self.records, self.data_dir = folder, records, data_dir
        self.hashes = [file_sha256(r.path) for r in records]
        self.arrays: dict[tuple[str, int], np.ndarray] = {}
        self.layouts: dict[str, dict[tuple[str, str], tuple[int, int]]] = {}
        self.extract_seconds: dict[str, float] = {}

    def view(self, backbone: str, view: int) -> np.ndarray:
        """``(N, D)`` features of ``view`` for every photo, extracted on first use."""
        key = (backbone, view)
        if key not in self.arrays:
            self.arrays[key] = self._load_or_extract(backbone, view)
        return self.arrays[key]

    def columns(self, backbone: str, tap: str, stat: str) -> slice:
        self.view(backbone, 0)
        start, stop = self.layouts[backbone][(tap, stat)]
        return slice(start, stop)

    def _paths(self, backbone: str, view: int) -> tuple[Path, Path]:
        return self.folder / f"{backbone}-view{view}.npy", self.folder / f"{backbone}-layout.json"

    def _load_or_extract(self, backbone: str, view: int) -> np.ndarray:
        array_path, layout_path = self._paths(backbone, view)
        photos = [
            [str(r.path.relative_to(self.data_dir)), h]
            for r, h in zip(self.records, self.hashes, strict=True)
        ]
        if array_path.is_file() and layout_path.is_file():
            saved = json.loads(layout_path.read_text())
            if saved["photos"] == photos:
                self._set_layout(backbone, saved["columns"])
                return np.load(array_path, allow_pickle=False)
        array, layout = self._extract(backbone, view)
        self.folder.mkdir(parents=True, exist_ok=True)
        np.save(array_path, array, allow_pickle=False)
        layout_path.write_text(json.dumps({"columns": layout, "photos": photos}))
        self._set_layout(backbone, layout)
        return array

    def _extract(self, backbone: str, view: int):
        started = time.perf_counter()
        model = create_model(BACKBONES[backbone], num_outputs=1, pretrained=True)
        dataset = ImageDataset(self.records, model.preprocessing.image_size)
        if len(dataset) != len(self.records):
            raise RuntimeError("some photos failed to decode")
        array, layout = extract_view(model, dataset, self.hashes, view)
        seconds = time.perf_counter() - started
        self.extract_seconds[f"{backbone}-view{view}"] = seconds
        print(f"extracted {backbone} view {view}: {array.shape} in {seconds:.0f} s", flush=True)
        return array, layout

    def _set_layout(self, backbone: str, layout: list[list]) -> None:
        self.layouts[backbone] = {(t, s): (a, b) for t, s, a, b in layout}


def variant_features(cache: MultiscaleCache, variant: Variant, views: int) -> np.ndarray:
    """``(N, views, D)`` features of a variant for every photo."""
    per_view = []
    for view in range(views):
        blocks = [
            cache.view(backbone, view)[:, cache.columns(backbone, tap, stat)]
            for backbone, tap, stat in variant.parts
        ]
        per_view.append(np.concatenate(blocks, axis=1))
    return np.stack(per_view, axis=1)


# --------------------------------------------------------------------------------- the head


def balanced_log_loss(logits: np.ndarray, y: np.ndarray, pos_weight: float) -> float:
    """``BCEWithLogitsLoss(pos_weight=...)``, as ``class_balanced_loss`` gives the recipe."""
    positive = pos_weight * y * np.logaddexp(0.0, -logits)
    negative = (1 - y) * np.logaddexp(0.0, logits)
    return float(np.mean(positive + negative))


def fit_head(x_train, y_train, x_val, y_val, x_test, cs) -> dict[str, dict]:
    """Logistic regression per ``C`` on standardised training rows; per test mode (``view0``,
    ``tta``) the ``C`` with the lowest validation loss in that mode scores the test photos.

    Arrays are ``(N, V, D)``; validation and test need views 0 and 1.
    """
    rows = x_train.reshape(-1, x_train.shape[-1]).astype(np.float64)
    labels = np.repeat(y_train, x_train.shape[1])
    mean, scale = rows.mean(axis=0), rows.std(axis=0) + 1e-6
    pos_weight = max((y_train == 0).sum(), 1) / max((y_train == 1).sum(), 1)
    best = {mode: (math.inf, None, None) for mode in ("view0", "tta")}
    for c in cs:
        classifier = LogisticRegression(C=c, class_weight="balanced", max_iter=5000)
        classifier.fit((rows - mean) / scale, labels)
        val, test = (_logits(classifier, x, mean, scale) for x in (x_val, x_test))
        for mode, pick in (("view0", lambda z: z[:, 0]), ("tta", lambda z: z[:, :2].mean(1))):
            loss = balanced_log_loss(pick(val), y_val, pos_weight)
            if loss < best[mode][0]:
                best[mode] = (loss, c, pick(test))
    return {mode: {"C": c, "val_loss": loss, "logits": z} for mode, (loss, c, z) in best.items()}


def _logits(classifier, x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Decision values ``(N, V)`` of every view of every photo."""
    flat = (x.reshape(-1, x.shape[-1]).astype(np.float64) - mean) / scale
    return classifier.decision_function(flat).reshape(x.shape[:2])


# ---------------------------------------------------------------------------- cross-validation


def run_variant(variant, features, folds, row_of, labels, patients, train_views, cs):
    """Every fold of one variant: per mode, the fold metrics and chosen ``C`` values."""
    started = time.perf_counter()
    fold_metrics = {"view0": [], "tta": []}
    chosen = {"view0": [], "tta": []}
    for fold in folds:
        idx = {
            part: np.array([row_of[r.path] for r in getattr(fold, part)])
            for part in ("train", "val", "test")
        }
        result = fit_head(
            features[idx["train"], :train_views],
            labels[idx["train"]],
            features[idx["val"], :2],
            labels[idx["val"]],
            features[idx["test"], :2],
            cs,
        )
        for mode, fitted in result.items():
            p = 1.0 / (1.0 + np.exp(-fitted["logits"]))
            metrics = binary_metrics(
                labels[idx["test"]], p, 0.5, groups=patients[idx["test"]], n_boot=0
            )
            fold_metrics[mode].append(metrics)
            chosen[mode].append(fitted["C"])
    seconds = time.perf_counter() - started
    return {
        mode: {
            "summary": summarize_folds(fold_metrics[mode], METRIC_KEYS),
            "C": chosen[mode],
        }
        for mode in fold_metrics
    } | {"seconds": seconds}


def format_row(name: str, about: str, dim: int, mode: str, result: dict) -> str:
    cells = []
    for key in METRIC_KEYS:
        s = result[mode]["summary"][key]
        cells.append(f"{100 * s['mean']:.1f} ± {100 * s['std']:.1f}")
    return (
        f"| `{name}` | {about} | {dim} | {mode} | "
        + " | ".join(cells)
        + f" | {result['seconds']:.0f} |"
    )


def paired_lines(results: dict, reference: str) -> list[str]:
    """Per-fold differences from ``reference`` (same folds, so paired): mean ± SD of the
    difference in accuracy and AUC, and in how many folds the variant's accuracy is higher."""
    lines = [
        f"| variant | test | Δ accuracy vs `{reference}` (points) | Δ ROC AUC (points) | "
        "folds better / equal / worse (accuracy) |",
        "|---|---|---|---|---|",
    ]
    for name, result in results.items():
        if name == reference:
            continue
        for mode in ("view0", "tta"):
            cells = []
            for key in ("accuracy", "roc_auc"):
                diff = 100 * (
                    np.array(result[mode]["summary"][key]["values"])
                    - np.array(results[reference][mode]["summary"][key]["values"])
                )
                cells.append(f"{diff.mean():+.1f} ± {diff.std(ddof=1):.1f}")
                if key == "accuracy":
                    better, worse = int((diff > 0).sum()), int((diff < 0).sum())
                    signs = f"{better} / {len(diff) - better - worse} / {worse}"
            lines.append(f"| `{name}` | {mode} | " + " | ".join(cells) + f" | {signs} |")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--seed", type=int, default=0, help="seed of grouped_folds")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--train-views", type=int, default=2, help="2: photo + mirror")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--out", type=Path, help="JSON with per-fold figures")
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.list:
        for v in VARIANTS.values():
            print(f"{v.name:14s} {v.about}")
        return
    torch.set_num_threads(1)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; see --list")
    data_dir = args.data.resolve()
    records = load_index(DataConfig(data_dir=str(data_dir))).records
    folds: list[Fold] = grouped_folds(
        records, n_folds=args.folds, repeats=args.repeats, seed=args.seed
    )
    row_of = {r.path: i for i, r in enumerate(records)}
    labels = np.array([r.label for r in records])
    patients = np.array([r.patient for r in records])
    cache = MultiscaleCache(args.cache, records, data_dir)
    cs = FeatureConfig().logreg_cs
    print(
        f"{len(records)} photos, {len(set(patients))} patients, {len(folds)} folds, "
        f"seed {args.seed}; {machine()}",
        flush=True,
    )
    header = (
        "| variant | features | dim | test | accuracy % | ROC AUC % | sensitivity % | "
        "specificity % | head wall (s) |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines, results = [header], {}
    for name in names:
        variant = VARIANTS[name]
        features = variant_features(cache, variant, max(args.train_views, 2))
        result = run_variant(
            variant, features, folds, row_of, labels, patients, args.train_views, cs
        )
        results[name] = {"dim": features.shape[-1], "about": variant.about} | result
        for mode in ("view0", "tta"):
            lines.append(format_row(name, variant.about, features.shape[-1], mode, result))
        print(lines[-2] + "\n" + lines[-1], flush=True)
    print("\n" + "\n".join(lines))
    paired = paired_lines(results, names[0]) if len(names) > 1 else []
    print("\n" + "\n".join(paired))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "command": " ".join(sys.argv),
            "seed": args.seed,
            "folds": args.folds,
            "repeats": args.repeats,
            "train_views": args.train_views,
            "machine": machine(),
            "extract_seconds": cache.extract_seconds,
            "table": lines,
            "paired": paired,
            "results": results,
        }
        args.out.write_text(json.dumps(payload, indent=1, default=float))


if __name__ == "__main__":
    main()
