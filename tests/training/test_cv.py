"""Cross-validation on generated photos: every photo tested once, no patient in two folds."""

import csv
import json
import shutil

from PIL import Image, ImageOps

from mpoxscan.data.datasets import fingerprint_records
from mpoxscan.data.sources import sources_summary
from mpoxscan.training.config import DataConfig, ModelConfig, TrainConfig
from mpoxscan.training.cv import run_cv
from mpoxscan.training.recipes import load_index

from testdata import write_class_folder


def test_cv_tests_every_photo_once_and_never_splits_a_patient(tiny_dataset, tmp_path):
    summary = run_cv(
        DataConfig(data_dir=str(tiny_dataset)),
        ModelConfig(name="seed-cnn", image_size=96),
        TrainConfig(epochs=1, batch_size=8),
        tmp_path,
        folds=3,
        command="pytest",
    )
    with (tmp_path / "oof.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 48
    assert len({row["file"] for row in rows}) == 48
    folds_of_patient = {}
    for row in rows:
        folds_of_patient.setdefault(row["patient"], set()).add(row["fold"])
    assert all(len(folds) == 1 for folds in folds_of_patient.values())
    assert len(summary["folds"]) == 3
    index = load_index(DataConfig(data_dir=str(tiny_dataset)))
    assert summary["data"] == {
        "fingerprint": fingerprint_records(index.records),  # what the bundle of this data has
        "n_images": 48,
        "n_patients": 24,
        "per_class": {"Monkey Pox": 24, "Others": 24},
        "sources": sources_summary(index),
        "copy_merges": [],
    }
    accuracy = summary["mean_std"]["accuracy"]
    assert len(accuracy["values"]) == 3 and 0 <= accuracy["mean"] <= 1
    assert summary["pooled"]["n_patients"] == 24
    assert json.loads((tmp_path / "summary.json").read_text())["command"] == "pytest"


def test_leave_source_out_cv_tests_each_negative_source_from_a_model_without_it(tmp_path):
    data = tmp_path / "data"
    write_class_folder(data / "web/Monkey Pox", True, patients=8, photos=1, seed=1)
    write_class_folder(data / "web/Others", False, patients=8, photos=1, seed=2)
    write_class_folder(data / "abdomen/Healthy", False, patients=8, photos=1, seed=3)
    write_class_folder(data / "clinic/Scabies", False, patients=8, photos=1, seed=4)
    paths = [str(data / name) for name in ("web", "abdomen", "clinic")]
    summary = run_cv(
        DataConfig(data_dir=paths[0], more_data=paths[1:]),
        ModelConfig(name="seed-cnn", image_size=96),
        TrainConfig(epochs=1, batch_size=8),
        tmp_path / "cv",
        leave_source_out=True,
        command="pytest",
    )
    assert [fold["left_out"] for fold in summary["folds"]] == ["abdomen", "clinic"]
    with (tmp_path / "cv" / "oof.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 32 and len({row["file"] for row in rows}) == 32
    for row in rows:
        if row["source"] in ("abdomen", "clinic"):
            left_out = summary["folds"][int(row["fold"])]["left_out"]
            assert row["source"] == left_out
    web_folds = {row["patient"]: row["fold"] for row in rows if row["source"] == "web"}
    assert set(web_folds.values()) == {"0", "1"}
    figures = {(r["source"], r["class"]): r for r in summary["per_source"]}
    assert figures["web", "Monkey Pox"]["photos"] == 8
    assert "sensitivity" in figures["web", "Monkey Pox"]
    assert figures["abdomen", "Healthy"]["groups"] == 8
    assert 0 <= figures["clinic", "Scabies"]["called"] <= 1
    assert summary["config"]["leave_source_out"] is True
    assert [s["name"] for s in summary["data"]["sources"]] == ["web", "abdomen", "clinic"]


def test_cv_puts_a_cropped_copy_under_another_patient_in_its_originals_fold(tiny_dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    original = sorted((data / "Others").glob("*.jpg"))[0]
    with Image.open(original) as img:
        w, h = img.size
        copy = ImageOps.mirror(img.crop((w // 10, h // 10, w, h)).resize((w * 2, h * 2)))
    copy.save(data / "Others" / "zz99_1.jpg", quality=80)  # a patient id of its own
    summary = run_cv(
        DataConfig(data_dir=str(data)),
        ModelConfig(name="seed-cnn", image_size=96),
        TrainConfig(epochs=1, batch_size=8),
        tmp_path / "cv",
        folds=3,
    )
    group = "Others/" + original.stem.split("_")[0]
    assert summary["data"]["copy_merges"] == [{"group": group, "members": [group, "Others/zz99"]}]
    with (tmp_path / "cv" / "oof.csv").open() as handle:
        rows = {row["file"]: row for row in csv.DictReader(handle)}
    copy_row, original_row = rows[str(data / "Others/zz99_1.jpg")], rows[str(original)]
    assert copy_row["patient"] == original_row["patient"] == group
    assert copy_row["fold"] == original_row["fold"]
