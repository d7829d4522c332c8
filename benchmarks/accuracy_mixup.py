"""Mixup on frozen EfficientNet-Lite0 embeddings (manifold mixup in embedding space).

Reuses the package's seed-0 patient-grouped folds (5 x 2, the selection table's) and the cached
10-view Lite0 embeddings of the default augmentation (``runs/feature-cache``), so no forward
pass is repeated: the script counts cache writes and reports them (0 means every embedding was
read from the cache).

For every fold and variant (no mixup = control; mixup with alpha 0.2 and 0.4) a logistic head
(one linear layer) is trained in torch on standardised embeddings (mean/SD of the fold's
training rows, every training view a row): Adam, lr 1e-3, batch 64, class-balanced BCE
(``pos_weight`` = negatives / positives, as the package's loss), an L2 penalty
``0.5 * wd * ||w||^2`` with ``wd`` chosen from a small grid by the fold's validation log loss,
early stopping on validation loss (patience 15, up to 150 epochs; the best epoch's weights
are kept). Mixup: each row of a batch is mixed with a random other row of the same batch,
``lam ~ Beta(alpha, alpha)`` per row, the soft label mixed the same way. Validation and test
use view 0 only (no TTA), as the ``lite0-frozen-logreg-notta`` default. Every choice (wd,
epoch) is made on the fold's validation part; each test fold is scored once at p = 0.5.

Usage (from the repository root):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/accuracy_mixup.py --out runs/accuracy/mixup
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mpoxscan.data.loading import ImageDataset
from mpoxscan.data.splits import grouped_folds
from mpoxscan.evaluation.metrics import binary_metrics, summarize_folds, to_jsonable
from mpoxscan.training.config import DataConfig, ModelConfig, TrainConfig
from mpoxscan.training.frozen_features import FeatureCache, embed_dataset
from mpoxscan.training.recipes import build_model, load_index

KEYS = ("accuracy", "roc_auc", "sensitivity", "specificity", "log_loss")
WD_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)
VARIANTS = {"control": 0.0, "mixup-0.2": 0.2, "mixup-0.4": 0.4}


class CountingCache(FeatureCache):
    """A :class:`FeatureCache` that counts writes (a write = embeddings were computed)."""

    def __init__(self, cache_dir: str | Path | None = None):
        super().__init__(cache_dir)
        self.writes = 0

    def put(self, key: str, array: np.ndarray) -> None:
        self.writes += 1
        super().put(key, array)


def train_head(
    x_tr: torch.Tensor,
    y_tr: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    alpha: float,
    wd: float,
    seed: int,
    epochs: int = 150,
    patience: int = 15,
    batch_size: int = 64,
    lr: float = 1e-3,
) -> tuple[nn.Linear, float, int]:
    """Fit one linear head; returns it (best epoch's weights), its val loss and best epoch."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = nn.Linear(x_tr.shape[1], 1)
    n_pos = float(y_tr.sum())
    pos_weight = torch.tensor((len(y_tr) - n_pos) / max(n_pos, 1.0))
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    beta = torch.distributions.Beta(alpha, alpha) if alpha > 0 else None
    best = (float("inf"), 0, None)
    stale = 0
    for epoch in range(1, epochs + 1):
        for batch in torch.randperm(len(x_tr), generator=gen).split(batch_size):
            xb, yb = x_tr[batch], y_tr[batch]
            if beta is not None:
                lam = beta.sample((len(batch),)).clamp(0, 1)
                # Beta sampling uses torch's global generator (seeded above).
                partner = torch.randperm(len(batch), generator=gen)
                xb = lam[:, None] * xb + (1 - lam[:, None]) * xb[partner]
                yb = lam * yb + (1 - lam) * yb[partner]
            loss = loss_fn(head(xb).squeeze(1), yb) + 0.5 * wd * head.weight.pow(2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            val_loss = float(loss_fn(head(x_val).squeeze(1), y_val))
        if val_loss < best[0]:
            best = (val_loss, epoch, {k: v.clone() for k, v in head.state_dict().items()})
            stale = 0
        else:
            stale += 1
            if stale >= patience:
                break
    head.load_state_dict(best[2])
    return head, best[0], best[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/msld-v1")
    parser.add_argument("--cache", default="runs/feature-cache")
    parser.add_argument("--out", type=Path, default=Path("runs/accuracy/mixup"))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the head.")
    parser.add_argument("--max-folds", type=int, default=None, help="Smoke test: stop early.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()

    train_cfg = TrainConfig(seed=args.seed)  # default augmentation: the cached views
    views = train_cfg.features.train_views
    index = load_index(DataConfig(data_dir=args.data))
    model, prep = build_model(ModelConfig(), 1, args.seed)
    cache = CountingCache(args.cache)
    embed = {"augment": train_cfg.augment, "seed": args.seed, "cache": cache}

    folds = grouped_folds(index.records, n_folds=args.folds, repeats=args.repeats, seed=args.seed)
    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for fold in folds[: args.max_folds]:
        ds = {k: ImageDataset(getattr(fold, k), prep.image_size) for k in ("train", "val", "test")}
        e_tr = embed_dataset(model, prep, ds["train"], views, **embed)
        e_val = embed_dataset(model, prep, ds["val"], 1, **embed)[:, 0]
        e_te = embed_dataset(model, prep, ds["test"], 1, **embed)[:, 0]
        rows = e_tr.reshape(-1, e_tr.shape[-1]).astype(np.float64)
        mean, scale = rows.mean(axis=0), rows.std(axis=0) + 1e-6

        def std(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(((a - mean) / scale).astype(np.float32))  # noqa: B023

        x_tr, x_val, x_te = std(rows), std(e_val), std(e_te)
        y_tr = ds["train"].labels.float().repeat_interleave(views)
        y_val = ds["val"].labels.float()
        y_te = ds["test"].labels.numpy()
        groups = [r.patient for r in ds["test"].records]
        for name, alpha in VARIANTS.items():
            fits = [
                (
                    wd,
                    *train_head(
                        x_tr, y_tr, x_val, y_val, alpha=alpha, wd=wd, seed=args.seed, lr=args.lr
                    ),
                )
                for wd in WD_GRID
            ]
            wd, head, val_loss, epoch = min(fits, key=lambda f: f[2])
            with torch.no_grad():
                p = torch.sigmoid(head(x_te).squeeze(1)).numpy()
            metrics = binary_metrics(y_te, p, threshold=0.5, groups=groups, n_boot=0)
            results[name].append(
                {
                    "fold": fold.index,
                    "repeat": fold.repeat,
                    "wd": wd,
                    "epoch": epoch,
                    "val_loss": val_loss,
                    "metrics": metrics,
                }
            )
            print(
                f"fold {fold.repeat}/{fold.index} {name}: wd={wd} epoch={epoch} "
                f"val_loss={val_loss:.3f} acc={metrics['accuracy']:.3f} "
                f"auc={metrics['roc_auc']:.3f}",
                flush=True,
            )
    summary = {
        "cache_writes": cache.writes,
        "wall_s": time.time() - t0,
        "wd_grid": WD_GRID,
        "lr": args.lr,
        "variants": {
            name: {
                "mean_std": summarize_folds([r["metrics"] for r in res], KEYS),
                "folds": res,
            }
            for name, res in results.items()
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(to_jsonable(summary), indent=2))
    print(f"cache writes (embeddings computed): {cache.writes}")
    for name in VARIANTS:
        ms = summary["variants"][name]["mean_std"]
        print(name, {k: f"{ms[k]['mean']:.3f} ± {ms[k]['std']:.3f}" for k in KEYS})
    print(f"wall_s: {summary['wall_s']:.0f}")


if __name__ == "__main__":
    main()
