"""Shortcut check: how well a linear probe on the frozen Lite0 embeddings tells the sources apart.

If a linear probe names a photo's source from its embedding far above chance, a head trained on
those embeddings can learn "looks like MSLD" instead of "looks like mpox" (every mpox photo is
from MSLD). Reads the cache of ``openworld_cache.py`` (view 0, the photo as served); 5-fold
``StratifiedGroupKFold`` by photo group, stratified by source; multinomial logistic regression
on standardised embeddings, classes balanced, ``C`` fixed at ``--c``. Also the probe for MSLD
against the rest among the *negative* photos only (MSLD "Others" vs every other negative): the
same disease-free question, "is this an MSLD photo?".

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/openworld_shortcuts.py --cache CACHE_DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openworld_common import SOURCES, fmt_share, load_cache


def grouped_oof(x, y, groups, c, seed=0, proba=False):
    """Out-of-fold predictions (or positive-class probabilities) of the probe."""
    out = np.zeros(len(y)) if proba else np.empty(len(y), dtype=y.dtype)
    kfold = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed)
    for train, test in kfold.split(x, y, groups):
        scaler = StandardScaler().fit(x[train])
        model = LogisticRegression(C=c, class_weight="balanced", max_iter=3000)
        model.fit(scaler.transform(x[train]), y[train])
        xt = scaler.transform(x[test])
        out[test] = model.predict_proba(xt)[:, 1] if proba else model.predict(xt)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--c", type=float, default=0.1)
    args = parser.parse_args()
    cache = load_cache(args.cache)
    x = cache.emb[:, 0]
    source = np.array([p.source for p in cache.photos])
    groups = np.array([p.group for p in cache.photos])
    predicted = grouped_oof(x, source, groups, args.c)
    correct = int((predicted == source).sum())
    print(f"source probe, {len(SOURCES)} sources: accuracy {fmt_share(correct, len(source))}")
    print(f"  balanced accuracy {balanced_accuracy_score(source, predicted):.3f} (chance 0.200)")
    for s in SOURCES:
        members = source == s
        hits = int((predicted[members] == s).sum())
        print(f"  {s}: recall {fmt_share(hits, int(members.sum()))}")
    negative = np.array([not p.mpox for p in cache.photos])
    is_msld = (source == "msld-v1")[negative]
    p_msld = grouped_oof(x[negative], is_msld.astype(int), groups[negative], args.c, proba=True)
    named = fmt_share(int((p_msld[is_msld] >= 0.5).sum()), int(is_msld.sum()))
    print(
        f"MSLD 'Others' vs all other negatives: ROC AUC {roc_auc_score(is_msld, p_msld):.3f}; "
        f"MSLD Others named MSLD at 0.5: {named}"
    )


if __name__ == "__main__":
    main()
