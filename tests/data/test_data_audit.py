"""audit_dataset, find_split_leaks and merge_duplicate_patients: planted copies are found."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from mpoxscan.cli import app
from mpoxscan.data.audit import (
    audit_dataset,
    find_split_leaks,
    merge_duplicate_patients,
    perceptual_hash,
)
from mpoxscan.data.datasets import scan_dataset
from mpoxscan.data.splits import grouped_folds, split_dataset


def distinct_photo(seed: int, size: int = 96) -> Image.Image:
    """A photo-like image: smooth random colour field with a few blobs, unique per seed."""
    rng = np.random.default_rng(seed)
    field = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8), "RGB")
    img = field.resize((size, size), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x, y, r = rng.integers(10, size - 10), rng.integers(10, size - 10), rng.integers(3, 9)
        draw.ellipse(
            [x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 256, 3))
        )
    return img


def write_folder(folder: Path, prefix: str, patients: range, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for p in patients:
        for photo in (1, 2):
            distinct_photo(seed * 1000 + p * 10 + photo).save(
                folder / f"{prefix}{p}_{photo}.jpg", quality=92
            )


def make_presplit(root: Path) -> Path:
    write_folder(root / "Train" / "Monkey Pox", "P", range(0, 4), seed=1)
    write_folder(root / "Train" / "Others", "N", range(0, 4), seed=2)
    write_folder(root / "Test" / "Monkey Pox", "P", range(10, 12), seed=3)
    write_folder(root / "Test" / "Others", "N", range(10, 12), seed=4)
    return root


def disguised_copy(src: Path, dst: Path, crop: float = 0.025) -> None:
    """Crop ``crop`` off every side, shrink to 80 %, re-encode as JPEG quality 70."""
    img = Image.open(src).convert("RGB")
    w, h = img.size
    dx, dy = round(w * crop), round(h * crop)
    small = img.crop((dx, dy, w - dx, h - dy)).resize((int(w * 0.8), int(h * 0.8)))
    small.save(dst, quality=70)


@pytest.fixture(scope="module")
def clean_presplit(tmp_path_factory) -> Path:
    return make_presplit(tmp_path_factory.mktemp("clean-presplit"))


@pytest.fixture(scope="module")
def leaky_presplit(tmp_path_factory, clean_presplit) -> Path:
    root = tmp_path_factory.mktemp("leaky") / "set"
    shutil.copytree(clean_presplit, root)
    shutil.copy(root / "Train/Monkey Pox/P0_1.jpg", root / "Test/Monkey Pox/P20_1.jpg")
    disguised_copy(root / "Train/Others/N1_1.jpg", root / "Test/Others/N21_1.jpg")
    return root


def test_clean_presplit_set_has_no_leaks(clean_presplit):
    report = audit_dataset(clean_presplit)
    assert not report.has_leaks
    assert report.exact_duplicates == [] and report.near_duplicates == []
    assert report.photos_per_class == {"Monkey Pox": 12, "Others": 12}
    assert report.patients_per_class == {"Monkey Pox": 6, "Others": 6}
    assert set(report.photos_per_patient.values()) == {2}


def test_clean_unsplit_set_has_no_leaks_in_its_split_or_folds(tiny_dataset):
    report = audit_dataset(tiny_dataset, seed=0, folds=5)
    assert not report.has_leaks
    assert report.exact_duplicates == [] and report.near_duplicates == []
    # both the split and the CV folds were checked (only the crop search was not asked for)
    assert report.notes == ["Cropped copies not searched: no embedder given (stage 1 only)."]
    assert report.photos_per_class == {"Monkey Pox": 24, "Others": 24}


def test_planted_exact_and_disguised_copies_are_found(leaky_presplit):
    report = audit_dataset(leaky_presplit)
    assert report.has_leaks
    found = {frozenset((p.a.name, p.b.name)): p for p in report.cross_split}
    exact = found[frozenset(("P0_1.jpg", "P20_1.jpg"))]
    assert exact.exact and exact.distance == 0 and exact.where == "folders: test / train"
    near = found[frozenset(("N1_1.jpg", "N21_1.jpg"))]
    assert not near.exact and near.distance <= report.near_threshold
    assert len(found) == 2
    assert [{p.name for p in group} for group in report.exact_duplicates] == [
        {"P0_1.jpg", "P20_1.jpg"}
    ]
    assert [{p.a.name, p.b.name} for p in report.near_duplicates] == [{"N1_1.jpg", "N21_1.jpg"}]
    assert report.patient_leaks == [] and report.cross_class == []


def test_disguised_copy_is_missed_with_a_zero_threshold(leaky_presplit):
    report = audit_dataset(leaky_presplit, near_threshold=0)
    assert [({p.a.name, p.b.name}, p.exact) for p in report.cross_split] == [
        ({"P0_1.jpg", "P20_1.jpg"}, True)
    ]


def test_patient_in_two_splits_same_photo_under_two_classes_and_unreadable_files(
    tmp_path, clean_presplit
):
    root = tmp_path / "set"
    shutil.copytree(clean_presplit, root)
    distinct_photo(999).save(root / "Test/Monkey Pox/P2_3.jpg")  # patient P2 is also in Train
    shutil.copy(root / "Train/Others/N3_2.jpg", root / "Train/Monkey Pox/P7_1.jpg")
    (root / "Train/Others/N9_1.jpg").write_text("not an image")
    report = audit_dataset(root)
    assert report.has_leaks
    assert report.patient_leaks == ["Monkey Pox/P2 (folders: test, train)"]
    assert [(p.a.name, p.b.name, p.where) for p in report.cross_class] == [
        ("P7_1.jpg", "N3_2.jpg", "Monkey Pox / Others")
    ]
    assert [(u.path.name, "not a photo" in u.reason) for u in report.unreadable] == [
        ("N9_1.jpg", True)
    ]
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["has_leaks"] is True
    assert as_json["unreadable"][0]["path"] == "Train/Others/N9_1.jpg"
    assert as_json["cross_class"][0]["a"] == "Train/Monkey Pox/P7_1.jpg"


def test_against_finds_photos_shared_with_another_set(tmp_path, clean_presplit):
    other = tmp_path / "external"
    (other / "mpox").mkdir(parents=True)
    (other / "healthy").mkdir()
    disguised_copy(clean_presplit / "Test/Monkey Pox/P10_2.jpg", other / "mpox/x.jpg")
    distinct_photo(4242).save(other / "healthy/y.jpg")
    report = audit_dataset(clean_presplit, against=other)
    assert [(p.a.name, p.b.name) for p in report.against_duplicates] == [("P10_2.jpg", "x.jpg")]
    assert report.has_leaks
    assert report.to_dict()["against_duplicates"][0]["b"] == "external/mpox/x.jpg"


def test_unsplit_set_copy_under_another_patient_is_caught_and_merged(tmp_path):
    root = tmp_path / "set"
    write_folder(root / "Monkey Pox", "P", range(8), seed=5)
    write_folder(root / "Others", "N", range(8), seed=6)
    shutil.copy(root / "Others/N1_1.jpg", root / "Others/N9_1.jpg")  # same photo, new patient
    for seed in range(4):
        report = audit_dataset(root, seed=seed, folds=4)
        # The copy is reported, but the splits that train and cv use keep it with its twin.
        assert [[p.name for p in group] for group in report.exact_duplicates] == [
            ["N1_1.jpg", "N9_1.jpg"]
        ]
        assert not report.patient_leaks and not report.cross_split

    index = scan_dataset(root)
    merged = merge_duplicate_patients(index.records)
    by_name = {r.path.name: r.patient for r in merged}
    assert by_name["N9_1.jpg"] == by_name["N1_1.jpg"] == by_name["N1_2.jpg"] == "Others/N1"
    for seed in range(4):
        for fold in grouped_folds(merged, n_folds=4, seed=seed):
            assert find_split_leaks(fold) == []


def test_find_split_leaks_describes_each_leak(leaky_presplit):
    split = split_dataset(scan_dataset(leaky_presplit), val_fraction=0.25)
    messages = find_split_leaks(split)
    assert len(messages) == 2
    assert any("same file" in m and "P0_1.jpg" in m and "P20_1.jpg" in m for m in messages)
    assert any("near-duplicate" in m and "N21_1.jpg" in m for m in messages)
    clean = dataclasses.replace(
        split, test=[r for r in split.test if r.path.name not in ("P20_1.jpg", "N21_1.jpg")]
    )
    assert find_split_leaks(clean) == []


def test_perceptual_hash_ignores_re_encoding_but_not_content():
    img = distinct_photo(1)
    buf = io.BytesIO()
    img.resize((64, 64)).save(buf, "JPEG", quality=60)
    reencoded = Image.open(buf)
    assert bin(perceptual_hash(img) ^ perceptual_hash(reencoded)).count("1") <= 4
    assert bin(perceptual_hash(img) ^ perceptual_hash(distinct_photo(2))).count("1") > 12


@pytest.mark.msld
def test_msld_audit(msld_dir):
    """MSLD v1 ships one photo twice under two patient ids (Others/34_1.jpg = Others/82_1.jpg);
    apart from it the originals have no duplicates, so patient-grouped splits are clean once the
    two ids are merged."""
    report = audit_dataset(msld_dir, seed=0)
    assert report.unreadable == [] and report.near_duplicates == []
    assert report.cross_class == [] and report.patient_leaks == []
    assert [[p.relative_to(msld_dir).as_posix() for p in g] for g in report.exact_duplicates] == [
        ["Others/34_1.jpg", "Others/82_1.jpg"]
    ]
    assert report.cross_split == []  # the folds train and cv use merge the copy's patients

    index = scan_dataset(msld_dir)
    merged = merge_duplicate_patients(index.records)
    assert {r.patient for r in merged if r.path.name in ("34_1.jpg", "82_1.jpg")} == {"Others/34"}
    for fold in grouped_folds(merged, seed=0):
        test_names = {r.path.name for r in fold.test if r.class_name == "Others"}
        assert ("34_1.jpg" in test_names) == ("82_1.jpg" in test_names)
    split = split_dataset(dataclasses.replace(index, records=merged), seed=0)
    assert find_split_leaks(split) == []


def test_audit_command_shows_a_readable_verdict_and_exits_1_on_a_leak(
    leaky_presplit, clean_presplit, tmp_path
):
    runner = CliRunner()
    leaky = runner.invoke(app, ["audit", "--data", str(leaky_presplit)])
    assert leaky.exit_code == 1
    across = next(line for line in leaky.output.splitlines() if "across splits" in line)
    assert "│     2 │" in across  # the exact and the disguised copy
    assert "P0_1.jpg" in leaky.output and "Verdict: LEAK" in leaky.output

    report_file = tmp_path / "audit.json"
    clean = runner.invoke(app, ["audit", "--data", str(clean_presplit), "--json", str(report_file)])
    assert clean.exit_code == 0 and "Verdict: no leak" in clean.output
    assert json.loads(report_file.read_text())["has_leaks"] is False

    as_json = runner.invoke(app, ["audit", "--data", str(leaky_presplit), "--json", "-"])
    assert json.loads(as_json.stdout)["has_leaks"] is True  # the leak warning goes to stderr
