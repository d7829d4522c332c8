"""The command line as a user runs it: train, evaluate, predict, samples, export, cv, report."""

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from mpoxscan.cli import app

from testdata import make_lesion_photo

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def cli_bundle(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "bundle"
    result = invoke(
        "train",
        "--data",
        tiny_dataset,
        "--model",
        "seed-cnn",
        "--out",
        out,
        "--epochs",
        "1",
        "--image-size",
        "96",
    )
    assert "Test split" in result.output and "Accuracy" in result.output
    assert "fitting the model" in result.output  # progress per stage
    return out


def test_train_records_the_exact_command(cli_bundle):
    meta = json.loads((cli_bundle / "model.json").read_text())
    assert meta["command"].startswith("mpoxscan train --data")
    assert "--model seed-cnn" in meta["command"]
    # Complete, defaults included: what was run even if a default changes later.
    for default in ("--seed 0", "--recipe auto", "--target-sensitivity 0.95", "--no-multiclass"):
        assert default in meta["command"]


def test_evaluate_prints_a_table_and_writes_json(cli_bundle, tiny_dataset, tmp_path):
    out = tmp_path / "metrics.json"
    result = invoke("evaluate", "--model-dir", cli_bundle, "--data", tiny_dataset, "--json", out)
    assert "Sensitivity" in result.output and "ROC AUC" in result.output
    report = json.loads(out.read_text())
    assert report["evaluated_on"] == "the bundle's held-out test patients"
    for key in ("accuracy", "sensitivity", "specificity", "ppv", "f1", "roc_auc", "log_loss"):
        assert key in report["metrics"]
    assert (cli_bundle / "evaluation" / "confusion_matrix.png").exists()
    assert (cli_bundle / "evaluation" / "roc.png").exists()


def test_predict_json_reports_bad_files_and_predicts_the_rest(cli_bundle, tiny_dataset, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not a photo")
    good = next((tiny_dataset / "Monkey Pox").glob("*.jpg"))
    result = runner.invoke(
        app, ["predict", "--model-dir", str(cli_bundle), str(good), str(bad), "--json"]
    )
    assert result.exit_code == 3  # done, but a file could not be read
    rows = json.loads(result.stdout)
    assert rows[0]["file"] == str(good)
    assert rows[0]["label"] in ("Monkey Pox", "Others")
    assert rows[0]["probability"] == pytest.approx(rows[0]["probabilities"]["Monkey Pox"])
    assert rows[1]["file"] == str(bad) and rows[1]["code"] == "not_an_image"


def test_predict_walks_folders(cli_bundle, tiny_dataset):
    result = invoke("predict", "--model-dir", cli_bundle, tiny_dataset / "Others", "--json")
    assert len(json.loads(result.output)) == 24


def test_samples_writes_the_4x3_grid(tiny_dataset, tmp_path):
    out = tmp_path / "samples.png"
    invoke("samples", "--data", tiny_dataset, "--out", out)
    assert Image.open(out).size[0] > 300


def test_export_then_predict_uses_onnx_with_the_same_answer(cli_bundle, tiny_dataset):
    good = next((tiny_dataset / "Others").glob("*.jpg"))
    before = json.loads(invoke("predict", "--model-dir", cli_bundle, good, "--json").output)
    result = invoke("export", "--model-dir", cli_bundle, "--format", "onnx")
    assert "max |p_onnx - p_torch|" in result.output
    assert (cli_bundle / "model.onnx").exists()
    after = json.loads(invoke("predict", "--model-dir", cli_bundle, good, "--json").output)
    assert after[0]["probability"] == pytest.approx(before[0]["probability"], abs=1e-4)


def test_unknown_model_is_a_clear_error(tiny_dataset, tmp_path):
    result = runner.invoke(
        app, ["train", "--data", str(tiny_dataset), "--model", "resnet9000", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "resnet9000" in result.output


def test_missing_bundle_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["predict", "--model-dir", str(tmp_path / "nope"), str(tmp_path)])
    assert result.exit_code == 2
    assert "error" in result.output


def test_import_keras_gives_a_bundle_with_the_keras_outputs(tmp_path):
    """The tutorial's whole saved VGG16 model (full widths, 64x64 input, sigmoid scoring
    "Others") becomes a bundle whose mpox probability is 1 - Keras' output."""
    import numpy as np

    from mpoxscan import load_model

    from keras_h5_helpers import he_dense, tutorial_vgg_reference, vgg_convs, write_tutorial_vgg

    rng = np.random.default_rng(0)
    convs = vgg_convs(rng, (64, 128, 256, 512, 512))
    dense = [he_dense(rng, 2 * 2 * 512, 64), he_dense(rng, 64, 32), he_dense(rng, 32, 1)]
    h5 = write_tutorial_vgg(
        tmp_path / "vgg16_monkey_pox_best_model.h5",
        convs,
        dense,
        image_size=64,
        activation="sigmoid",
        nested=True,
    )
    invoke("import-keras", h5, "--out", tmp_path / "bundle")
    photo = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    keras_p_others = float(tutorial_vgg_reference(photo, convs, dense, "sigmoid")[0])
    prediction = load_model(tmp_path / "bundle").predict(Image.fromarray(photo))
    assert prediction.probabilities["Others"] == pytest.approx(keras_p_others, abs=1e-4)
    assert prediction.probability == pytest.approx(1 - keras_p_others, abs=1e-4)


def test_cv_prints_readable_mean_sd_and_pooled_intervals(tiny_dataset, tmp_path):
    out = tmp_path / "cv"
    result = invoke(
        "cv",
        "--data",
        tiny_dataset,
        "--model",
        "efficientnet-lite0",
        "--image-size",
        "64",
        "--folds",
        "3",
        "--out",
        out,
    )
    summary = json.loads((out / "summary.json").read_text())
    accuracy, auc = summary["mean_std"]["accuracy"], summary["mean_std"]["roc_auc"]
    output = result.output
    # Whole numbers even in an 80-column terminal, never cut to "0.…".
    assert f"{accuracy['mean']:.3f} ± {accuracy['std']:.3f}" in output
    assert f"{auc['mean']:.3f} ± {auc['std']:.3f}" in output
    assert f"{summary['pooled']['roc_auc']:.3f} (" in output
    assert "…" not in "".join(line for line in output.splitlines() if "0." in line)
    assert "24 patients" in output
    assert "fold 1/3 done in" in output and "fold 3/3 done in" in output  # progress per fold


def test_explain_writes_a_heat_map_per_assessed_photo(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    photos = Path("photos")
    for folder in ("left", "right"):  # two photos with the same name
        (photos / folder).mkdir(parents=True)
        make_lesion_photo(positive=True, seed=7, size=160).save(photos / folder / "arm.jpg")
    Image.new("RGB", (20, 20), (200, 150, 130)).save(photos / "tiny.png")
    (photos / "notes.jpg").write_text("not a photo")
    out = Path("heatmaps")

    result = runner.invoke(
        app, ["explain", "--model-dir", str(tiny_bundle), str(photos), "--out", str(out)]
    )
    assert result.exit_code == 3, result.output  # done, but notes.jpg could not be read

    written = sorted(p.name for p in out.iterdir())
    assert written == ["arm.heatmap-2.png", "arm.heatmap.png"]
    with Image.open(out / "arm.heatmap.png") as overlay:
        # At the size the photo is read at (read_photo: 160 px at 1/2 for the 64-px model).
        assert overlay.format == "PNG" and overlay.size == (80, 80)
        assert not overlay.info.get("exif")
    lines = result.output.splitlines()
    assert any("retake" in line and "tiny.png" in line for line in lines)
    assert any("unreadable" in line and "notes.jpg" in line for line in lines)
    assert sum("%" in line for line in lines) == 2


def test_recipe_flags_and_train_config_reach_the_recorded_config(tiny_dataset, tmp_path):
    base = tmp_path / "recipe.json"
    base.write_text(json.dumps({"batch_size": 4, "patience": 9, "features": {"train_views": 5}}))
    out = tmp_path / "cv"
    invoke(
        *("cv", "--data", tiny_dataset, "--out", out, "--folds", "2", "--image-size", "64"),
        *("--recipe", "frozen-features", "--head", "linear", "--views", "2", "--no-tta"),
        *("--epochs", "2", "--patience", "3", "--seed", "5", "--train-config", base),
    )
    train = json.loads((out / "summary.json").read_text())["config"]["train"]
    assert train["batch_size"] == 4  # from the file
    assert (train["patience"], train["epochs"], train["seed"]) == (3, 2, 5)  # flags win
    assert train["recipe"] == "frozen-features"
    features = train["features"]
    assert (features["head"], features["train_views"], features["tta"]) == ("linear", 2, False)
