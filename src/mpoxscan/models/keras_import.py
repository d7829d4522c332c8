"""Read Keras HDF5 files: VGG16 notop ImageNet weights and whole models saved with ``model.save``.

Keras stores weights per layer group, each group listing its arrays in a ``weight_names``
attribute. Names vary by Keras version: Keras 1 wrote ``block1_conv1_W_1:0``, Keras 2
``block1_conv1/kernel:0``, Keras 3 ``block1_conv1/kernel``. Arrays are matched by name, never by
position: Keras lists a nested model's trainable weights before its frozen ones, so positions
change with what was frozen during training.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import torch
from torch import nn

from mpoxscan.data.preprocessing import Preprocessing
from mpoxscan.models.registry import MpoxNet, WeightsError, assign_parameter
from mpoxscan.models.seed_cnn import SEED_CONVS, SeedCNN, build_seed_cnn

if TYPE_CHECKING:
    from mpoxscan.models.vgg16 import VGG16

#: A Keras layer's arrays by kind (``"kernel"``, ``"bias"``; other kinds keep Keras' name).
LayerWeights = dict[str, np.ndarray]

_KINDS = {"kernel": "kernel", "W": "kernel", "bias": "bias", "b": "bias"}
_KERAS1_NAME = re.compile(r"(?P<layer>.+)_(?P<kind>W|b)(_\d+)?")
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


def _text(value: Any) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _name_list(attrs: h5py.AttributeManager, key: str) -> list[str]:
    """Read a list attribute, which Keras splits into ``key0``, ``key1``... when it is long."""
    if key in attrs:
        return [_text(v) for v in attrs[key]]
    names: list[str] = []
    chunk = 0
    while f"{key}{chunk}" in attrs:
        names += [_text(v) for v in attrs[f"{key}{chunk}"]]
        chunk += 1
    return names


def _parse_weight_name(name: str) -> tuple[str | None, str]:
    """Split a Keras weight name into (owning layer or None, kind)."""
    base = name.split(":")[0]
    parts = base.split("/")
    if len(parts) >= 2:
        return parts[-2], _KINDS.get(parts[-1], parts[-1])
    if match := _KERAS1_NAME.fullmatch(base):
        return match["layer"], _KINDS[match["kind"]]
    return None, _KINDS.get(base, base)


def _weights_root(file: h5py.File, path: Path) -> h5py.Group:
    if "layer_names" in file.attrs or "layer_names0" in file.attrs:
        return file
    if "model_weights" in file:
        return file["model_weights"]
    raise WeightsError(
        f"{path} is an HDF5 file but not a Keras weights file (no layer_names attribute and "
        "no model_weights group); pass a file written by Keras' save_weights or model.save"
    )


def read_keras_weights(path: Path) -> dict[str, LayerWeights]:
    """Read every layer's arrays from a Keras HDF5 weights or whole-model file.

    Layers of a nested model (a VGG16 base saved as one layer) are listed under their own
    names, as if inlined.

    Args:
        path: a ``save_weights`` file (``layer_names`` on the root) or a ``model.save`` file
            (the same under ``model_weights``).

    Returns:
        Layer name to ``{"kernel": array, "bias": array}`` in Keras' layouts (a Conv2D
        kernel is ``(kh, kw, in, out)``, a Dense kernel ``(in, out)``).

    Raises:
        WeightsError: if the file is not a Keras HDF5 weights file.
    """
    layers: dict[str, LayerWeights] = {}
    with h5py.File(path, "r") as file:
        root = _weights_root(file, path)
        for layer in _name_list(root.attrs, "layer_names"):
            group = root[layer]
            names = _name_list(group.attrs, "weight_names")
            parsed = [_parse_weight_name(name) for name in names]
            # A group holding one layer's arrays is that layer, whatever the names say.
            single = len({owner for owner, _ in parsed}) <= 1
            for name, (owner, kind) in zip(names, parsed, strict=True):
                key = layer if single or owner is None else owner
                layers.setdefault(key, {})[kind] = np.asarray(group[name], dtype=np.float32)
    return layers


def is_keras_model_file(path: Path) -> bool:
    """Return whether ``path`` is a whole Keras model saved with ``model.save`` (HDF5)."""
    with h5py.File(path, "r") as file:
        return "model_config" in file.attrs


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
    # Imported here: vgg16 imports this module for its weight reader.
    from mpoxscan.models.vgg16 import build_vgg16

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
    with h5py.File(path, "r") as file:
        config = json.loads(_text(file.attrs["model_config"]))
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
