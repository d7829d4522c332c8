"""Turn the tutorial's whole saved Keras models (``model.save`` HDF5) into mpoxscan bundles.

`mpoxscan import-keras`: :func:`import_keras_model` converts the file to a PyTorch model with
the same outputs, :func:`import_keras_bundle` saves it as a bundle that `predict` and `serve`
use. The arrays are read by :mod:`mpoxscan.models.keras_h5`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn

from mpoxscan.data.preprocessing import Preprocessing
from mpoxscan.errors import BundleError
from mpoxscan.hashing import file_sha256
from mpoxscan.inference.bundle import save_bundle
from mpoxscan.models.keras_h5 import (
    LayerWeights,
    is_keras_model_file,
    read_keras_weights,
    read_model_config,
)
from mpoxscan.models.registry import MpoxNet, WeightsError, assign_parameter
from mpoxscan.models.seed_cnn import SEED_CONVS, SeedCNN, build_seed_cnn
from mpoxscan.models.vgg16 import VGG16, build_vgg16

_CONTAINERS = frozenset({"Functional", "Model", "Sequential"})
#: Layers that do nothing at inference (augmentation, dropout) or only declare the input.
_PASSIVE = frozenset(
    {
        "InputLayer",
        "Dropout",
        "SpatialDropout2D",
        "GaussianNoise",
        "GaussianDropout",
        "RandomFlip",
        "RandomRotation",
        "RandomZoom",
        "RandomTranslation",
        "RandomContrast",
        "RandomBrightness",
    }
)
#: VGG16's five max-pools follow these convolutions (0-based).
_VGG16_POOLS = (1, 3, 6, 9, 12)
#: The tutorial's ``ImageDataGenerator(rescale=1/255)`` on RGB images.
TUTORIAL_MEAN = (0.0, 0.0, 0.0)
TUTORIAL_STD = (255.0, 255.0, 255.0)
#: ``flow_from_directory`` numbers class folders alphabetically; MSLD's are these two.
MSLD_KERAS_CLASSES = ("Monkey Pox", "Others")


@dataclass
class ImportedModel:
    """A Keras model converted to an mpoxscan model.

    Attributes:
        model: the PyTorch model, in eval mode; its logits followed by ``output_activation``
            give what Keras' ``predict`` gives.
        classes_hint: a guess of the class order of the Keras outputs (Keras files do not
            record class names), or ``None`` when there is no good guess. For two classes it is
            MSLD's folders in ``flow_from_directory`` order, ``["Monkey Pox", "Others"]``: a
            sigmoid output is then the probability of ``"Others"``.
        preprocessing: the input normalisation the Keras model was trained with.
        source_config: the file's ``model_config``, parsed.
        output_activation: the Keras output layer's activation: ``"sigmoid"`` (one unit),
            ``"softmax"`` or ``"linear"``.
    """

    model: MpoxNet
    classes_hint: list[str] | None
    preprocessing: Preprocessing
    source_config: dict[str, Any]
    output_activation: str


@dataclass(frozen=True)
class _KerasLayer:
    class_name: str
    name: str
    config: dict[str, Any]


def _find_key(obj: Any, keys: tuple[str, ...]) -> Any:
    """Return the first value stored under one of ``keys`` anywhere in a JSON tree."""
    if isinstance(obj, dict):
        for key in keys:
            if obj.get(key) is not None:
                return obj[key]
        children: Iterator[Any] = iter(obj.values())
    elif isinstance(obj, list):
        children = iter(obj)
    else:
        return None
    for child in children:
        if (found := _find_key(child, keys)) is not None:
            return found
    return None


def _leaf_layers(config: dict[str, Any]) -> list[_KerasLayer]:
    """Flatten nested models (a ``vgg16`` layer inside a Sequential) into leaf layers."""
    inner = config.get("config", {})
    layers = inner if isinstance(inner, list) else inner.get("layers", [])
    leaves: list[_KerasLayer] = []
    for layer in layers:
        if layer.get("class_name") in _CONTAINERS:
            leaves += _leaf_layers(layer)
        else:
            cfg = layer.get("config", {})
            leaves.append(_KerasLayer(layer["class_name"], cfg.get("name", ""), cfg))
    return leaves


def _pair(value: Any) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, list | tuple) else (value, value)


def _unsupported(path: Path, layer: _KerasLayer, what: str) -> WeightsError:
    return WeightsError(
        f"{path}: layer {layer.name} ({layer.class_name}) {what}; mpoxscan imports the "
        "tutorial's VGG16 and seed-CNN models only"
    )


def _check_layer(path: Path, layer: _KerasLayer) -> None:
    cfg = layer.config
    if cfg.get("data_format") not in (None, "channels_last"):
        raise _unsupported(path, layer, "is channels_first")
    if layer.class_name == "Conv2D":
        if cfg.get("activation") != "relu" or not cfg.get("use_bias", True):
            raise _unsupported(path, layer, "is not a biased ReLU convolution")
        if _pair(cfg.get("strides", 1)) != (1, 1) or _pair(cfg.get("dilation_rate", 1)) != (1, 1):
            raise _unsupported(path, layer, "has a stride or dilation other than 1")
    elif layer.class_name == "MaxPooling2D":
        strides = cfg.get("strides") or cfg.get("pool_size", 2)
        if _pair(cfg.get("pool_size", 2)) != (2, 2) or _pair(strides) != (2, 2):
            raise _unsupported(path, layer, "is not a 2x2 pool with stride 2")
        if cfg.get("padding", "valid") != "valid":
            raise _unsupported(path, layer, "pads")
    elif layer.class_name == "Dense" and not cfg.get("use_bias", True):
        raise _unsupported(path, layer, "has no bias")


def _architecture(path: Path, layers: list[_KerasLayer]) -> tuple[str, tuple[int, ...]]:
    """Match the layer sequence to a registered model; return its name and block widths."""
    kinds = [layer.class_name for layer in layers]
    convs = [layer.config for layer in layers if layer.class_name == "Conv2D"]
    pools_after = tuple(
        kinds[:i].count("Conv2D") - 1 for i, k in enumerate(kinds) if k == "MaxPooling2D"
    )
    shape = [(c["filters"], _pair(c["kernel_size"]), c.get("padding", "valid")) for c in convs]
    if (
        len(shape) == 13
        and pools_after == _VGG16_POOLS
        and all(k == (3, 3) and p == "same" for _, k, p in shape)
    ):
        widths = tuple(shape[last][0] for last in _VGG16_POOLS)
        starts = (0, *(last + 1 for last in _VGG16_POOLS[:-1]))
        blocks = zip(starts, _VGG16_POOLS, widths, strict=True)
        if all(f == w for first, last, w in blocks for f, _, _ in shape[first : last + 1]):
            return "vgg16", widths
    seed = [(f, (k, k), "valid") for f, k in SEED_CONVS]
    if shape == seed and pools_after == tuple(range(len(seed))):
        return "seed-cnn", ()
    raise WeightsError(
        f"{path} holds {len(shape)} convolutions {[f for f, _, _ in shape]} with pools after "
        f"{list(pools_after)}: neither the tutorial's VGG16 nor its seed CNN, the two models "
        "mpoxscan can import"
    )


def _rescaling(
    path: Path, layers: list[_KerasLayer]
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Fold a leading Keras ``Rescaling`` layer into (mean, std) on the 0-255 scale."""
    found = [layer for layer in layers if layer.class_name == "Rescaling"]
    if not found:
        return None
    layer = found[0]
    if len(found) > 1 or layers.index(layer) > [x.class_name for x in layers].index("Conv2D"):
        raise _unsupported(path, layer, "rescales after the first convolution")
    scale = np.broadcast_to(np.asarray(layer.config.get("scale", 1.0), dtype=float), 3)
    offset = np.broadcast_to(np.asarray(layer.config.get("offset", 0.0), dtype=float), 3)
    # scale * x + offset == (x - mean) / std  with  std = 1/scale, mean = -offset/scale.
    return tuple(float(v) for v in -offset / scale), tuple(float(v) for v in 1.0 / scale)


def _input_size(path: Path, config: dict[str, Any]) -> int:
    shape = _find_key(config, ("batch_input_shape", "batch_shape", "build_input_shape"))
    if shape is None:
        return 224
    height, width, channels = shape[-3:]
    if height is None or height != width or channels != 3:
        raise WeightsError(
            f"{path} takes input of shape {shape[1:]}; mpoxscan needs square RGB input "
            "(H, H, 3) in channels-last order"
        )
    return int(height)


def _output(path: Path, dense: list[_KerasLayer], hidden: int) -> tuple[int, str]:
    if len(dense) != hidden + 1:
        raise WeightsError(
            f"{path} has {len(dense)} Dense layers where the tutorial's model has {hidden + 1}"
        )
    for layer in dense[:-1]:
        if layer.config.get("activation") != "relu":
            raise _unsupported(path, layer, "is a hidden Dense layer without ReLU")
    units = int(dense[-1].config["units"])
    activation = dense[-1].config.get("activation", "linear")
    sigmoid_ok = activation != "sigmoid" or units == 1
    softmax_ok = activation != "softmax" or units >= 2
    if activation not in ("sigmoid", "softmax", "linear") or not (sigmoid_ok and softmax_ok):
        raise _unsupported(path, dense[-1], f"is {units} {activation} output(s)")
    return units, activation


def _build(
    name: str, widths: tuple[int, ...], num_outputs: int, image_size: int
) -> SeedCNN | VGG16:
    common = {"num_outputs": num_outputs, "pretrained": False, "weights": None, "dropout": None}
    if name == "vgg16":
        model: SeedCNN | VGG16 = build_vgg16(**common, image_size=image_size, widths=widths)
    else:
        model = build_seed_cnn(**common, image_size=image_size)
    model.architecture = name
    return model


def _load_layers(
    path: Path,
    targets: list[nn.Module],
    layers: list[_KerasLayer],
    weights: dict[str, LayerWeights],
) -> None:
    for target, layer in zip(targets, layers, strict=True):
        arrays = weights.get(layer.name, {})
        if not {"kernel", "bias"} <= arrays.keys():
            raise WeightsError(
                f"{path} has no kernel and bias for layer {layer.name}; the file is incomplete, "
                "save the model again with model.save('model.h5')"
            )
        kernel = arrays["kernel"]
        # Keras Conv2D kernels are (kh, kw, in, out), Dense kernels (in, out).
        kernel = kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4 else kernel.T
        assign_parameter(target.weight, kernel, source=path, layer=layer.name)
        assign_parameter(target.bias, arrays["bias"], source=path, layer=layer.name)


def import_keras_model(h5_path: Path | str) -> ImportedModel:
    """Convert the tutorial's whole saved Keras model (``model.save(...h5)``) to PyTorch.

    Supports the tutorial's VGG16 model (VGG16 base, nested as a ``vgg16`` layer or inlined,
    then Flatten, Dense 64 ReLU, Dense 32 ReLU, Dense output) and its seed CNN, both with one
    sigmoid or N softmax outputs. Dropout and augmentation layers are skipped (they do
    nothing at inference).

    Assumption: the tutorial fed RGB images rescaled by 1/255 (``ImageDataGenerator(rescale=
    1/255)``), which the file does not record, so preprocessing is mean 0, std 255 — unless
    the model starts with a Keras ``Rescaling`` layer, which is folded into mean/std instead.

    Args:
        h5_path: the ``.h5`` file (``vgg16_monkey_pox_best_model.h5`` in the tutorial).

    Returns:
        The converted model, whose outputs match Keras' within float32 rounding.

    Raises:
        WeightsError: if the file is not a whole Keras model, has layers mpoxscan cannot
            convert, or lacks weights for a layer.
    """
    path = Path(h5_path)
    if not path.is_file():
        raise WeightsError(f"Keras model file {path} not found; check the path")
    if not h5py.is_hdf5(path) or not is_keras_model_file(path):
        raise WeightsError(
            f"{path} is not a whole Keras model saved as HDF5 (no model_config); save it in "
            "Keras with model.save('model.h5')"
        )
    config = read_model_config(path)
    layers = [layer for layer in _leaf_layers(config) if layer.class_name not in _PASSIVE]
    for layer in layers:
        if layer.class_name not in ("Conv2D", "MaxPooling2D", "Flatten", "Dense", "Rescaling"):
            raise _unsupported(path, layer, "cannot be converted")
        _check_layer(path, layer)
    name, widths = _architecture(path, layers)
    dense = [layer for layer in layers if layer.class_name == "Dense"]
    num_outputs, activation = _output(path, dense, hidden=2 if name == "vgg16" else 1)
    image_size = _input_size(path, config)
    model = _build(name, widths, num_outputs, image_size)
    weights = read_keras_weights(path)
    convs = [layer for layer in layers if layer.class_name == "Conv2D"]
    _load_layers(path, list(model.conv_layers()), convs, weights)
    _load_layers(path, list(model.dense_layers()), dense, weights)
    mean, std = _rescaling(path, layers) or (TUTORIAL_MEAN, TUTORIAL_STD)
    model.preprocessing = Preprocessing(image_size, mean, std)  # type: ignore[arg-type]
    hint = list(MSLD_KERAS_CLASSES) if num_outputs <= 2 else None
    return ImportedModel(model.eval(), hint, model.preprocessing, config, activation)


def swap_binary_classes(model: MpoxNet) -> None:
    """Negate a one-logit model's output so it scores the other class: ``sigmoid(-z) = 1 - p``.

    A Keras sigmoid model from ``flow_from_directory`` on MSLD scores ``"Others"`` (folder
    index 1); mpoxscan's binary convention scores the positive class, so an importer calls
    this and stores ``classes = ["Others", "Monkey Pox"]``.

    Raises:
        ValueError: if the model has more than one output.
    """
    if model.num_outputs != 1:
        raise ValueError(
            f"swap_binary_classes needs a one-logit model, this one has {model.num_outputs}; "
            "reorder the classes list instead"
        )
    last = [m for m in model.head.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.neg_()
        last.bias.neg_()


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
