"""ONNX export: parity with PyTorch, dynamic batch, names, hashes, refusal of bad graphs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from inference_support import LITE_SIZE, SEED_SIZE, build_bundle, lesion_photos

from mpoxscan.errors import BundleError
from mpoxscan.hashing import file_sha256
from mpoxscan.inference.bundle import load_torch_model, read_bundle_meta
from mpoxscan.inference.onnx_export import PARITY_TOLERANCE, export_onnx
from mpoxscan.inference.onnx_runtime import OnnxModel, default_threads
from mpoxscan.inference.predictor import Predictor
from mpoxscan.inference.torch_backend import inference_module

MODELS = [("seed-cnn", SEED_SIZE), ("efficientnet-lite0", LITE_SIZE)]


@pytest.fixture(scope="module", params=MODELS, ids=[name for name, _ in MODELS])
def exported(request, tmp_path_factory):
    name, size = request.param
    bundle = build_bundle(tmp_path_factory.mktemp(name) / "b", name, size, temperature=1.7)
    return bundle, size, export_onnx(bundle)


def test_export_matches_pytorch_for_batches_of_one_and_five(exported):
    bundle, size, report = exported
    assert report.max_abs_diff < PARITY_TOLERANCE
    assert report.n_samples == 5
    model, meta = load_torch_model(bundle)
    module = inference_module(model, meta)
    session = OnnxModel(bundle / "model.onnx")
    pixels = np.random.default_rng(1).uniform(0, 255, (5, 3, size, size)).astype(np.float32)
    with torch.inference_mode():
        expected_p, expected_e = (t.numpy() for t in module(torch.from_numpy(pixels)))
    for batch in (1, 5):
        probabilities, embeddings = session.run(pixels[:batch])
        assert probabilities.shape == (batch, 2)
        np.testing.assert_allclose(probabilities, expected_p[:batch], atol=PARITY_TOLERANCE)
        np.testing.assert_allclose(embeddings, expected_e[:batch], rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)


def test_graph_has_the_contract_names_and_a_dynamic_batch(exported):
    bundle, size, _ = exported
    graph = onnx.load(str(bundle / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["pixels"]
    assert [o.name for o in graph.output] == ["probabilities", "embedding"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value
    assert [d.dim_value for d in dims[1:]] == [3, size, size]


def test_graph_applies_preprocessing_and_temperature(exported):
    """The graph takes raw 0-255 pixels: its output is the network's on normalised input."""
    bundle, size, _ = exported
    model, meta = load_torch_model(bundle)
    pixels = np.full((1, 3, size, size), 200.0, dtype=np.float32)
    mean = torch.tensor(meta["preprocessing"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(meta["preprocessing"]["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        logit = model((torch.from_numpy(pixels) - mean) / std)[0, 0].item()
    positive = 1 / (1 + np.exp(-logit / 1.7))
    probabilities, _ = OnnxModel(bundle / "model.onnx").run(pixels)
    assert probabilities[0, 1] == pytest.approx(positive, abs=1e-5)


def test_export_records_the_graph_hash(exported):
    bundle, _, _ = exported
    meta = read_bundle_meta(bundle)
    assert meta["files"]["model.onnx"] == file_sha256(bundle / "model.onnx")
    assert meta["onnx"]["opset"] == 17
    assert Predictor.load(bundle).backend_ == "onnx"


def test_export_checks_parity_on_given_photos(tmp_path):
    bundle = build_bundle(tmp_path / "b")
    report = export_onnx(bundle, samples=lesion_photos(3, size=80))
    assert report.n_samples == 3
    assert report.max_abs_diff < PARITY_TOLERANCE


def test_a_tampered_graph_is_refused(exported, tmp_path):
    bundle = Path(shutil.copytree(exported[0], tmp_path / "copy"))
    graph = bundle / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:-100])
    with pytest.raises(BundleError, match=r"model\.onnx has changed"):
        Predictor.load(bundle)


def test_a_broken_graph_file_gives_a_bundle_error(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"definitely not protobuf")
    with pytest.raises(BundleError, match="Export it again"):
        OnnxModel(path)


def test_run_refuses_pixels_of_the_wrong_size(exported):
    bundle, size, _ = exported
    with pytest.raises(ValueError, match="images_to_pixels"):
        OnnxModel(bundle / "model.onnx").run(np.zeros((1, 3, size + 8, size + 8), np.float32))


def test_default_threads_fit_the_machine():
    assert 1 <= default_threads() <= 4
