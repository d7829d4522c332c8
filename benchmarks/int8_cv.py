"""Patient-grouped cross-validated ROC AUC of the int8 network against fp32 on MSLD.

Run: ``.venv/bin/python benchmarks/int8_cv.py --bundle B`` where ``B`` is a copy of
``models/default`` after ``mpoxscan export --model-dir B --format onnx --quantize int8``
(its ``model.int8.onnx`` is used even if the export refused it: pass ``--int8 PATH``).

The default recipe trains a logistic head on the frozen backbone's pooled embeddings, so the
int8 question is whether the int8 backbone's embeddings still separate the classes. Both
graphs embed every MSLD photo (read with ``read_photo``); for each patient-grouped fold (5
folds x 3 repeats, ``grouped_folds``) a head is fitted as the recipe does (standardised
embeddings, class-balanced L2 logistic regression, C chosen on the fold's validation
patients) on the fp32 embeddings of the training patients, and scored on the out-of-fold
photos embedded by fp32 and by int8: what a deployed int8 bundle does with a head trained in
float. Prints the per-fold and mean ROC AUC of both and their difference.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score

from _common import REPO_ROOT, machine
from mpoxscan.data.datasets import scan_dataset
from mpoxscan.data.photos import photo_pixels, read_photo
from mpoxscan.data.splits import grouped_folds
from mpoxscan.inference.onnx_runtime import OnnxModel

CS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


def embeddings(model: OnnxModel, pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([model.run(pixels[i : i + 16])[1] for i in range(0, len(pixels), 16)])


def fit_head(x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray):
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    best = None
    for c in CS:
        head = LogisticRegression(C=c, class_weight="balanced", max_iter=5000)
        head.fit((x - mean) / scale, y)
        loss = log_loss(y_val, head.predict_proba((x_val - mean) / scale)[:, 1], labels=[0, 1])
        if best is None or loss < best[0]:
            best = (loss, head)
    head = best[1]
    return lambda z: head.predict_proba((z - mean) / scale)[:, 1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--int8", type=Path, help="default: BUNDLE/model.int8.onnx")
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared/data/msld-v1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    records = scan_dataset(args.data).records
    pixels = np.stack(
        [photo_pixels(read_photo(r.path, 224), 224).transpose(2, 0, 1) for r in records]
    ).astype(np.float32)
    fp32 = embeddings(OnnxModel(args.bundle / "model.onnx", threads=2), pixels)
    int8 = embeddings(OnnxModel(args.int8 or args.bundle / "model.int8.onnx", threads=2), pixels)
    labels = np.array([r.class_name == "Monkey Pox" for r in records], dtype=int)
    index = {r.path: i for i, r in enumerate(records)}
    print("| fold | fp32 AUC | int8 AUC | difference |")
    print("|---|---|---|---|")
    aucs = []
    folds = grouped_folds(records, n_folds=5, repeats=args.repeats, seed=args.seed)
    for fold in folds:
        train, val, test = (
            [index[r.path] for r in part] for part in (fold.train, fold.val, fold.test)
        )
        head = fit_head(fp32[train], labels[train], fp32[val], labels[val])
        pair = [roc_auc_score(labels[test], head(x[test])) for x in (fp32, int8)]
        aucs.append(pair)
        name = f"r{fold.repeat} f{fold.index}"
        print(f"| {name} | {pair[0]:.4f} | {pair[1]:.4f} | {pair[1] - pair[0]:+.4f} |")
    mean = np.mean(aucs, axis=0)
    print(f"| mean | {mean[0]:.4f} | {mean[1]:.4f} | {mean[1] - mean[0]:+.4f} |")
    print(f"after: {machine()}")


if __name__ == "__main__":
    main()
