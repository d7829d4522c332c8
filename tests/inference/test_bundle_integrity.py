"""Bundle integrity: only safetensors and JSON (never pickle), a SHA-256 for every weight and
ONNX file checked on every load, and tampered or truncated bundles refused, by the library
and by ``mpoxscan serve`` (non-zero exit, a clear message, no port opened)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from mpoxscan.errors import BundleError
from mpoxscan.hashing import file_sha256
from mpoxscan.inference.bundle import read_bundle_meta, save_bundle
from mpoxscan.inference.onnx_export import export_onnx
from mpoxscan.inference.predictor import Predictor
from mpoxscan.models.registry import create_model

IMAGE_SIZE = 72


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A small seed-cnn bundle with its ONNX export."""
    model = create_model("seed-cnn", num_outputs=1, pretrained=False, image_size=IMAGE_SIZE)
    prep = model.preprocessing
    meta = {
        "architecture": {"name": "seed-cnn", "num_outputs": 1, "image_size": IMAGE_SIZE},
        "classes": ["Others", "Monkey Pox"],
        "preprocessing": {"image_size": IMAGE_SIZE, "mean": prep.mean, "std": prep.std},
    }
    bundle = save_bundle(tmp_path_factory.mktemp("integrity") / "bundle", model.eval(), meta)
    export_onnx(bundle)
    return bundle


@pytest.fixture
def bundle(pristine, tmp_path) -> Path:
    """A copy of the bundle that a test may damage."""
    return Path(shutil.copytree(pristine, tmp_path / "bundle"))


def test_a_bundle_is_safetensors_onnx_and_json_with_every_hash(pristine):
    names = {path.name for path in pristine.iterdir()}
    assert names == {"model.json", "model.safetensors", "model.onnx"}
    meta = json.loads((pristine / "model.json").read_text())
    assert set(meta["files"]) == {"model.safetensors", "model.onnx"}
    for name, digest in meta["files"].items():
        assert digest == file_sha256(pristine / name)
    # safetensors starts with the length of its JSON header, a pickle with its protocol opcode.
    header_length = int.from_bytes((pristine / "model.safetensors").read_bytes()[:8], "little")
    assert (pristine / "model.safetensors").read_bytes()[8 : 8 + header_length].startswith(b"{")


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_loading_never_unpickles(pristine, monkeypatch, backend):
    def refuse(*args, **kwargs):
        raise AssertionError("a bundle load tried to unpickle")

    for target, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(target, name, refuse)
    predictor = Predictor.load(pristine, backend=backend)
    pixels = np.full((1, 3, IMAGE_SIZE, IMAGE_SIZE), 128, np.float32)
    probabilities, _ = predictor.predict_pixels(pixels)
    assert probabilities.shape == (1, 2)


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def append_zip(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"PK\x03\x04 appended")


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("model.safetensors", flip_middle_byte),
        ("model.safetensors", truncate),
        ("model.onnx", flip_middle_byte),
        ("model.onnx", truncate),
        ("model.onnx", append_zip),
    ],
    ids=[
        "weights-bit-flip",
        "weights-truncated",
        "onnx-bit-flip",
        "onnx-truncated",
        "onnx-appended",
    ],
)
@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_changed_file_is_refused_by_every_backend(bundle, name, damage: Callable, backend):
    damage(bundle / name)
    with pytest.raises(BundleError, match=rf"{name} has changed since the bundle was saved"):
        Predictor.load(bundle, backend=backend)


def edit_meta(bundle: Path, edit: Callable[[dict], None]) -> None:
    meta = json.loads((bundle / "model.json").read_text())
    edit(meta)
    (bundle / "model.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["files"].update({"weights.pt": "0" * 64}), "a pickle file"),
        (lambda m: m["files"].update({"../outside.json": "0" * 64}), "outside the bundle"),
        (lambda m: m["files"].pop("model.safetensors"), r"does not list model\.safetensors"),
        (lambda m: m["files"].update({"model.onnx": "0" * 64}), "has changed since"),
        (lambda m: m.update({"format_version": 99}), "format_version 99"),
    ],
    ids=["lists-a-pickle", "path-outside", "no-weights-hash", "wrong-onnx-hash", "future-format"],
)
def test_a_doctored_model_json_is_refused(bundle, edit, message):
    edit_meta(bundle, edit)
    with pytest.raises(BundleError, match=message):
        read_bundle_meta(bundle)


def test_a_truncated_model_json_is_refused(bundle):
    text = (bundle / "model.json").read_text()
    (bundle / "model.json").write_text(text[: len(text) // 2])
    with pytest.raises(BundleError, match="not valid JSON"):
        Predictor.load(bundle)


def test_a_missing_listed_file_is_refused(bundle):
    (bundle / "model.onnx").unlink()
    with pytest.raises(BundleError, match=r"model\.onnx is missing"):
        Predictor.load(bundle, backend="torch")


def test_files_that_model_json_does_not_list_are_never_loaded(bundle):
    """A planted ``model.onnx`` (or pickle) beside the weights is ignored, not trusted."""
    edit_meta(bundle, lambda m: m["files"].pop("model.onnx"))
    (bundle / "model.onnx").write_bytes(b"not a graph")
    torch.save({"x": torch.zeros(1)}, bundle / "model.pt")
    predictor = Predictor.load(bundle)
    assert predictor.backend_ == "torch"


def test_onnx_with_external_data_is_refused(bundle):
    """Tensors in external data files would escape the hashes, so such a graph is refused."""
    import onnx

    from mpoxscan.inference.bundle import update_bundle_files

    model = onnx.load(str(bundle / "model.onnx"))
    onnx.save_model(
        model,
        str(bundle / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.data",
        size_threshold=0,
    )
    # Rehash as an attacker who controls the bundle folder could; the graph is still refused.
    edit_meta(
        bundle, lambda m: m["files"].update({"model.onnx": file_sha256(bundle / "model.onnx")})
    )
    with pytest.raises(BundleError, match="external data"):
        Predictor.load(bundle, backend="onnx")
    with pytest.raises(BundleError, match="external data"):
        update_bundle_files(bundle)


# --- mpoxscan serve on a bad bundle ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_refuses_a_tampered_bundle_without_opening_a_port(bundle, workers):
    flip_middle_byte(bundle / "model.safetensors")
    port = free_port()
    command = [sys.executable, "-m", "mpoxscan.cli", "serve", "--model-dir", str(bundle)]
    command += ["--port", str(port), "--workers", str(workers)]
    # A wide terminal, so the message's long temporary path is not wrapped mid-word.
    env = {**os.environ, "COLUMNS": "500"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    opened = False
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        opened = opened or port_open(port)
        time.sleep(0.05)
    if process.poll() is None:
        process.kill()
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 2, stdout + stderr
    message = " ".join((stdout + stderr).split())
    assert "Cannot serve the model in" in message
    assert "model.safetensors has changed since the bundle was saved" in message
    assert not opened
