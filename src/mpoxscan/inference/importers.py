"""Turn models trained elsewhere into mpoxscan bundles (`mpoxscan import-keras`)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from mpoxscan.data.datasets import file_sha256
from mpoxscan.errors import BundleError
from mpoxscan.inference.bundle import save_bundle
from mpoxscan.models.keras_import import import_keras_model, swap_binary_classes


def import_keras_bundle(
    h5_path: Path,
    out_dir: Path,
    *,
    classes: list[str],
    positive: str,
    command: str = "",
) -> Path:
    """Convert the tutorial's saved Keras model into a bundle that `predict` and `serve` use.

    Keras files do not record class names: ``classes`` gives the model's output order, which
    for ``flow_from_directory`` is the sorted folder names (``["Monkey Pox", "Others"]`` on
    MSLD). A one-unit sigmoid model scores ``classes[1]``; mpoxscan's binary convention scores
    the positive class, so the logit is negated when ``positive`` is ``classes[0]`` (exact:
    ``sigmoid(-z) = 1 - sigmoid(z)``). A softmax model keeps its order, as a multi-class bundle.

    The bundle has no out-of-domain detector (there is no training data to fit one on) and
    keeps the decision threshold at 0.5; its metrics are unknown until `mpoxscan evaluate`.

    Args:
        h5_path: the whole model saved with Keras ``model.save`` (HDF5).
        out_dir: the bundle directory to write.
        classes: class names in the Keras output order.
        positive: the class whose probability is reported.
        command: the command line, recorded in ``model.json``.

    Returns:
        The bundle directory.
    """
    if positive not in classes:
        raise BundleError(f"--positive {positive!r} is not one of the classes {classes}")
    imported = import_keras_model(Path(h5_path))
    model = imported.model
    if model.num_outputs == 1:
        if len(classes) != 2:
            raise BundleError(f"a one-output Keras model needs two class names, got {classes}")
        if positive == classes[0]:
            swap_binary_classes(model)
        bundle_classes = [c for c in classes if c != positive] + [positive]
    elif model.num_outputs == len(classes):
        bundle_classes = list(classes)
    else:
        raise BundleError(
            f"the Keras model has {model.num_outputs} outputs but {len(classes)} class names "
            f"were given ({classes}); pass --classes in the model's output order"
        )
    meta = {
        "architecture": {
            "name": model.architecture,
            "num_outputs": model.num_outputs,
            "image_size": imported.preprocessing.image_size,
            "dropout": None,
        },
        "classes": bundle_classes,
        "positive_class": positive,
        "multiclass": model.num_outputs > 1,
        "preprocessing": asdict(imported.preprocessing),
        "temperature": 1.0,
        "threshold": 0.5,
        "command": command,
        "config": {
            "source": {
                "format": "keras-h5",
                "file": Path(h5_path).name,
                "sha256": file_sha256(Path(h5_path)),
                "output_activation": imported.output_activation,
            }
        },
        "data_fingerprint": None,
        "metrics": {},
    }
    return save_bundle(out_dir, model, meta)
