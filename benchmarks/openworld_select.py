"""Nested selection of the open-world head recipe on validation data only (issue 13).

Candidates: the binary logistic head of ``openworld_heads.py`` (L2 strength chosen on
validation loss, threshold for ``--target`` MSLD mpox sensitivity on validation) with the
variants ``mpoxscan train`` expresses through ``TrainConfig.features``: ``balance`` class or
source, and training views photo + mirror (``train_views`` 2), + one default augmentation
(``train_views`` 3) or + one augmentation after random style changes (``train_views`` 3 and
``style``). The cache has those views for MSLD photos only; the other sources train on the
photo itself (view 0) in every candidate.

Inner criterion (computed only on the data it is given): for every negative source ``s`` in
that data and ``--repeats`` validation splits, train on the rest minus ``s`` (and minus every
photo group that touches ``s``), split by group into training and validation (``--val`` of
the groups of every source and class); validation chooses L2 and the threshold; score
``s`` at that threshold (share called mpox) and the validation MSLD photos (mpox-vs-others
ROC AUC). A candidate's figures: the mean over sources of the share called mpox (each
source weighs the same), and the mean validation AUC. Winner: among the candidates whose
AUC is at most ``--auc-margin`` below the best one, the lowest mean share (ties: higher AUC).

Outer (``--outer``, ``--rotations``, see :func:`outer_folds`): each outer fold tests one
MSLD patient-grouped fold (``StratifiedGroupKFold``, seed ``--seed``) and at most one negative
source. The criterion runs on the rest only, the winner is trained on the rest (its own
validation split) and scored on the test part, so the outer figures estimate the whole
pipeline "select on validation, then train". Every candidate is also scored on the same
outer folds, for comparison only (those figures choose nothing).

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/openworld_select.py --cache CACHE \
        --out select.json --recipe-out benchmarks/recipes/open-world-selected.json
    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/openworld_select.py --cache CACHE \
        --outer --rotations 0 1 2 3 4 --out outer.json
    python benchmarks/openworld_select.py --cache CACHE --out unused --combine outer*.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from mpoxscan.data.style import StyleConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openworld_common import NEGATIVE_SOURCES, Cache, load_cache
from openworld_heads import (
    Variant,
    bootstrap_auc,
    fast_auc,
    group_split,
    msld_folds,
    run_fold,
)
from openworld_table import share

#: Training views of the candidates: name -> (cached views, ``mpoxscan`` train_views, style).
VIEW_SETS = {
    "photo-mirror": ((0, 1), 2, False),
    "default-aug": ((0, 1, 2), 3, False),
    "style-aug": ((0, 1, 3), 3, True),
}
BALANCES = ("class", "source")
CANDIDATES = {
    f"{balance}/{views}": Variant("binary", balance, VIEW_SETS[views][0])
    for balance in BALANCES
    for views in VIEW_SETS
}
#: L2 grid of the benchmark head; l2 = 1 / (C * rows) maps it onto ``mpoxscan``'s C grid
#: (about 3,000-4,500 training rows: C from 1e-4 to 3e-2).
L2_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


def recipe(name: str) -> dict:
    """The ``mpoxscan train --train-config`` JSON of a candidate."""
    balance, views = name.split("/")
    _, train_views, style = VIEW_SETS[views]
    features: dict = {"train_views": train_views, "balance": balance}
    if style:
        features["style"] = asdict(StyleConfig())
    return {"features": features}


def rows_of(cache: Cache, source: str) -> np.ndarray:
    return np.array([i for i, p in enumerate(cache.photos) if p.source == source], dtype=int)


def pool_without(cache: Cache, outside: np.ndarray) -> np.ndarray:
    """Every photo not in ``outside`` whose group touches no photo of ``outside``."""
    out_set = set(outside.tolist())
    out_groups = {cache.photos[i].group for i in outside}
    return np.array(
        [i for i, p in enumerate(cache.photos) if i not in out_set and p.group not in out_groups],
        dtype=int,
    )


def inner_scores(cache: Cache, variant: Variant, test: np.ndarray, args) -> dict:
    """The inner criterion of one candidate on the data outside ``test``."""
    msld = np.array([p.source == "msld-v1" for p in cache.photos])
    mpox = np.array([p.mpox for p in cache.photos])
    held_sources = [s for s in NEGATIVE_SOURCES if not np.isin(rows_of(cache, s), test).any()]
    folds = []
    for source in held_sources:
        held = rows_of(cache, source)
        pool = pool_without(cache, np.concatenate([test, held]))
        for r in range(args.repeats):
            train, val = group_split(cache, pool, args.val, args.seed + r)
            val_msld = val[msld[val]]
            tests = {"held": held, "val": val_msld}
            scored, thresholds, _, l2 = run_fold(
                cache, variant, cache.emb, train, val, tests, args.fit, no_lesion=False
            )
            threshold = thresholds[args.target]
            folds.append(
                {
                    "source": source,
                    "repeat": r,
                    "share": float((scored["held"][0] >= threshold).mean()),
                    "auc": fast_auc(mpox[val_msld], scored["val"][0]),
                    "l2": l2,
                }
            )
    per_source = {
        s: float(np.mean([f["share"] for f in folds if f["source"] == s])) for s in held_sources
    }
    return {
        "share": float(np.mean(list(per_source.values()))),
        "auc": float(np.mean([f["auc"] for f in folds])),
        "per_source": per_source,
        "folds": folds,
    }


def choose(scores: dict[str, dict], margin: float) -> str:
    """The criterion's winner: lowest mean share among candidates within ``margin`` AUC."""
    best_auc = max(s["auc"] for s in scores.values())
    eligible = [n for n, s in scores.items() if s["auc"] >= best_auc - margin]
    return min(eligible, key=lambda n: (scores[n]["share"], -scores[n]["auc"]))


def select(cache: Cache, test: np.ndarray, args) -> tuple[str, dict]:
    """Run the criterion for every candidate outside ``test``; returns winner and scores."""
    scores = {}
    for name, variant in CANDIDATES.items():
        start = time.time()
        scores[name] = inner_scores(cache, variant, test, args)
        s = scores[name]
        print(
            f"    {name}: mean share {100 * s['share']:.1f}%, val AUC {s['auc']:.3f} "
            f"({time.time() - start:.0f} s)",
            flush=True,
        )
    return choose(scores, args.auc_margin), scores


def outer_folds(rotation: int) -> list[tuple[int, str | None]]:
    """``(MSLD fold, held-out source or None)`` of the outer folds of one rotation: fold ``k``
    holds out MSLD fold ``k`` and the ``(k + rotation) % 5``-th of (the four negative sources,
    none); rotations 0-4 together pair every source with every MSLD fold."""
    cycle = (*NEGATIVE_SOURCES, None)
    return [(k, cycle[(k + rotation) % len(cycle)]) for k in range(len(cycle))]


def outer(cache: Cache, args) -> list[dict]:
    """The nested estimate: select inside each outer fold, score the winner outside.

    Returns one entry per outer fold: the inner scores, the winner, and every candidate's
    test probabilities and threshold (``"selected"``: the winner's).
    """
    folds = msld_folds(cache, args.seed)
    entries = []
    for rotation in args.rotations:
        for k, source in outer_folds(rotation):
            msld_test = folds[k]
            held = rows_of(cache, source) if source else np.zeros(0, int)
            test = np.concatenate([msld_test, held])
            print(f"rotation {rotation}, outer fold {k}: MSLD fold {k}, {source}", flush=True)
            winner, scores = select(cache, test, args)
            print(f"  chosen: {winner}", flush=True)
            train, val = group_split(cache, pool_without(cache, test), args.val, args.seed + k)
            tested = {}
            for name, variant in CANDIDATES.items():
                out, thresholds, _, l2 = run_fold(
                    cache,
                    variant,
                    cache.emb,
                    train,
                    val,
                    {"msld": msld_test, "held": held},
                    args.fit,
                    no_lesion=False,
                )
                tested[name] = {
                    "threshold": thresholds[args.target],
                    "l2": l2,
                    "p_msld": out["msld"][0].tolist(),
                    "p_held": out["held"][0].tolist(),
                }
            tested["selected"] = tested[winner]
            entries.append(
                {
                    "rotation": rotation,
                    "fold": k,
                    "source": source,
                    "msld_rows": msld_test.tolist(),
                    "held_rows": held.tolist(),
                    "winner": winner,
                    "scores": scores,
                    "tested": tested,
                }
            )
    return entries


def calls(entry: dict, name: str, part: str) -> np.ndarray:
    """Which test photos of ``part`` (``"msld"`` or ``"held"``) pipeline ``name`` calls mpox."""
    tested = entry["tested"][name]
    return np.array(tested[f"p_{part}"]) >= tested["threshold"]


def figures(photos, entries: list[dict], name: str) -> dict:
    """Pooled outer figures of one pipeline: MSLD AUC (all folds' probabilities pooled),
    sensitivity and others called, and each held-out source's share called mpox; a photo
    scored in several rotations counts as the mean of its calls (intervals from photo
    counts, as in ``openworld_heads.py``)."""
    rows = np.concatenate([e["msld_rows"] for e in entries])
    p = np.concatenate([e["tested"][name]["p_msld"] for e in entries])
    called = np.concatenate([calls(e, name, "msld") for e in entries])
    y = np.array([photos[i].mpox for i in rows])
    groups = np.array([photos[i].group for i in rows])
    n_rot = len({e["rotation"] for e in entries})
    out = {
        "auc": float(roc_auc_score(y, p)),
        "auc_ci": [float(v) for v in bootstrap_auc(y, p, groups)],
        "sens": [round(called[y].sum() / n_rot), round(y.sum() / n_rot)],
        "others_called": [round(called[~y].sum() / n_rot), round((~y).sum() / n_rot)],
        "held": {},
    }
    for source in NEGATIVE_SOURCES:
        parts = [e for e in entries if e["source"] == source]
        if not parts:
            continue
        held = np.array(parts[0]["held_rows"])
        called = np.mean([calls(e, name, "held") for e in parts], axis=0)
        out["held"][source] = [round(float(called.sum())), len(held)]
        if source == "skin-id-smartphone":
            healthy = np.array([photos[i].class_name == "Healthy" for i in held])
            out["held"]["skin-id Healthy"] = [
                round(float(called[healthy].sum())),
                int(healthy.sum()),
            ]
    return out


def table(photos, entries: list[dict]) -> str:
    """Markdown rows in the columns of the Results tables of ``benchmarks/accuracy.md``."""
    heads = ["pipeline", "MSLD AUC (95% CI)", "MSLD mpox sens. %", "MSLD others %"]
    heads += [f"LOSO {s} %" for s in NEGATIVE_SOURCES] + ["LOSO skin-id Healthy %"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for name in ("selected", *CANDIDATES):
        f = figures(photos, entries, name)
        low, high = f["auc_ci"]
        cells = [f"`{name}`", f"{f['auc']:.3f} ({low:.3f}-{high:.3f})"]
        cells += [share(*f["sens"]), share(*f["others_called"])]
        for key in (*NEGATIVE_SOURCES, "skin-id Healthy"):
            k, n = f["held"].get(key, (0, 0))
            cells.append(f"{share(k, n)}, {k}/{n}" if n else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val", type=float, default=0.2)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--l2", type=float, nargs="*", default=list(L2_GRID))
    parser.add_argument("--repeats", type=int, default=5, help="validation splits per source")
    parser.add_argument("--auc-margin", type=float, default=0.02)
    parser.add_argument("--outer", action="store_true", help="the nested estimate")
    parser.add_argument(
        "--rotations", type=int, nargs="*", default=[0], help="outer rotations (outer_folds)"
    )
    parser.add_argument("--combine", type=Path, nargs="*", help="tables of --outer JSON files")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--recipe-out", type=Path, help="write the winner's train config")
    args = parser.parse_args()
    args.fit = SimpleNamespace(l2=args.l2, target=[args.target])
    torch.set_num_threads(1)
    cache = load_cache(args.cache)
    if args.combine:
        entries = [e for path in args.combine for e in json.loads(path.read_text())]
        for e in entries:
            print(f"rotation {e['rotation']} fold {e['fold']} ({e['source']}): {e['winner']}")
        print(table(cache.photos, entries))
        return
    if args.outer:
        args.out.write_text(json.dumps(outer(cache, args)))
        return
    print("criterion on all data", flush=True)
    winner, scores = select(cache, np.zeros(0, int), args)
    args.out.write_text(json.dumps({"winner": winner, "scores": scores}, indent=1))
    print(f"winner: {winner}; recipe {json.dumps(recipe(winner))}")
    if args.recipe_out:
        args.recipe_out.write_text(json.dumps(recipe(winner), indent=2) + "\n")


if __name__ == "__main__":
    main()
