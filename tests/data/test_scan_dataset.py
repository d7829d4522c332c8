"""scan_dataset, patient_id and fingerprint_records: layouts, classes, labels, patients."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from mpoxscan.data.datasets import fingerprint_records, patient_id, scan_dataset
from mpoxscan.errors import DatasetError


def touch_photo(path: Path, shade: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade, 80, 60)).save(path)
    return path


def make_tree(root: Path, files: list[str]) -> Path:
    for i, rel in enumerate(files):
        touch_photo(root / rel, shade=i % 256)
    return root


def test_unsplit_msld_style_layout(tiny_dataset):
    index = scan_dataset(tiny_dataset)
    assert index.layout == "unsplit"
    assert index.class_names == ["Monkey Pox", "Others"]
    assert index.classes == ["Others", "Monkey Pox"]
    assert index.positive_class == "Monkey Pox"
    assert not index.multiclass
    assert len(index.records) == 48
    record = next(r for r in index.records if r.path.name == "P3_2.jpg")
    assert (record.class_name, record.label, record.patient, record.split) == (
        "Monkey Pox",
        1,
        "Monkey Pox/P3",
        None,
    )
    assert {r.label for r in index.records if r.class_name == "Others"} == {0}


def test_presplit_layout(tiny_presplit_dataset):
    index = scan_dataset(tiny_presplit_dataset)
    assert index.layout == "presplit"
    assert index.classes == ["Others", "Monkey Pox"]
    per_split = {s: sum(r.split == s for r in index.records) for s in ("train", "val", "test")}
    assert per_split == {"train": 32, "val": 12, "test": 12}


def test_split_folder_names_are_case_insensitive_and_validation_is_val(tmp_path):
    root = make_tree(
        tmp_path,
        [
            "train/Mpox/a_1.png",
            "train/Healthy skin/b_1.png",
            "VALIDATION/Mpox/c_1.png",
            "VALIDATION/Healthy skin/d_1.png",
            "Test/Mpox/e_1.png",
            "Test/Healthy skin/f_1.png",
        ],
    )
    index = scan_dataset(root)
    assert index.layout == "presplit"
    assert index.classes == ["Healthy skin", "Mpox"]
    assert {r.path.stem: r.split for r in index.records} == {
        "a_1": "train",
        "b_1": "train",
        "c_1": "val",
        "d_1": "val",
        "e_1": "test",
        "f_1": "test",
    }


def test_hidden_and_non_image_files_are_ignored(tmp_path):
    root = make_tree(
        tmp_path,
        ["Monkey Pox/P1_1.jpg", "Monkey Pox/P2_1.JPEG", "Others/1.png", "Others/sub/2.webp"],
    )
    (root / "Monkey Pox" / "notes.txt").write_text("not a photo")
    (root / "Monkey Pox" / ".DS_Store").write_bytes(b"\0\0")
    touch_photo(root / "Monkey Pox" / ".hidden.jpg")
    touch_photo(root / "Others" / ".thumbs" / "3.jpg")
    touch_photo(root / "__MACOSX" / "Monkey Pox" / "._P1_1.jpg")
    index = scan_dataset(root)
    assert sorted(r.path.name for r in index.records) == [
        "1.png",
        "2.webp",
        "P1_1.jpg",
        "P2_1.JPEG",
    ]
    assert index.class_names == ["Monkey Pox", "Others"]


def test_positive_override_and_case_insensitive_name(tiny_dataset):
    index = scan_dataset(tiny_dataset, positive="others")
    assert index.positive_class == "Others"
    assert index.classes == ["Monkey Pox", "Others"]
    assert {r.label for r in index.records if r.class_name == "Others"} == {1}
    assert {r.label for r in index.records if r.class_name == "Monkey Pox"} == {0}


def test_unknown_positive_class_names_the_available_classes(tiny_dataset):
    with pytest.raises(DatasetError, match="'Monkey Pox', 'Others'"):
        scan_dataset(tiny_dataset, positive="Measles")


def test_no_mpox_class_in_binary_mode_is_an_error_naming_the_classes(tmp_path):
    root = make_tree(tmp_path, ["cats/1.jpg", "dogs/2.jpg"])
    with pytest.raises(DatasetError) as info:
        scan_dataset(root)
    assert "'cats'" in info.value.message and "'dogs'" in info.value.message
    assert "--positive" in info.value.message
    assert scan_dataset(root, multiclass=True).positive_class is None


def test_negated_names_are_not_taken_as_positive(tmp_path):
    root = make_tree(tmp_path, ["Monkeypox/1.jpg", "Non-Monkeypox/2.jpg"])
    assert scan_dataset(root).positive_class == "Monkeypox"


def test_binary_mode_merges_several_negative_classes_into_other(tmp_path):
    root = make_tree(tmp_path, ["Chickenpox/1.jpg", "Measles/2.jpg", "Monkeypox/3.jpg"])
    index = scan_dataset(root)
    assert index.classes == ["Other", "Monkeypox"]
    assert {r.class_name: r.label for r in index.records} == {
        "Chickenpox": 0,
        "Measles": 0,
        "Monkeypox": 1,
    }


def test_multiclass_mode(tmp_path):
    root = make_tree(tmp_path, ["Measles/2.jpg", "Monkeypox/3.jpg", "Chickenpox/1.jpg"])
    index = scan_dataset(root, multiclass=True)
    assert index.multiclass
    assert index.classes == ["Chickenpox", "Measles", "Monkeypox"]
    assert index.positive_class == "Monkeypox"
    assert {r.class_name: r.label for r in index.records} == {
        "Chickenpox": 0,
        "Measles": 1,
        "Monkeypox": 2,
    }


@pytest.mark.parametrize(
    ("name", "expected"),
    [("P13_1.jpg", "P13"), ("a13_2.jpg", "a13"), ("17.jpg", "17"), ("11_1.jpg", "11")],
)
def test_msld_patient_ids(name, expected):
    assert patient_id(Path("Monkey Pox") / name) == expected


def test_patient_regex_first_group_or_whole_match():
    path = Path("x/scan-patient42-left-3.jpg")
    assert patient_id(path, r"patient(\d+)") == "42"
    assert patient_id(path, r"patient\d+") == "patient42"
    with pytest.raises(DatasetError, match="finds no patient id"):
        patient_id(path, r"case(\d+)")
    with pytest.raises(DatasetError, match="not a valid regular expression"):
        patient_id(path, r"(unclosed")


def test_patients_are_qualified_by_class_and_pattern_is_applied(tmp_path):
    root = make_tree(tmp_path, ["Mpox/id7-a.jpg", "Mpox/id7-b.jpg", "Others/id7-c.jpg"])
    index = scan_dataset(root, patient_pattern=r"id(\d+)")
    assert sorted(r.patient for r in index.records) == ["Mpox/7", "Mpox/7", "Others/7"]


def test_layout_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        scan_dataset(tmp_path / "missing")
    one_class = make_tree(tmp_path / "one", ["Monkey Pox/1.jpg"])
    with pytest.raises(DatasetError, match="at least two"):
        scan_dataset(one_class)
    mixed = make_tree(tmp_path / "mixed", ["Train/Mpox/1.jpg", "Mpox/2.jpg", "Test/Mpox/3.jpg"])
    with pytest.raises(DatasetError, match="mixes split folders"):
        scan_dataset(mixed)
    no_test = make_tree(tmp_path / "no-test", ["Train/Mpox/1.jpg", "Train/Others/2.jpg"])
    with pytest.raises(DatasetError, match="no Test folder"):
        scan_dataset(no_test)


def test_summary_counts(tiny_dataset):
    summary = scan_dataset(tiny_dataset).summary()
    assert summary["images"] == 48
    assert summary["images_per_class"] == {"Monkey Pox": 24, "Others": 24}
    assert summary["patients_per_class"] == {"Monkey Pox": 12, "Others": 12}
    assert summary["images_per_split"] == {"all": {"Monkey Pox": 24, "Others": 24}}


def test_fingerprint_follows_content_not_location(tmp_path):
    root = make_tree(tmp_path / "a", ["Mpox/P1_1.png", "Mpox/P2_1.png", "Others/1.png"])
    moved = tmp_path / "b"
    shutil.copytree(root, moved)
    first = fingerprint_records(scan_dataset(root).records)
    assert fingerprint_records(scan_dataset(moved).records) == first

    touch_photo(moved / "Mpox" / "P2_1.png", shade=250)  # same name, new pixels
    assert fingerprint_records(scan_dataset(moved).records) != first

    relabelled = fingerprint_records(scan_dataset(root, positive="Others").records)
    assert relabelled != first

    (root / "Others" / "1.png").rename(root / "Others" / "9.png")
    assert fingerprint_records(scan_dataset(root).records) != first


@pytest.mark.msld
def test_msld_classes_and_patients(msld_dir):
    summary = scan_dataset(msld_dir).summary()
    assert summary["classes"] == ["Others", "Monkey Pox"]
    assert summary["images_per_class"] == {"Monkey Pox": 102, "Others": 126}
    assert summary["patients_per_class"] == {"Monkey Pox": 60, "Others": 76}
