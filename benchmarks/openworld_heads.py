"""Open-world head recipes on cached Lite0 views: MSLD patient-grouped CV and leave-one-source-out.

Reads the cache of ``openworld_cache.py``. One *run* is a held-out source ``s`` (or none) and
five MSLD folds (``StratifiedGroupKFold`` by patient group, seed ``--seed``). In fold ``k`` the
test part is MSLD fold ``k`` (and, for a LOSO run, every photo of ``s``); the rest, minus
every group that touches ``s``, is split by group into training and validation (``--val``
of the groups of every source and class). Validation chooses the L2 strength (weighted log
loss) and the screening threshold (the highest one whose MSLD mpox sensitivity on validation
reaches ``--target``); test parts are only scored, one view per photo (the photo itself,
as the served model sees it).

Figures: with no source held out, MSLD mpox-vs-others ROC AUC of the pooled out-of-fold
probabilities (patient-bootstrap 95% interval), MSLD mpox sensitivity at the fold thresholds
(Wilson interval); per LOSO run, the share of the held-out source called mpox, pooled over
the five fold models (each photo counted five times; the interval uses the photo count). The
"no lesion" head (a healthy class of the multi-class heads) gets its own threshold on
validation: the lowest one calling at most ``--lesion-fpr`` of validation lesion photos
healthy; its figures are the share of healthy / lesion test photos it calls "no lesion".

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/openworld_heads.py --cache CACHE_DIR \
        --variants binary-class,multi-class,multi-source --out heads.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openworld_common import (
    COARSE,
    NEGATIVE_SOURCES,
    PLAIN_VIEWS,
    STYLE_VIEWS,
    Cache,
    fmt_share,
    load_cache,
)

L2_GRID = (1e-4, 1e-3, 1e-2, 3e-2, 1e-1)
HEALTHY = COARSE.index("healthy")


@dataclass(frozen=True)
class Variant:
    """A head recipe: label set, sample weighting and training views."""

    labels: str  # "binary" (mpox vs rest) or "multi" (the COARSE classes)
    weights: str  # "class" (classes balanced) or "source" (also (source, class) cells)
    views: tuple[int, ...]
    msld_only: bool = False  # train on MSLD alone (today's recipe), score the rest


VARIANTS = {
    "msld-only": Variant("binary", "class", PLAIN_VIEWS, msld_only=True),
    "binary-class": Variant("binary", "class", PLAIN_VIEWS),
    "binary-source": Variant("binary", "source", PLAIN_VIEWS),
    "multi-class": Variant("multi", "class", PLAIN_VIEWS),
    "multi-source": Variant("multi", "source", PLAIN_VIEWS),
    "multi-source-style": Variant("multi", "source", (0, 1, 3)),
    "multi-source-all": Variant("multi", "source", PLAIN_VIEWS + STYLE_VIEWS),
    "binary-source-style": Variant("binary", "source", (0, 1, 3)),
}


def targets(cache: Cache, variant: Variant) -> np.ndarray:
    """Training label of every photo: 0 mpox / 1 rest, or the coarse class."""
    coarse = np.array([p.coarse for p in cache.photos])
    return coarse if variant.labels == "multi" else (coarse != 0).astype(int)


def sample_weights(cache: Cache, idx: np.ndarray, y: np.ndarray, scheme: str) -> np.ndarray:
    """Weights of photos ``idx`` (labels ``y``): every label class the same total weight, and
    with ``"source"`` every (source, coarse class) cell inside a label class the same too."""
    w = np.zeros(len(idx))
    cells = np.array([f"{cache.photos[i].source}|{cache.photos[i].coarse}" for i in idx])
    for label in np.unique(y):
        in_label = y == label
        if scheme == "class":
            w[in_label] = 1.0 / in_label.sum()
            continue
        label_cells = np.unique(cells[in_label])
        for cell in label_cells:
            members = in_label & (cells == cell)
            w[members] = 1.0 / (members.sum() * len(label_cells))
    return w * len(idx) / w.sum()


def fit_linear(x, y, w, n_classes, l2, iters=100):
    """Weighted multinomial logistic regression (full-batch L-BFGS), on standardised x."""
    x_t, y_t, w_t = torch.from_numpy(x), torch.from_numpy(y).long(), torch.from_numpy(w).float()
    layer = torch.nn.Linear(x.shape[1], n_classes)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    opt = torch.optim.LBFGS(layer.parameters(), max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        ce = torch.nn.functional.cross_entropy(layer(x_t), y_t, reduction="none")
        loss = (ce * w_t).sum() / w_t.sum() + l2 * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return layer


def weighted_loss(layer, x, y, w) -> float:
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(
            layer(torch.from_numpy(x)), torch.from_numpy(y).long(), reduction="none"
        )
    return float((ce.numpy() * w).sum() / w.sum())


def softmax_np(layer, x) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(layer(torch.from_numpy(x)), dim=1).numpy()


def threshold_for(p_mpox: np.ndarray, target: float) -> float:
    """Highest threshold whose sensitivity on these mpox scores reaches ``target``."""
    ranked = np.sort(p_mpox)[::-1]
    return float(ranked[int(np.ceil(target * len(ranked))) - 1])


def lesion_threshold(p_healthy: np.ndarray, lesion: np.ndarray, fpr: float) -> float:
    """Lowest healthy-probability threshold calling at most ``fpr`` of lesion photos healthy."""
    ranked = np.sort(p_healthy[lesion])[::-1]
    k = int(np.floor(fpr * len(ranked)))
    return float(ranked[k]) + 1e-9 if k < len(ranked) else 0.0


def group_split(cache: Cache, pool: np.ndarray, frac: float, seed: int):
    """Split photo indices ``pool`` by group, ``frac`` of each (source, class)'s groups to val."""
    rng = np.random.default_rng(seed)
    strata: dict[str, set[str]] = {}
    for i in pool:
        p = cache.photos[i]
        strata.setdefault(f"{p.source}|{p.class_name}", set()).add(p.group)
    val_groups: set[str] = set()
    for groups in strata.values():
        ordered = sorted(groups)
        rng.shuffle(ordered)
        val_groups.update(ordered[: max(1, round(frac * len(ordered)))])
    is_val = np.array([cache.photos[i].group in val_groups for i in pool])
    return pool[~is_val], pool[is_val]


def msld_folds(cache: Cache, seed: int, n_folds: int = 5):
    msld = np.array([i for i, p in enumerate(cache.photos) if p.source == "msld-v1"])
    y = np.array([cache.photos[i].mpox for i in msld])
    groups = np.array([cache.photos[i].group for i in msld])
    kfold = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [msld[test] for _, test in kfold.split(msld, y, groups)]


def run_fold(cache, variant, features, train, val, tests, args, *, no_lesion=True):
    """Fit one fold; returns per-test-set ``(p_mpox, p_healthy)``, the screening thresholds,
    the no-lesion threshold and the chosen L2 (``no_lesion=False``: no no-lesion head, its
    probabilities and threshold ``None``)."""
    y_all = targets(cache, variant)
    n_classes = int(y_all.max()) + 1
    # Every photo weighs the same whatever its number of views (MSLD has more).
    have = np.zeros_like(cache.have[train])
    have[:, list(variant.views)] = cache.have[train][:, list(variant.views)]
    rows, cols = np.nonzero(have)
    x_train = features[train][rows, cols]
    y_train = y_all[train][rows]
    w_photo = sample_weights(cache, train, y_all[train], variant.weights) / have.sum(axis=1)
    w_train = w_photo[rows]
    mean, scale = x_train.mean(0), x_train.std(0) + 1e-6

    def std(x):
        return ((x - mean) / scale).astype(np.float32)

    x_val, y_val = std(features[val][:, 0]), y_all[val]
    w_val = sample_weights(cache, val, y_val, variant.weights)
    best = None
    for l2 in args.l2:
        layer = fit_linear(std(x_train), y_train, w_train, n_classes, l2)
        loss = weighted_loss(layer, x_val, y_val, w_val)
        if best is None or loss < best[0]:
            best = (loss, l2, layer)
    _, l2, layer = best
    p_val = softmax_np(layer, x_val)
    is_mpox = np.array([cache.photos[i].mpox for i in val])
    thresholds = {t: threshold_for(p_val[is_mpox, 0], t) for t in args.target}
    healthy_head = fit_no_lesion(cache, features, train, val, args, std) if no_lesion else None
    scored = {}
    for name, rows in tests.items():
        x = features[rows] if rows.ndim == 1 else rows
        x = std(x[:, 0] if x.ndim == 3 else x)
        p_healthy = None if healthy_head is None else softmax_np(healthy_head[0], x)[:, 1]
        scored[name] = (softmax_np(layer, x)[:, 0], p_healthy)
    return scored, thresholds, None if healthy_head is None else healthy_head[1], l2


def fit_no_lesion(cache, features, train, val, args, std):
    """The "no lesion seen" head as ``mpoxscan`` fits it: healthy skin against every lesion
    photo (view 0, classes balanced), L2 on validation loss, threshold on validation for at
    most ``--lesion-fpr`` of lesion photos; ``None`` without healthy photos in training."""
    y_train = np.array([cache.photos[i].coarse == HEALTHY for i in train]).astype(int)
    y_val = np.array([cache.photos[i].coarse == HEALTHY for i in val]).astype(int)
    if y_train.min() == y_train.max() or y_val.min() == y_val.max():
        return None
    x_train, x_val = std(features[train][:, 0]), std(features[val][:, 0])
    w_train = np.where(y_train == 1, 0.5 / y_train.mean(), 0.5 / (1 - y_train.mean()))
    w_val = np.where(y_val == 1, 0.5 / y_val.mean(), 0.5 / (1 - y_val.mean()))
    best = None
    for l2 in (1e-3, 1e-2, 1e-1):
        layer = fit_linear(x_train, y_train, w_train, 2, l2)
        loss = weighted_loss(layer, x_val, y_val, w_val)
        if best is None or loss < best[0]:
            best = (loss, layer)
    layer = best[1]
    p_val = softmax_np(layer, x_val)[:, 1]
    return layer, lesion_threshold(p_val, y_val == 0, args.lesion_fpr)


def fast_auc(y, p) -> float:
    """ROC AUC from ranks (ties counted half), as ``roc_auc_score`` gives, without its checks."""
    ranks = rankdata(p)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def bootstrap_auc(y, p, groups, n=1000, seed=0):
    rng = np.random.default_rng(seed)
    uniq = np.unique(groups)
    members = {g: np.flatnonzero(groups == g) for g in uniq}
    aucs = []
    for _ in range(n):
        rows = np.concatenate([members[g] for g in rng.choice(uniq, len(uniq))])
        if len(np.unique(y[rows])) == 2:
            aucs.append(fast_auc(y[rows], p[rows]))
    return np.percentile(aucs, [2.5, 97.5])


def evaluate(cache: Cache, variant: Variant, args) -> dict:
    features = cache.emb
    folds = msld_folds(cache, args.seed)
    photos = cache.photos
    out: dict = {"variant": args.current, "msld": {}, "loso": {}}
    for held in ("none", *NEGATIVE_SOURCES):
        start = time.time()
        held_rows = np.array([i for i, p in enumerate(photos) if p.source == held], dtype=int)
        held_groups = {photos[i].group for i in held_rows}
        oof = {t: [] for t in args.target}
        msld_scores, probe_scores = [], {name: [] for name in cache.probes}
        held_calls = {t: np.zeros(len(held_rows)) for t in args.target}
        held_nolesion = np.zeros(len(held_rows))
        for k, test in enumerate(folds):
            test_set = set(test.tolist())
            pool = np.array(
                [
                    i
                    for i, p in enumerate(photos)
                    if i not in test_set
                    and p.source != held
                    and p.group not in held_groups
                    and (p.source == "msld-v1" or not variant.msld_only)
                ]
            )
            train, val = group_split(cache, pool, args.val, args.seed + k)
            msld_index = np.flatnonzero([p.source == "msld-v1" for p in photos])
            pos_in_msld = np.searchsorted(msld_index, test)
            tests = {"msld": test}
            if held != "none":
                tests["held"] = held_rows
            else:
                for name, probe in cache.probes.items():
                    tests[f"probe:{name}"] = probe[pos_in_msld]
            scored, thresholds, t_healthy, l2 = run_fold(
                cache, variant, features, train, val, tests, args
            )
            p_msld, h_msld = scored["msld"]
            msld_scores.append((test, p_msld, thresholds, h_msld, t_healthy, l2))
            for t, thr in thresholds.items():
                oof[t].append(p_msld >= thr)
                if held != "none":
                    held_calls[t] += scored["held"][0] >= thr
            if held != "none" and t_healthy is not None:
                held_nolesion += scored["held"][1] >= t_healthy
            if held == "none":
                for name in cache.probes:
                    probe_scores[name].append((scored[f"probe:{name}"][0], thresholds))
        rows = np.concatenate([s[0] for s in msld_scores])
        p = np.concatenate([s[1] for s in msld_scores])
        y = np.array([photos[i].mpox for i in rows])
        groups = np.array([photos[i].group for i in rows])
        auc = roc_auc_score(y, p)
        result = {"auc": auc, "l2": [s[5] for s in msld_scores], "seconds": time.time() - start}
        for t in args.target:
            called = np.concatenate(oof[t])
            result[f"sens@{t}"] = [int(called[y].sum()), int(y.sum())]
            result[f"others_called@{t}"] = [int(called[~y].sum()), int((~y).sum())]
        if held == "none":
            result["auc_ci"] = list(bootstrap_auc(y, p, groups))
            if msld_scores[0][4] is not None:
                # MSLD photos the page would call "no lesion": the head fires and the band is
                # low (below half the screening threshold).
                t_top = max(args.target)
                fired = np.concatenate(
                    [(s[3] >= s[4]) & (s[1] < s[2][t_top] / 2) for s in msld_scores]
                )
                result["msld_no_lesion"] = {
                    "mpox": [int(fired[y].sum()), int(y.sum())],
                    "others": [int(fired[~y].sum()), int((~y).sum())],
                }
            result["probes"] = {}
            for name, parts in probe_scores.items():
                pp = np.concatenate([q[0] for q in parts])
                entry = {"auc": roc_auc_score(y, pp)}
                for t in args.target:
                    called = np.concatenate([q[0] >= q[1][t] for q in parts])
                    entry[f"sens@{t}"] = [int(called[y].sum()), int(y.sum())]
                entry["mean_p_mpox_change"] = float((pp[y] - p[y]).mean())
                result["probes"][name] = entry
            out["msld"] = result
        else:
            n_folds = len(folds)
            per_class = {}
            for cls in sorted({photos[i].class_name for i in held_rows}):
                members = np.array([photos[i].class_name == cls for i in held_rows])
                per_class[cls] = {
                    f"called@{t}": float(held_calls[t][members].mean() / n_folds)
                    for t in args.target
                } | {"n": int(members.sum())}
                if t_healthy is not None:
                    per_class[cls]["no_lesion"] = float(held_nolesion[members].mean() / n_folds)
            result["called"] = {
                str(t): float(held_calls[t].mean() / n_folds) for t in args.target
            } | {"n": len(held_rows)}
            result["per_class"] = per_class
            out["loso"][held] = result
        print(f"  {held}: {time.time() - start:.0f} s", flush=True)
    return out


def print_summary(res: dict, targets_: list[float]) -> None:
    m = res["msld"]
    print(
        f"== {res['variant']}: MSLD AUC {m['auc']:.3f} ({m['auc_ci'][0]:.3f}-{m['auc_ci'][1]:.3f})"
    )
    for t in targets_:
        k, n = m[f"sens@{t}"]
        ko, no = m[f"others_called@{t}"]
        print(f"   target {t}: sens {fmt_share(k, n)}; MSLD others called {fmt_share(ko, no)}")
        for src, r in res["loso"].items():
            share = r["called"][str(t)]
            n_src = r["called"]["n"]
            print(f"     LOSO {src}: called mpox {fmt_share(round(share * n_src), n_src)}")
            for cls, c in r["per_class"].items():
                if cls == "Healthy" or len(r["per_class"]) <= 10:
                    extra = f", no-lesion {100 * c['no_lesion']:.1f}%" if "no_lesion" in c else ""
                    print(f"        {cls} (n={c['n']}): {100 * c[f'called@{t}']:.1f}%{extra}")
    if "msld_no_lesion" in m:
        print(f"   MSLD called no-lesion (band low): {m['msld_no_lesion']}")
    for name, e in m.get("probes", {}).items():
        parts = ", ".join(f"sens@{t} {e[f'sens@{t}'][0]}/{e[f'sens@{t}'][1]}" for t in targets_)
        print(
            f"   probe {name}: AUC {e['auc']:.3f}, {parts}, mean dp {e['mean_p_mpox_change']:+.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--variants", default="binary-class,multi-source")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val", type=float, default=0.2)
    parser.add_argument("--target", type=float, nargs="*", default=[0.9, 0.95])
    parser.add_argument("--l2", type=float, nargs="*", default=list(L2_GRID))
    parser.add_argument("--lesion-fpr", type=float, default=0.02)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tag", default="", help="suffix of the variant names in --out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cache = load_cache(args.cache)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for name in args.variants.split(","):
        args.current = key = name + args.tag
        print(f"variant {key}", flush=True)
        results[key] = evaluate(cache, VARIANTS[name], args)
        args.out.write_text(json.dumps(results, indent=1))
        print_summary(results[key], args.target)


if __name__ == "__main__":
    main()
