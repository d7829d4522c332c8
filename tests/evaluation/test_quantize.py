"""int8 export: calibrated static quantisation, the accuracy check, its refusal, and loading."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mpoxscan.cli import app
from mpoxscan.data.datasets import scan_dataset
from mpoxscan.errors import BundleError
from mpoxscan.evaluation.quantize import (
    INT8_FILE,
    QuantizeConfig,
    _spread,
    quantize_bundle,
    quantize_graph,
)
from mpoxscan.hashing import file_sha256
from mpoxscan.inference.bundle import read_bundle_meta
from mpoxscan.inference.onnx_export import export_onnx
from mpoxscan.inference.predictor import Predictor, images_to_pixels

from testdata import make_lesion_photo


def fresh_copy(bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    return copy


def test_an_accepted_int8_graph_is_hashed_recorded_and_run(onnx_bundle, tiny_dataset, tmp_path):
    bundle = fresh_copy(onnx_bundle, tmp_path)
    report = quantize_bundle(bundle, tiny_dataset, QuantizeConfig(max_auc_drop=1.0))
    assert report.accepted and report.path == bundle / INT8_FILE
    assert report.n_held_out > 0 and report.n_calibration > 0
    assert 0.0 <= report.max_abs_diff <= 1.0
    assert any("ROC AUC" in line and line.startswith("int8") for line in report.lines())
    meta = read_bundle_meta(bundle)
    assert meta.document["runs"] == INT8_FILE
    assert meta.files[INT8_FILE] == file_sha256(bundle / INT8_FILE)
    assert meta.document["int8"]["roc_auc_int8"] == pytest.approx(report.int8.roc_auc)

    predictor = Predictor.load(bundle)
    assert predictor.onnx_file_ == INT8_FILE
    fp32 = Predictor.load(onnx_bundle)
    photos = [make_lesion_photo(i % 2 == 0, seed=900 + i, size=64) for i in range(6)]
    pixels = images_to_pixels(photos, predictor.image_size_)
    p_int8, e_int8 = predictor.predict_pixels(pixels)
    p_fp32, e_fp32 = fp32.predict_pixels(pixels)
    assert np.abs(p_int8 - p_fp32).max() < 0.2
    assert e_int8.shape == e_fp32.shape

    # Both graphs are integrity-checked: a changed int8 file is refused at load.
    with (bundle / INT8_FILE).open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match="changed"):
        Predictor.load(bundle)


def test_the_int8_graph_is_refused_when_auc_drops_too_much(onnx_bundle, tiny_dataset, tmp_path):
    bundle = fresh_copy(onnx_bundle, tmp_path)
    # Any drop (even none) is too much with a negative bound: the refusal path is forced.
    report = quantize_bundle(bundle, tiny_dataset, QuantizeConfig(max_auc_drop=-1.0))
    assert not report.accepted and report.path is None
    assert "refused" in report.lines()[-1]
    assert not (bundle / INT8_FILE).exists()
    meta = read_bundle_meta(bundle)
    assert INT8_FILE not in meta.files and meta.document.get("runs", "model.onnx") == "model.onnx"
    assert Predictor.load(bundle).onnx_file_ == "model.onnx"


def _int8_weights(graph_path: Path, op_type: str) -> dict[str, bool]:
    """Whether each ``op_type`` node of a QDQ graph reads its weight through DequantizeLinear."""
    import onnx

    nodes = onnx.load(str(graph_path)).graph.node
    dequantized = {node.output[0] for node in nodes if node.op_type == "DequantizeLinear"}
    return {node.name: node.input[1] in dequantized for node in nodes if node.op_type == op_type}


def _depthwise(graph_path: Path) -> set[str]:
    import onnx

    return {
        node.name
        for node in onnx.load(str(graph_path)).graph.node
        if node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)
    }


@pytest.mark.parametrize("keep_float", ["ends", "early", "head"])
def test_keep_float_chooses_the_layers_left_in_float(onnx_bundle, tmp_path, keep_float):
    photos = [make_lesion_photo(i % 2 == 0, seed=700 + i, size=64) for i in range(4)]
    calibration = images_to_pixels(photos, 64)
    target = tmp_path / INT8_FILE
    config = QuantizeConfig(keep_float=keep_float, early_convs=4)
    quantize_graph(onnx_bundle / "model.onnx", target, calibration, config)
    convs = _int8_weights(target, "Conv")  # in graph order
    assert list(_int8_weights(target, "Gemm").values()) == [False]  # the classifier
    depthwise = _depthwise(onnx_bundle / "model.onnx")
    if keep_float == "head":
        assert all(convs.values())  # every convolution, the depthwise ones too
    elif keep_float == "early":
        assert list(convs.values()) == [False] * 4 + [True] * (len(convs) - 4)
    else:
        assert depthwise and not any(convs[name] for name in depthwise)
        assert any(convs.values())
    with pytest.raises(ValueError, match="keep_float"):
        quantize_graph(
            onnx_bundle / "model.onnx", target, calibration, QuantizeConfig(keep_float="x")
        )


def test_quantising_needs_the_bundles_own_data(onnx_bundle, tmp_path):
    from testdata import make_unsplit_dataset

    other = make_unsplit_dataset(tmp_path / "other", patients=4, seed=5)
    with pytest.raises(BundleError, match="not the data"):
        quantize_bundle(fresh_copy(onnx_bundle, tmp_path), other)


def test_calibration_photos_come_from_every_class_and_source(tiny_dataset):
    records = scan_dataset(tiny_dataset).records
    chosen = _spread(records, 6)
    assert len(chosen) == 6
    assert {r.class_name for r in chosen} == {r.class_name for r in records}


def test_export_command_prints_the_accuracy_check(onnx_bundle, tiny_dataset, tmp_path):
    bundle = fresh_copy(onnx_bundle, tmp_path)
    args = ["export", "--model-dir", str(bundle), "--quantize", "int8", "--data", str(tiny_dataset)]
    result = CliRunner().invoke(app, [*args, "--int8-float", "early"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for expected in ("fp32: ROC AUC", "int8: ROC AUC", "sensitivity", "specificity", "largest"):
        assert expected in text
    assert ("kept /" in text) != ("refused" in text)
    assert "kept in float: early" in text


def test_a_bundle_trained_on_a_data_manifest_is_quantised_on_its_recorded_sources(
    tiny_dataset, tmp_path, monkeypatch
):
    from testdata import train_tiny_bundle

    manifest = tmp_path / "data.toml"
    manifest.write_text(
        f'root = "{tiny_dataset.parent}"\n\n[[sources]]\nname = "web"\n'
        f'folder = "{tiny_dataset.name}"\n\n[sources.classes]\n'
        '"Monkey Pox" = "mpox"\n"Others" = "negative"\n'
    )
    monkeypatch.chdir(tmp_path)  # the recorded data path is relative, as on the command line
    bundle = train_tiny_bundle(Path("data.toml"), tmp_path / "bundle", epochs=1).bundle_dir
    export_onnx(bundle)
    report = quantize_bundle(bundle, None, QuantizeConfig(max_auc_drop=1.0))
    assert report.accepted and report.n_held_out > 0
    assert (bundle / INT8_FILE).is_file()
