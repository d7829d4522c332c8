"""Model bundles: round trip, hashes, refusal of damaged, unknown or pickle-based bundles."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from inference_support import SEED_SIZE, build_bundle, bundle_meta, make_model
from PIL import Image

from mpoxscan import __version__
from mpoxscan.errors import BundleError
from mpoxscan.hashing import file_sha256
from mpoxscan.inference import bundle as bundle_module
from mpoxscan.inference.bundle import (
    FORMAT_VERSION,
    BundleMeta,
    load_ood_detector,
    load_torch_model,
    read_bundle_meta,
    save_bundle,
    update_bundle_files,
)
from mpoxscan.inference.predictor import Predictor
from mpoxscan.inference.quality import OodDetector


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    model = make_model(seed=3)
    meta = bundle_meta(model, "seed-cnn", SEED_SIZE, metrics={"test": {"roc_auc": float("nan")}})
    bundle = save_bundle(tmp_path_factory.mktemp("bundle") / "b", model, meta)
    return bundle, model


@pytest.fixture
def bundle(saved, tmp_path) -> Path:
    """A private copy of the saved bundle, free to damage."""
    return Path(shutil.copytree(saved[0], tmp_path / "copy"))


def test_round_trip_rebuilds_the_same_network(saved):
    bundle, model = saved
    loaded, meta = load_torch_model(bundle)
    x = torch.rand(3, 3, SEED_SIZE, SEED_SIZE)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert not loaded.training
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["mpoxscan_version"] == __version__
    assert meta["architecture"]["name"] == "seed-cnn"
    assert meta["classes"] == ["Others", "Monkey Pox"]
    assert meta["files"] == {"model.safetensors": file_sha256(bundle / "model.safetensors")}
    assert meta["created"]


def test_model_json_is_strict_json_with_nan_as_null(saved):
    text = (saved[0] / "model.json").read_text()
    meta = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert meta["metrics"]["test"]["roc_auc"] is None


def test_tampered_weights_are_refused(bundle):
    weights = bundle / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.safetensors.*re-export"):
        load_torch_model(bundle)


def test_truncated_weights_are_refused(bundle):
    weights = bundle / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(BundleError, match="truncated"):
        read_bundle_meta(bundle)


def test_missing_weights_are_refused(bundle):
    (bundle / "model.safetensors").unlink()
    with pytest.raises(BundleError, match=r"model\.safetensors is missing"):
        load_torch_model(bundle)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, r"model\.json is missing"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_missing_or_invalid_model_json_is_refused(bundle, content, match):
    meta_file = bundle / "model.json"
    if content is None:
        meta_file.unlink()
    else:
        meta_file.write_text(content)
    with pytest.raises(BundleError, match=match):
        read_bundle_meta(bundle)


@pytest.mark.parametrize("version", [2, None, "1"])
def test_unknown_format_version_is_refused(bundle, version):
    meta = json.loads((bundle / "model.json").read_text())
    meta["format_version"] = version
    (bundle / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="format_version"):
        read_bundle_meta(bundle)


def test_not_a_folder_is_refused(tmp_path):
    with pytest.raises(BundleError, match="No model bundle"):
        read_bundle_meta(tmp_path / "nowhere")


def test_a_pickle_next_to_the_weights_is_never_loaded(bundle, monkeypatch):
    other = make_model(seed=99)
    torch.save(other.state_dict(), bundle / "model.pt")

    def refuse(*args, **kwargs):
        raise AssertionError("a bundle load unpickled something")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    loaded, _ = load_torch_model(bundle)
    expected = make_model(seed=3)
    x = torch.rand(2, 3, SEED_SIZE, SEED_SIZE)
    with torch.no_grad():
        assert torch.equal(loaded(x), expected(x))


def test_a_bundle_listing_a_pickle_file_is_refused(bundle):
    torch.save(make_model().state_dict(), bundle / "model.pt")
    meta = json.loads((bundle / "model.json").read_text())
    meta["files"]["model.pt"] = file_sha256(bundle / "model.pt")
    (bundle / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="pickle"):
        read_bundle_meta(bundle)
    with pytest.raises(BundleError, match="pickle"):
        update_bundle_files(bundle, new_files=[bundle / "model.pt"])


def test_a_file_outside_the_bundle_is_refused(bundle):
    meta = json.loads((bundle / "model.json").read_text())
    meta["files"]["../model.safetensors"] = "0" * 64
    (bundle / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="outside the bundle"):
        read_bundle_meta(bundle)


def test_weights_of_another_architecture_are_refused(bundle):
    meta = json.loads((bundle / "model.json").read_text())
    meta["architecture"]["image_size"] = 128  # a 2x2 map instead of 1x1: a bigger dense layer
    (bundle / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="do not fit"):
        load_torch_model(bundle)


def test_an_unknown_architecture_is_refused(bundle):
    meta = json.loads((bundle / "model.json").read_text())
    meta["architecture"]["name"] = "resnet-9000"
    (bundle / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"resnet-9000.*Upgrade mpoxscan"):
        load_torch_model(bundle)


def test_update_adds_a_file_and_its_hash(bundle, tmp_path):
    plot = tmp_path / "curves.png"
    plot.write_bytes(b"not really a png")
    meta = update_bundle_files(bundle, {"notes": "added a plot"}, [plot])
    assert meta["files"]["curves.png"] == file_sha256(bundle / "curves.png")
    assert read_bundle_meta(bundle)["notes"] == "added a plot"
    (bundle / "curves.png").write_bytes(b"changed")
    with pytest.raises(BundleError, match=r"curves\.png has changed"):
        read_bundle_meta(bundle)


def test_update_refuses_to_bless_a_tampered_bundle(bundle):
    weights = bundle / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(BundleError, match=r"model\.safetensors has changed"):
        update_bundle_files(bundle, {"notes": "x"})


def test_saving_again_drops_a_stale_onnx_graph(bundle):
    (bundle / "model.onnx").write_bytes(b"stale graph of the old weights")
    model = make_model(seed=5)
    save_bundle(bundle, model, bundle_meta(model, "seed-cnn", SEED_SIZE))
    assert not (bundle / "model.onnx").exists()
    assert "model.onnx" not in read_bundle_meta(bundle)["files"]


def test_save_needs_the_required_meta(tmp_path):
    with pytest.raises(ValueError, match="classes"):
        save_bundle(tmp_path / "b", make_model(), {"architecture": {}, "preprocessing": {}})


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"positive_class": "Others"}, "logit is classes"),
        ({"classes": ["a", "b", "c"], "positive_class": None}, "exactly 2 classes"),
        ({"positive_class": "Cowpox"}, "not one of"),
    ],
)
def test_save_refuses_classes_that_contradict_the_outputs(tmp_path, overrides, match):
    model = make_model()
    with pytest.raises(ValueError, match=match):
        save_bundle(tmp_path / "b", model, bundle_meta(model, "seed-cnn", SEED_SIZE, **overrides))


def test_the_ood_detector_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.gamma(2.0, size=(40, 32))
    detector = OodDetector().fit(train)
    bundle = build_bundle(tmp_path / "b", ood=detector)
    meta = read_bundle_meta(bundle)
    assert "ood.safetensors" in meta["files"]
    assert meta["ood"]["threshold"] == pytest.approx(detector.threshold_)
    loaded = load_ood_detector(bundle, meta)
    probe = rng.gamma(2.0, size=(5, 32)) * 3
    np.testing.assert_allclose(loaded.distance(probe), detector.distance(probe), rtol=1e-4)
    assert loaded.threshold_ == pytest.approx(detector.threshold_)


def test_a_bundle_without_ood_has_no_detector(saved):
    assert load_ood_detector(saved[0], read_bundle_meta(saved[0])) is None


DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "models" / "default"


@pytest.fixture
def default_bundle() -> Path:
    if not (DEFAULT_BUNDLE / "model.json").is_file():
        pytest.skip("models/default is absent")
    return DEFAULT_BUNDLE


def test_the_default_bundle_reads_as_a_typed_record_and_its_json_stays_as_it_was(default_bundle):
    meta = read_bundle_meta(default_bundle)
    assert isinstance(meta, BundleMeta)
    assert meta.architecture.name == "efficientnet-lite0" and meta.binary
    assert meta.classes == ("Other", "Monkey Pox") and meta.positive_class == "Monkey Pox"
    assert meta.preprocessing.image_size == 224 and meta.preprocessing.mean == (127.0,) * 3
    assert 0 < meta.threshold < 1 and meta.temperature > 0
    assert meta.ood is not None and "ood.safetensors" in meta.files
    on_disk = json.loads((default_bundle / "model.json").read_text())
    assert meta.to_json() == on_disk and meta == on_disk
    assert meta["cross_validation"] == on_disk["cross_validation"]  # keys it does not type


def test_loading_a_bundle_hashes_each_file_once(default_bundle, monkeypatch):
    hashed: list[str] = []
    real = bundle_module.file_sha256
    monkeypatch.setattr(
        bundle_module, "file_sha256", lambda path: hashed.append(Path(path).name) or real(path)
    )
    predictor = Predictor.load(default_bundle, backend="onnx")
    photo = Image.new("RGB", (64, 64), (180, 120, 110))
    predictor.explain(photo)  # loads the torch model (lazily) beside the ONNX graph
    assert sorted(hashed) == sorted(predictor.meta_.files)

    hashed.clear()
    Predictor.load(default_bundle, backend="torch")
    assert sorted(hashed) == sorted(predictor.meta_.files)


def test_an_invalid_record_is_refused_before_anything_loads(bundle):
    meta = json.loads((bundle / "model.json").read_text())
    meta["preprocessing"]["mean"] = "grey"
    (bundle / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"model\.json is invalid"):
        read_bundle_meta(bundle)
