"""Whole Keras models (``model.save`` HDF5) convert to PyTorch models with the same outputs."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mpoxscan.inference.keras_import import import_keras_model, swap_binary_classes
from mpoxscan.models import WeightsError, create_model

from keras_h5_helpers import (
    conv2d,
    conv_cfg,
    dense_cfg,
    dense_stack,
    he_conv,
    he_dense,
    input_cfg,
    layer,
    max_pool,
    pool_cfg,
    tutorial_vgg_reference,
    vgg_convs,
    write_model_h5,
    write_notop_h5,
    write_tutorial_vgg,
)

WIDTHS = (4, 4, 8, 8, 8)
SIZE = 64  # 2x2x8 before Flatten, so a channels-first Flatten would give other outputs
SEED_SIZE = 128  # the seed CNN's map before Flatten is 2x2x32 at this size
SEED_CONVS = ((16, 3), (32, 3), (64, 2), (128, 2), (32, 2))


def images(size: int, n: int = 2) -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (n, size, size, 3)).astype(np.float64)


def predict(imported, batch: np.ndarray) -> np.ndarray:
    """Run the converted model like Keras' predict: preprocessing, logits, output activation."""
    prep = imported.preprocessing
    x = (batch - np.array(prep.mean)) / np.array(prep.std)
    with torch.no_grad():
        logits = imported.model(torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32)))
    if imported.output_activation == "sigmoid":
        return torch.sigmoid(logits).numpy()
    return torch.softmax(logits, dim=1).numpy()


def tutorial_weights(units: int):
    rng = np.random.default_rng(units)
    flat = (SIZE // 32) ** 2 * WIDTHS[-1]
    dense = [he_dense(rng, flat, 64), he_dense(rng, 64, 32), he_dense(rng, 32, units)]
    return vgg_convs(rng, WIDTHS), dense


@pytest.mark.parametrize(
    ("activation", "units", "nested"),
    [("sigmoid", 1, True), ("softmax", 2, False), ("sigmoid", 1, False), ("softmax", 2, True)],
)
def test_tutorial_vgg16_model_matches_keras(
    tmp_path: Path, activation: str, units: int, nested: bool
) -> None:
    convs, dense = tutorial_weights(units)
    path = write_tutorial_vgg(
        tmp_path / "vgg16_monkey_pox_best_model.h5",
        convs,
        dense,
        image_size=SIZE,
        activation=activation,
        nested=nested,
    )
    imported = import_keras_model(path)
    batch = images(SIZE)
    expected = np.stack([tutorial_vgg_reference(img, convs, dense, activation) for img in batch])
    np.testing.assert_allclose(predict(imported, batch), expected, atol=1e-4)
    # The comparison can tell Flatten orders apart, so it really checks the channels-last one.
    wrong = np.stack(
        [
            tutorial_vgg_reference(img, convs, dense, activation, channels_first_flatten=True)
            for img in batch
        ]
    )
    assert np.abs(wrong - expected).max() > 1e-3
    assert imported.model.architecture == "vgg16"
    assert imported.output_activation == activation
    assert imported.classes_hint == ["Monkey Pox", "Others"]
    assert imported.source_config["class_name"] == "Sequential"
    prep = imported.preprocessing
    assert (prep.image_size, prep.mean, prep.std) == (SIZE, (0.0,) * 3, (255.0,) * 3)
    assert imported.model.preprocessing == prep
    assert not imported.model.training


def test_imported_vgg16_state_dict_fits_the_registered_model(tmp_path: Path) -> None:
    convs, dense = tutorial_weights(1)
    path = write_tutorial_vgg(
        tmp_path / "m.h5", convs, dense, image_size=SIZE, activation="sigmoid", nested=True
    )
    imported = import_keras_model(path)
    registered = create_model("vgg16", num_outputs=1, pretrained=False, image_size=SIZE)
    assert imported.model.state_dict().keys() == registered.state_dict().keys()


def test_swap_binary_classes_scores_the_other_class(tmp_path: Path) -> None:
    convs, dense = tutorial_weights(1)
    path = write_tutorial_vgg(
        tmp_path / "m.h5", convs, dense, image_size=SIZE, activation="sigmoid", nested=True
    )
    imported = import_keras_model(path)
    batch = images(SIZE)
    before = predict(imported, batch)
    swap_binary_classes(imported.model)
    np.testing.assert_allclose(predict(imported, batch), 1 - before, atol=1e-6)


def write_seed_model(path: Path, units: int, rescale: bool) -> tuple[Path, list, list]:
    rng = np.random.default_rng(3)
    layers, groups, convs = [input_cfg(SEED_SIZE)], [], []
    if rescale:
        layers.append(layer("Rescaling", "rescaling", scale=1 / 127.5, offset=-1.0))
    cin = 3
    for i, (filters, k) in enumerate(SEED_CONVS):
        name = "conv2d" if i == 0 else f"conv2d_{i}"
        convs.append(he_conv(rng, k, cin, filters))
        layers += [conv_cfg(name, filters, k, "valid"), pool_cfg(f"pool_{i}")]
        groups.append(
            (name, [(f"{name}/kernel:0", convs[-1][0]), (f"{name}/bias:0", convs[-1][1])])
        )
        cin = filters
    dense = [he_dense(rng, 2 * 2 * 32, 32), he_dense(rng, 32, units)]
    layers += [
        layer("Flatten", "flatten"),
        dense_cfg("dense", 32, "relu"),
        dense_cfg("dense_1", units, "softmax"),
    ]
    for name, (k, b) in zip(["dense", "dense_1"], dense, strict=True):
        groups.append((name, [(f"{name}/kernel:0", k), (f"{name}/bias:0", b)]))
    write_model_h5(
        path, {"class_name": "Sequential", "config": {"name": "seq", "layers": layers}}, groups
    )
    return path, convs, dense


def test_seed_cnn_with_rescaling_layer_matches_keras(tmp_path: Path) -> None:
    path, convs, dense = write_seed_model(tmp_path / "seed.h5", units=3, rescale=True)
    imported = import_keras_model(path)
    assert imported.model.architecture == "seed-cnn"
    prep = imported.preprocessing
    assert (prep.image_size, prep.mean, prep.std) == (SEED_SIZE, (127.5,) * 3, (127.5,) * 3)
    assert imported.classes_hint is None
    batch = images(SEED_SIZE)
    expected = []
    for img in batch:
        x = img / 127.5 - 1.0
        for kernel, bias in convs:
            x = max_pool(conv2d(x, kernel, bias, "valid"))
        expected.append(dense_stack(x.reshape(-1), dense, "softmax"))
    np.testing.assert_allclose(predict(imported, batch), np.stack(expected), atol=1e-4)


def test_unsupported_layer_is_named(tmp_path: Path) -> None:
    path, _, _ = write_seed_model(tmp_path / "seed.h5", units=2, rescale=False)
    with h5py.File(path, "a") as f:
        config = json.loads(f.attrs["model_config"])
        config["config"]["layers"].insert(2, layer("BatchNormalization", "batch_normalization"))
        f.attrs["model_config"] = json.dumps(config).encode()
    with pytest.raises(WeightsError, match="batch_normalization"):
        import_keras_model(path)


def test_missing_layer_weights_are_named(tmp_path: Path) -> None:
    path, _, _ = write_seed_model(tmp_path / "seed.h5", units=2, rescale=False)
    with h5py.File(path, "a") as f:
        del f["model_weights/dense_1"]
        names = f["model_weights"].attrs["layer_names"]
        f["model_weights"].attrs["layer_names"] = [n for n in names if n != b"dense_1"]
    with pytest.raises(WeightsError, match="dense_1"):
        import_keras_model(path)


def test_weights_only_files_and_other_architectures_are_refused(tmp_path: Path) -> None:
    notop = write_notop_h5(tmp_path / "notop.h5", vgg_convs(np.random.default_rng(0), WIDTHS))
    with pytest.raises(WeightsError, match=r"model\.save"):
        import_keras_model(notop)
    rng = np.random.default_rng(0)
    conv = he_conv(rng, 3, 3, 8)
    layers = [
        input_cfg(32),
        conv_cfg("c", 8, 3, "same"),
        pool_cfg("p"),
        layer("Flatten", "f"),
        dense_cfg("d", 1, "sigmoid"),
    ]
    groups = [("c", [("c/kernel:0", conv[0]), ("c/bias:0", conv[1])])]
    other = write_model_h5(
        tmp_path / "other.h5",
        {"class_name": "Sequential", "config": {"name": "s", "layers": layers}},
        groups,
    )
    with pytest.raises(WeightsError, match="neither the tutorial's VGG16 nor its seed CNN"):
        import_keras_model(other)
