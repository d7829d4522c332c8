"""Commands that rewrite a bundle (``export``, ``attach-cv``) keep it usable when run again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mpoxscan.cli import app

from testdata import make_lesion_photo

DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "models" / "default"

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def cv_summary_of(meta: dict) -> dict:
    """A ``summary.json`` of a cross-validation of this bundle's recipe and photos."""
    card = meta["metrics"]["cv"]
    mean_std = {
        name: {"mean": value["mean"], "std": value["std"]}
        for name, value in card.items()
        if isinstance(value, dict) and "mean" in value
    }
    return {
        "command": "mpoxscan cv (rebuilt from the card)",
        "versions": {},
        "config": meta["config"] | {"folds": card["n_folds"], "repeats": card["repeats"]},
        "classes": meta["classes"],
        "positive_class": meta["positive_class"],
        "data": {
            "fingerprint": meta["data_fingerprint"],
            "n_images": card["n_images"],
            "n_patients": card["n_patients"],
        },
        "mean_std": mean_std,
        "pooled": {"threshold": 0.5},
    }


def predicted(bundle: Path, photos: list[Path]) -> list[float | None]:
    """What ``predict`` says (``None`` for a photo the checks turn away: a generated photo
    may be out of the shipped model's domain), then the ONNX graph's own output for every
    photo, without the checks."""
    from mpoxscan.inference.predictor import Predictor

    rows = json.loads(invoke("predict", "--model-dir", bundle, *photos, "--json").output)
    network = Predictor.load(bundle, backend="onnx").predict_proba(photos)[:, -1]
    return [row["probability"] for row in rows] + [float(p) for p in network]


@pytest.mark.skipif(
    not (DEFAULT_BUNDLE / "model.onnx").is_file(), reason="models/default has no model.onnx"
)
def test_export_and_attach_cv_twice_on_the_shipped_bundle_keep_its_predictions(tmp_path):
    bundle = tmp_path / "default"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    photos = []
    for seed, positive in ((1, True), (2, False)):
        photos.append(tmp_path / f"photo-{seed}.jpg")
        make_lesion_photo(positive=positive, seed=seed, size=240).save(photos[-1])
    before = predicted(bundle, photos)
    assert any(p is not None for p in before[: len(photos)])  # predict gives a number
    cv_dir = tmp_path / "cv"
    cv_dir.mkdir()
    meta = json.loads((bundle / "model.json").read_text())
    (cv_dir / "summary.json").write_text(json.dumps(cv_summary_of(meta)))

    for _ in range(2):
        invoke("export", "--model-dir", bundle)
        invoke("attach-cv", "--model-dir", bundle, "--cv-dir", cv_dir)

    assert predicted(bundle, photos) == pytest.approx(before, abs=1e-5)
    after = json.loads((bundle / "model.json").read_text())
    assert after["metrics"]["cv"]["roc_auc"]["mean"] == meta["metrics"]["cv"]["roc_auc"]["mean"]
    assert sorted(p.name for p in bundle.iterdir()) == sorted(
        p.name for p in DEFAULT_BUNDLE.iterdir()
    )  # no temporary files left behind


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("serve", "--port", "80000"), "--port"),
        (("serve", "--port", "0"), "--port"),
        (("train", "--data", ".", "--out", "x", "--epochs", "0"), "--epochs"),
        (("cv", "--data", ".", "--folds", "1"), "--folds"),
    ],
)
def test_out_of_range_options_are_refused_by_the_parser(args, option, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, list(args))
    assert result.exit_code == 2
    assert f"Invalid value for '{option}'" in result.output
    assert list(tmp_path.iterdir()) == []  # nothing created (cv's default --out is runs/cv)
