"""Recording a cross-validation of a bundle's recipe in its model card (``mpoxscan attach-cv``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mpoxscan.cli import app
from mpoxscan.evaluation.cv_card import CrossValidationMismatch, attach_cv
from mpoxscan.inference.bundle import read_bundle_meta
from mpoxscan.training.config import DataConfig, ModelConfig, TrainConfig
from mpoxscan.training.cv import run_cv

from testdata import train_tiny_bundle

#: The recipe of ``train_tiny_bundle``, so the cross-validation below is of that bundle.
TINY_TRAIN = {"epochs": 2, "batch_size": 8, "head_lr": 3e-3}


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory) -> Path:
    return train_tiny_bundle(tiny_dataset, tmp_path_factory.mktemp("cv-card") / "bundle").bundle_dir


@pytest.fixture(scope="module")
def cv_dir(tiny_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cv-card") / "cv"
    run_cv(
        DataConfig(data_dir=str(tiny_dataset)),
        ModelConfig(name="efficientnet-lite0", image_size=64),
        TrainConfig(**TINY_TRAIN, seed=3),
        out,
        folds=3,
        repeats=2,
        command="pytest cv",
        show_progress=False,
    )
    return out


@pytest.fixture
def bundle(trained, tmp_path) -> Path:
    copy = tmp_path / "bundle"
    shutil.copytree(trained, copy)
    return copy


def edited_cv(cv_dir: Path, tmp_path: Path, edit) -> Path:
    summary = json.loads((cv_dir / "summary.json").read_text())
    edit(summary)
    out = tmp_path / "edited-cv"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps(summary))
    return out


def test_attach_cv_puts_fold_means_and_pooled_intervals_on_the_card(bundle, cv_dir):
    summary = json.loads((cv_dir / "summary.json").read_text())

    attach_cv(bundle, cv_dir)

    meta = read_bundle_meta(bundle)  # every file hash still checks out
    card = meta["metrics"]["cv"]
    assert next(iter(meta["metrics"])) == "cv"  # shown first: the headline figures
    assert "test" in meta["metrics"]  # the single-split figures are kept beside them
    assert (card["n_folds"], card["repeats"]) == (3, 2)
    assert card["n_patients"] == 24 and card["n_images"] == 48
    for name in ("accuracy", "roc_auc", "sensitivity", "specificity"):
        assert card[name]["mean"] == summary["mean_std"][name]["mean"]
        assert card[name]["std"] == summary["mean_std"][name]["std"]
        assert card[name]["ci"] == summary["pooled"][f"{name}_ci"]
    assert card["patient_level"]["n_patients"] == 24
    assert (
        card["screening"]["sensitivity"]["mean"]
        == (summary["screening_mean_std"]["sensitivity"]["mean"])
    )
    assert meta["cross_validation"]["command"] == "pytest cv"
    assert meta["cross_validation"]["seed"] == 3


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda s: s["config"]["train"]["features"].update(head="linear"), "features.head"),
        (lambda s: s["config"]["model"].update(name="seed-cnn"), "model.name"),
        (lambda s: s["data"].update(fingerprint="0" * 64), "photos differ"),
        (lambda s: s["data"].pop("fingerprint"), "no data fingerprint"),
        (lambda s: s.update(positive_class="Others"), "positive_class"),
    ],
)
def test_attach_cv_refuses_a_cross_validation_of_something_else(
    bundle, cv_dir, tmp_path, edit, reason
):
    before = (bundle / "model.json").read_bytes()
    other = edited_cv(cv_dir, tmp_path, edit)

    with pytest.raises(CrossValidationMismatch, match=reason):
        attach_cv(bundle, other)

    assert (bundle / "model.json").read_bytes() == before


def test_attach_cv_command_reports_the_figures_and_fails_clearly(bundle, cv_dir, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["attach-cv", "--model-dir", str(bundle), "--cv-dir", str(cv_dir)])
    assert ok.exit_code == 0, ok.output
    assert "3 folds x 2 repeats" in ok.output and "24 patients" in ok.output

    missing = runner.invoke(
        app, ["attach-cv", "--model-dir", str(bundle), "--cv-dir", str(tmp_path / "nothing")]
    )
    assert missing.exit_code != 0
    assert "Cannot read" in missing.output
