"""Fine-tune the last backbone block(s) on cached inputs: one leave-one-source-out run.

The protocol of ``openworld_heads.py`` (MSLD patient-grouped folds, the held-out source scored
by every fold model, validation carved from the training groups, thresholds on validation)
with the ``binary-source-style`` head as the start: a source-balanced logistic regression on
the pooled embeddings is written into the model's head, then the blocks from ``--start`` on,
the final convolution and the head are fine-tuned together (AdamW, lr ``--lr``, weighted
binary cross-entropy, ``--epochs`` epochs; the epoch with the lowest weighted validation loss
is kept, epoch 0 being the head alone). Inputs: the cached block-13 inputs of
``openworld_cache.py`` (run through the frozen blocks before ``--start`` once).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/openworld_tail.py --cache CACHE \
        --held healthy-abdomen --start 15 --epochs 3 --out tail.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mpoxscan.models import create_model
from openworld_common import load_cache
from openworld_heads import (
    fast_auc,
    fit_linear,
    group_split,
    msld_folds,
    sample_weights,
    threshold_for,
)

CACHED_START = 13
VIEWS = (0, 1, 3)


def rows_of(cache, idx, views):
    have = np.zeros_like(cache.have[idx])
    have[:, list(views)] = cache.have[idx][:, list(views)]
    rows, cols = np.nonzero(have)
    return rows, cols, have.sum(axis=1)


@torch.no_grad()
def to_start(model, blocks: np.ndarray, start: int) -> torch.Tensor:
    """Cached block-13 inputs run through the frozen blocks 13 .. start-1."""
    x = torch.from_numpy(blocks.astype(np.float32))
    if start == CACHED_START:
        return x
    model.eval()
    return torch.cat([model._run_blocks(c, range(CACHED_START, start)) for c in x.split(256)])


@torch.no_grad()
def logits(model, x: torch.Tensor, start: int) -> np.ndarray:
    model.eval()
    out = [model.forward_head(model.forward_from(c, start))[:, 0] for c in x.split(256)]
    return torch.cat(out).numpy()


def weighted_bce(z, y, w):
    return (
        torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none") * w
    ).sum() / w.sum()


def run_fold(cache, train, val, tests, args):
    torch.manual_seed(0)
    model = create_model("efficientnet-lite0", num_outputs=1, pretrained=True)
    y_all = np.array([p.mpox for p in cache.photos]).astype(np.float32)
    # Head start: the source-balanced logistic regression on pooled embeddings.
    rows, cols, n_views = rows_of(cache, train, VIEWS)
    w_photo = sample_weights(cache, train, (y_all[train] == 0).astype(int), "source") / n_views
    x = cache.emb[train][rows, cols]
    mean, scale = x.mean(0), x.std(0) + 1e-6
    layer = fit_linear(
        ((x - mean) / scale).astype(np.float32),
        y_all[train][rows].astype(int),
        w_photo[rows],
        2,
        0.1,
    )
    w = (layer.weight[1] - layer.weight[0]).detach().numpy() / scale
    b = float(layer.bias[1] - layer.bias[0]) - float(w @ mean)
    with torch.no_grad():
        model.head[-1].weight.copy_(torch.from_numpy(w[None].astype(np.float32)))
        model.head[-1].bias.fill_(b)
    x_train = to_start(model, cache.blocks[train][rows, cols], args.start)
    y_train = torch.from_numpy(y_all[train][rows])
    w_train = torch.from_numpy(w_photo[rows].astype(np.float32))
    x_val = to_start(model, cache.blocks[val][:, 0], args.start)
    y_val = torch.from_numpy(y_all[val])
    w_val = torch.from_numpy(
        sample_weights(cache, val, (y_all[val] == 0).astype(int), "source").astype(np.float32)
    )
    model.freeze_blocks_before(args.start)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    best = (
        float(weighted_bce(torch.from_numpy(logits(model, x_val, args.start)), y_val, w_val)),
        0,
    )
    best_state = copy.deepcopy(model.state_dict())
    gen = torch.Generator().manual_seed(0)
    for epoch in range(1, args.epochs + 1):
        model.train()
        for batch in torch.randperm(len(x_train), generator=gen).split(64):
            z = model.forward_head(model.forward_from(x_train[batch], args.start))[:, 0]
            loss = weighted_bce(z, y_train[batch], w_train[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
        val_loss = float(
            weighted_bce(torch.from_numpy(logits(model, x_val, args.start)), y_val, w_val)
        )
        print(f"    epoch {epoch}: val loss {val_loss:.4f}", flush=True)
        if val_loss < best[0]:
            best = (val_loss, epoch)
            best_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    p_val = 1 / (1 + np.exp(-logits(model, x_val, args.start)))
    is_mpox = y_val.numpy() == 1
    thresholds = {t: threshold_for(p_val[is_mpox], t) for t in (0.9, 0.95)}
    scored = {
        name: 1
        / (
            1
            + np.exp(
                -logits(model, to_start(model, cache.blocks[rows][:, 0], args.start), args.start)
            )
        )
        for name, rows in tests.items()
    }
    return scored, thresholds, best[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--held", required=True)
    parser.add_argument("--start", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--val", type=float, default=0.2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cache = load_cache(args.cache, blocks=True)
    photos = cache.photos
    held_rows = np.array([i for i, p in enumerate(photos) if p.source == args.held])
    held_groups = {photos[i].group for i in held_rows}
    calls = {t: np.zeros(len(held_rows)) for t in (0.9, 0.95)}
    msld = {t: [] for t in (0.9, 0.95)}
    all_rows, all_p, epochs = [], [], []
    for k, test in enumerate(msld_folds(cache, 0)):
        start = time.time()
        test_set = set(test.tolist())
        pool = np.array(
            [
                i
                for i, p in enumerate(photos)
                if i not in test_set and p.source != args.held and p.group not in held_groups
            ]
        )
        train, val = group_split(cache, pool, args.val, k)
        scored, thresholds, epoch = run_fold(
            cache, train, val, {"msld": test, "held": held_rows}, args
        )
        epochs.append(epoch)
        all_rows.append(test)
        all_p.append(scored["msld"])
        for t, thr in thresholds.items():
            calls[t] += scored["held"] >= thr
            msld[t].append(scored["msld"] >= thr)
        print(f"  fold {k}: best epoch {epoch}, {time.time() - start:.0f} s", flush=True)
    rows = np.concatenate(all_rows)
    y = np.array([photos[i].mpox for i in rows])
    p = np.concatenate(all_p)
    result = {"held": args.held, "start": args.start, "epochs": epochs, "auc": fast_auc(y, p)}
    for t in (0.9, 0.95):
        called = np.concatenate(msld[t])
        result[f"sens@{t}"] = [int(called[y].sum()), int(y.sum())]
        result[f"others_called@{t}"] = [int(called[~y].sum()), int((~y).sum())]
        result[f"held_called@{t}"] = float(calls[t].mean() / 5)
    print(json.dumps(result))
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
