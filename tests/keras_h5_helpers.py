"""Write small Keras-layout HDF5 files and run the same networks in plain numpy.

The numpy forward passes work in Keras' own layout (NHWC, kernels ``(kh, kw, in, out)``,
Flatten in ``(H, W, C)`` order), so they are an independent reference for the PyTorch models.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

Weights = list[tuple[str, np.ndarray]]
VGG_BLOCK_DEPTHS = (2, 2, 3, 3, 3)


def vgg_conv_names() -> list[str]:
    return [
        f"block{b}_conv{c}"
        for b, depth in enumerate(VGG_BLOCK_DEPTHS, start=1)
        for c in range(1, depth + 1)
    ]


# --- numpy reference -------------------------------------------------------------------------


def conv2d(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, padding: str) -> np.ndarray:
    """Keras Conv2D (stride 1) on one HWC image, followed by ReLU."""
    kh, kw = kernel.shape[:2]
    if padding == "same":
        x = np.pad(x, (((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    windows = sliding_window_view(x, (kh, kw), axis=(0, 1))  # (H', W', C, kh, kw)
    out = np.einsum("hwcij,ijco->hwo", windows, kernel) + bias
    return np.maximum(out, 0.0)


def max_pool(x: np.ndarray) -> np.ndarray:
    h, w, c = x.shape
    x = x[: h // 2 * 2, : w // 2 * 2]
    return x.reshape(h // 2, 2, w // 2, 2, c).max(axis=(1, 3))


def activate(z: np.ndarray, activation: str) -> np.ndarray:
    if activation == "relu":
        return np.maximum(z, 0.0)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if activation == "softmax":
        e = np.exp(z - z.max())
        return e / e.sum()
    return z


def vgg_features(x: np.ndarray, convs: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """VGG16's 13 convolutions and the pools between blocks (not block5_pool), HWC."""
    index = 0
    for block, depth in enumerate(VGG_BLOCK_DEPTHS):
        if block > 0:
            x = max_pool(x)
        for _ in range(depth):
            x = conv2d(x, *convs[index], padding="same")
            index += 1
    return x


def dense_stack(
    x: np.ndarray, dense: Sequence[tuple[np.ndarray, np.ndarray]], out: str
) -> np.ndarray:
    for i, (kernel, bias) in enumerate(dense):
        x = activate(x @ kernel + bias, out if i == len(dense) - 1 else "relu")
    return x


# --- random weights ----------------------------------------------------------------------------


def he_conv(rng: np.random.Generator, k: int, cin: int, cout: int) -> tuple[np.ndarray, np.ndarray]:
    kernel = rng.normal(0, np.sqrt(2 / (k * k * cin)), (k, k, cin, cout))
    return kernel.astype(np.float32), rng.normal(0, 0.1, cout).astype(np.float32)


def he_dense(rng: np.random.Generator, cin: int, cout: int) -> tuple[np.ndarray, np.ndarray]:
    kernel = rng.normal(0, np.sqrt(2 / cin), (cin, cout)).astype(np.float32)
    return kernel, rng.normal(0, 0.1, cout).astype(np.float32)


def vgg_convs(
    rng: np.random.Generator, widths: Sequence[int]
) -> list[tuple[np.ndarray, np.ndarray]]:
    convs, cin = [], 3
    for width, depth in zip(widths, VGG_BLOCK_DEPTHS, strict=True):
        for _ in range(depth):
            convs.append(he_conv(rng, 3, cin, width))
            cin = width
    return convs


# --- HDF5 writers ------------------------------------------------------------------------------


def _names(values: Sequence[str]) -> np.ndarray:
    return np.array([v.encode("utf8") for v in values]) if values else np.array([])


def write_weight_groups(root: h5py.Group, groups: list[tuple[str, Weights]]) -> None:
    """Keras' layout: ``layer_names`` on ``root``, per layer ``weight_names`` + datasets."""
    root.attrs["layer_names"] = _names([name for name, _ in groups])
    root.attrs["backend"] = b"tensorflow"
    root.attrs["keras_version"] = b"2.9.0"
    for name, weights in groups:
        group = root.create_group(name)
        group.attrs["weight_names"] = _names([w for w, _ in weights])
        for weight_name, value in weights:
            group.create_dataset(weight_name, data=value)


def write_notop_h5(
    path: Path, convs: Sequence[tuple[np.ndarray, np.ndarray]], style: str = "keras1"
) -> Path:
    """A VGG16 notop weights file; ``keras1`` names like the real download, else Keras 2's."""
    groups: list[tuple[str, Weights]] = [("input_1", [])]
    names = vgg_conv_names()
    for i, (name, (kernel, bias)) in enumerate(zip(names, convs, strict=True)):
        if style == "keras1":
            weights = [(f"{name}_W_1:0", kernel), (f"{name}_b_1:0", bias)]
        else:
            weights = [(f"{name}/kernel:0", kernel), (f"{name}/bias:0", bias)]
        groups.append((name, weights))
        if i + 1 == len(names) or names[i + 1].split("_")[0] != name.split("_")[0]:
            groups.append((f"{name.split('_')[0]}_pool", []))
    with h5py.File(path, "w") as f:
        write_weight_groups(f, groups)
    return path


def layer(class_name: str, name: str, **config: object) -> dict:
    return {"class_name": class_name, "config": {"name": name, **config}}


def conv_cfg(name: str, filters: int, k: int, padding: str) -> dict:
    return layer(
        "Conv2D",
        name,
        filters=filters,
        kernel_size=[k, k],
        strides=[1, 1],
        padding=padding,
        data_format="channels_last",
        dilation_rate=[1, 1],
        activation="relu",
        use_bias=True,
    )


def pool_cfg(name: str) -> dict:
    return layer("MaxPooling2D", name, pool_size=[2, 2], strides=[2, 2], padding="valid")


def dense_cfg(name: str, units: int, activation: str) -> dict:
    return layer("Dense", name, units=units, activation=activation, use_bias=True)


def input_cfg(size: int) -> dict:
    return layer("InputLayer", "input_1", batch_input_shape=[None, size, size, 3], dtype="float32")


def write_model_h5(path: Path, config: dict, groups: list[tuple[str, Weights]]) -> Path:
    """A whole model in ``model.save`` HDF5 layout: ``model_config`` + ``model_weights``."""
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config).encode("utf8")
        f.attrs["keras_version"] = b"2.9.0"
        f.attrs["backend"] = b"tensorflow"
        write_weight_groups(f.create_group("model_weights"), groups)
    return path


def write_tutorial_vgg(
    path: Path,
    convs: Sequence[tuple[np.ndarray, np.ndarray]],
    dense: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    image_size: int,
    activation: str,
    nested: bool,
) -> Path:
    """The tutorial's model: VGG16 base (nested ``vgg16`` layer or inlined), Flatten, Dense x3.

    A nested base lists its trainable convs before the frozen ones, as Keras does, so only a
    name-based reader loads it right.
    """
    names = vgg_conv_names()
    base_layers = [input_cfg(image_size)]
    for i, name in enumerate(names):
        base_layers.append(conv_cfg(name, convs[i][0].shape[-1], 3, "same"))
        if i + 1 == len(names) or names[i + 1][:6] != name[:6]:
            base_layers.append(pool_cfg(f"{name[:6]}_pool"))
    head_layers = [
        layer("Flatten", "flatten", data_format="channels_last"),
        dense_cfg("dense", dense[0][0].shape[1], "relu"),
        layer("Dropout", "dropout", rate=0.5),
        dense_cfg("dense_1", dense[1][0].shape[1], "relu"),
        dense_cfg("dense_2", dense[2][0].shape[1], activation),
    ]
    dense_groups: list[tuple[str, Weights]] = [
        (n, [(f"{n}/kernel:0", k), (f"{n}/bias:0", b)])
        for n, (k, b) in zip(["dense", "dense_1", "dense_2"], dense, strict=True)
    ]
    if nested:
        vgg = {
            "class_name": "Functional",
            "name": "vgg16",
            "config": {"name": "vgg16", "layers": base_layers},
        }
        layers = [input_cfg(image_size), vgg, *head_layers]
        order = list(range(9, 13)) + list(range(9))  # trainable first, then the frozen convs
        nested_weights = [
            (f"{names[i]}/{kind}:0", convs[i][j])
            for i in order
            for j, kind in enumerate(("kernel", "bias"))
        ]
        groups = [
            ("vgg16", nested_weights),
            ("flatten", []),
            ("dense", dense_groups[0][1]),
            ("dropout", []),
            *dense_groups[1:],
        ]
    else:
        # Keras 3 names: no ":0" suffix.
        layers = [*base_layers, *head_layers]
        groups = [(cfg["config"]["name"], []) for cfg in base_layers]
        for i, name in enumerate(names):
            idx = next(k for k, (n, _) in enumerate(groups) if n == name)
            groups[idx] = (name, [(f"{name}/kernel", convs[i][0]), (f"{name}/bias", convs[i][1])])
        groups += [("flatten", []), dense_groups[0], ("dropout", []), *dense_groups[1:]]
    config = {"class_name": "Sequential", "config": {"name": "sequential", "layers": layers}}
    return write_model_h5(path, config, groups)


def tutorial_vgg_reference(
    image: np.ndarray,
    convs: Sequence[tuple[np.ndarray, np.ndarray]],
    dense: Sequence[tuple[np.ndarray, np.ndarray]],
    activation: str,
    *,
    channels_first_flatten: bool = False,
) -> np.ndarray:
    """What Keras' ``predict`` gives for one RGB 0-255 image rescaled by 1/255."""
    x = max_pool(vgg_features(image.astype(np.float64) / 255.0, convs))
    flat = x.transpose(2, 0, 1).reshape(-1) if channels_first_flatten else x.reshape(-1)
    return dense_stack(flat, dense, activation)
