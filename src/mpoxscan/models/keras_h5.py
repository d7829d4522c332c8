"""Read Keras HDF5 weight files: the layers' arrays, matched by name.

Keras stores weights per layer group, each group listing its arrays in a ``weight_names``
attribute. Names vary by Keras version: Keras 1 wrote ``block1_conv1_W_1:0``, Keras 2
``block1_conv1/kernel:0``, Keras 3 ``block1_conv1/kernel``. Arrays are matched by name, never by
position: Keras lists a nested model's trainable weights before its frozen ones, so positions
change with what was frozen during training.

VGG16 reads its notop ImageNet weights with this; :mod:`mpoxscan.inference.keras_import` reads
whole saved models (``model.save``) with it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mpoxscan.models.registry import WeightsError

#: A Keras layer's arrays by kind (``"kernel"``, ``"bias"``; other kinds keep Keras' name).
LayerWeights = dict[str, np.ndarray]

_KINDS = {"kernel": "kernel", "W": "kernel", "bias": "bias", "b": "bias"}
_KERAS1_NAME = re.compile(r"(?P<layer>.+)_(?P<kind>W|b)(_\d+)?")


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


def read_model_config(path: Path) -> dict[str, Any]:
    """Return the ``model_config`` of a whole Keras model file, parsed from its JSON."""
    with h5py.File(path, "r") as file:
        return json.loads(_text(file.attrs["model_config"]))
