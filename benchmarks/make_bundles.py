"""Train the 224x224 benchmark bundles (one epoch on generated photos) and export them to ONNX.

Run: ``.venv/bin/python benchmarks/make_bundles.py [MODEL ...]``. The weights are not meant to
be good: the benchmarks time the networks, whose cost does not depend on what they learned.
"""

from __future__ import annotations

import sys

from _common import IMAGE_SIZE, MODELS, WORK_DIR, bundle_dir, make_unsplit_dataset
from mpoxscan.inference.onnx_export import export_onnx
from mpoxscan.training.config import DataConfig, ModelConfig, TrainConfig
from mpoxscan.training.train import train_bundle


def make_bundle(model: str) -> None:
    """Train ``model`` for one epoch at 224x224 and add ``model.onnx`` to its bundle."""
    out = bundle_dir(model)
    if (out / "model.onnx").exists():
        print(f"{out} exists")
        return
    data = WORK_DIR / "train-photos"
    if not data.exists():
        make_unsplit_dataset(data, patients=12, photos=2)
    train_bundle(
        DataConfig(data_dir=str(data)),
        # VGG16's ImageNet weights are a separate download; speed does not depend on them.
        ModelConfig(name=model, image_size=IMAGE_SIZE, pretrained=model != "vgg16"),
        TrainConfig(epochs=1, batch_size=8),
        out,
        command=f"benchmarks/make_bundles.py {model}",
        show_progress=False,
    )
    report = export_onnx(out)
    print(f"{model}: {report.path} (max |onnx - torch| {report.max_abs_diff:.1e})")


if __name__ == "__main__":
    for name in sys.argv[1:] or MODELS:
        make_bundle(name)
