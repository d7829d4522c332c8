"""VGG16 loads ImageNet weights from Keras notop .h5 and torchvision .pth files, layer by layer."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mpoxscan.models import WeightsError
from mpoxscan.models.vgg16 import VGG16, build_vgg16

from keras_h5_helpers import (
    dense_stack,
    max_pool,
    vgg_conv_names,
    vgg_convs,
    vgg_features,
    write_notop_h5,
)

WIDTHS = (4, 4, 8, 8, 8)
SIZE = 64  # block5_conv3 map 4x4, 2x2 after block5_pool: Flatten order matters
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def build(weights: Path | None, widths: tuple[int, ...] = WIDTHS) -> VGG16:
    return build_vgg16(
        num_outputs=1,
        pretrained=True,
        weights=weights,
        dropout=None,
        image_size=SIZE,
        widths=widths,
    ).eval()


@pytest.fixture(scope="module")
def convs() -> list[tuple[np.ndarray, np.ndarray]]:
    return vgg_convs(np.random.default_rng(0), WIDTHS)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3)).astype(np.float64)


def model_input(model: VGG16, image: np.ndarray) -> torch.Tensor:
    prep = model.preprocessing
    x = (image - np.array(prep.mean)) / np.array(prep.std)
    return torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float32))


def head_weights(model: VGG16) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(m.weight.detach().numpy().T, m.bias.detach().numpy()) for m in model.dense_layers()]


@pytest.mark.parametrize("style", ["keras1", "keras2"])
def test_keras_notop_weights_land_in_their_layers_with_bgr_flip(tmp_path, convs, style) -> None:
    model = build(write_notop_h5(tmp_path / "notop.h5", convs, style))
    for index, (name, conv, (kernel, bias)) in enumerate(
        zip(vgg_conv_names(), model.conv_layers(), convs, strict=True)
    ):
        expected = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
        if index == 0:
            # Keras' input channel 0 is blue; ours is red.
            expected = expected.flip(1)
        torch.testing.assert_close(conv.weight, expected, msg=name)
        torch.testing.assert_close(conv.bias, torch.from_numpy(bias), msg=name)
    prep = model.preprocessing
    assert (prep.image_size, prep.mean, prep.std) == (
        SIZE,
        (123.68, 116.779, 103.939),
        (1.0, 1.0, 1.0),
    )


def test_keras_weights_give_keras_caffe_outputs(tmp_path, convs, image) -> None:
    model = build(write_notop_h5(tmp_path / "notop.h5", convs))
    # What Keras computes: caffe preprocessing turns RGB into BGR minus the BGR means.
    caffe = image[..., ::-1] - np.array([103.939, 116.779, 123.68])
    expected_features = vgg_features(caffe, convs)
    expected_logit = dense_stack(
        max_pool(expected_features).reshape(-1), head_weights(model), "linear"
    )
    with torch.no_grad():
        x = model_input(model, image)
        features = model.forward_features(x)[0].numpy().transpose(1, 2, 0)
        logit = model(x)[0].numpy()
    np.testing.assert_allclose(features, expected_features, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(logit, expected_logit, rtol=1e-4, atol=1e-4)


def test_torchvision_state_dict_loads_features_keys(tmp_path, convs, image) -> None:
    state = {}
    for index, (kernel, bias) in zip(CONV_INDICES, convs, strict=True):
        state[f"features.{index}.weight"] = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
        state[f"features.{index}.bias"] = torch.from_numpy(bias)
    state["classifier.0.weight"] = torch.zeros(4096, 25088)  # ignored: mpoxscan has its own head
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(state, path)
    model = build(path)
    for index, conv in zip(CONV_INDICES, model.conv_layers(), strict=True):
        torch.testing.assert_close(conv.weight, state[f"features.{index}.weight"])
    prep = model.preprocessing
    np.testing.assert_allclose(prep.mean, [123.675, 116.28, 103.53])
    np.testing.assert_allclose(prep.std, [58.395, 57.12, 57.375])
    normalised = (image / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    with torch.no_grad():
        features = model.forward_features(model_input(model, image))[0].numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(features, vgg_features(normalised, convs), rtol=1e-4, atol=1e-4)


def test_shape_mismatch_names_the_file_and_layer(tmp_path, convs) -> None:
    path = write_notop_h5(tmp_path / "small.h5", convs)
    with pytest.raises(WeightsError, match=r"small\.h5.*block1_conv1"):
        build(path, widths=(8, 8, 8, 8, 8))


def test_missing_layer_is_named(tmp_path, convs) -> None:
    path = write_notop_h5(tmp_path / "notop.h5", convs)
    with h5py.File(path, "a") as f:
        del f["block5_conv3"]
        f.attrs["layer_names"] = [n for n in f.attrs["layer_names"] if n != b"block5_conv3"]
    with pytest.raises(WeightsError, match="block5_conv3"):
        build(path)


def test_unknown_files_are_refused_with_the_expected_names(tmp_path) -> None:
    text = tmp_path / "weights.txt"
    text.write_text("not weights")
    with pytest.raises(WeightsError, match=r"weights\.txt.*vgg16-397923af\.pth"):
        build(text)
    bn = tmp_path / "vgg16_bn.pth"
    torch.save(
        {"features.0.weight": torch.zeros(64, 3, 3, 3), "features.1.weight": torch.ones(64)}, bn
    )
    with pytest.raises(WeightsError, match="vgg16_bn"):
        build(bn)
    with pytest.raises(WeightsError, match="not found"):
        build(tmp_path / "absent.h5")


def test_whole_keras_model_is_sent_to_import_keras(tmp_path, convs) -> None:
    path = write_notop_h5(tmp_path / "model.h5", convs)
    with h5py.File(path, "a") as f:
        f.attrs["model_config"] = b"{}"
    with pytest.raises(WeightsError, match="import-keras"):
        build(path)
