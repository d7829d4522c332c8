"""Shared fixtures: small image datasets that the tests make themselves, and the MSLD folder.

Every test that must always run uses the generated datasets; tests on the real MSLD photos take
the ``msld_dir`` fixture, which skips with a reason when ``../shared/data/msld-v1`` is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testdata import (
    MSLD_DIR,
    POSITIVE_CLASS,
    make_presplit_dataset,
    make_unsplit_dataset,
    train_tiny_bundle,
)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """An unsplit two-class dataset of 48 small JPEGs from 24 patients."""
    return make_unsplit_dataset(tmp_path_factory.mktemp("tiny-unsplit"))


@pytest.fixture(scope="session")
def tiny_presplit_dataset(tmp_path_factory) -> Path:
    """A Train/Val/Test dataset of small JPEGs."""
    return make_presplit_dataset(tmp_path_factory.mktemp("tiny-presplit"))


@pytest.fixture(scope="session")
def msld_dir() -> Path:
    """The MSLD v1 originals; skips the test when the shared data folder is absent."""
    if not (MSLD_DIR / POSITIVE_CLASS).is_dir():
        pytest.skip(f"MSLD v1 not found at {MSLD_DIR} (set MPOXSCAN_MSLD_DIR to run this test)")
    return MSLD_DIR


@pytest.fixture(scope="session")
def tiny_bundle(tiny_dataset, tmp_path_factory) -> Path:
    """A real EfficientNet-Lite0 bundle (64x64 input) trained for two epochs on tiny_dataset."""
    return train_tiny_bundle(tiny_dataset, tmp_path_factory.mktemp("bundle") / "tiny").bundle_dir


@pytest.fixture(scope="session")
def onnx_bundle(tiny_bundle, tmp_path_factory) -> Path:
    """A copy of tiny_bundle with model.onnx (tiny_bundle stays torch-only); tests that change
    a bundle work on their own copy of it."""
    import shutil

    from mpoxscan.inference.onnx_export import export_onnx

    bundle = tmp_path_factory.mktemp("onnx-bundle") / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    export_onnx(bundle)
    return bundle
