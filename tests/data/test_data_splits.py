"""split_dataset, grouped_folds and check_leaks: patient-grouped, stratified, deterministic."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mpoxscan.data.datasets import DatasetIndex, ImageRecord, scan_dataset
from mpoxscan.data.splits import Split, check_leaks, grouped_folds, split_dataset
from mpoxscan.errors import DatasetError

CLASSES = ("Monkey Pox", "Others")


def synthetic_records(
    patients: tuple[int, int] = (30, 40), seed: int = 0, split: str | None = None
) -> list[ImageRecord]:
    """Records (no files needed) with 1-4 photos per patient."""
    rng = np.random.default_rng(seed)
    records = []
    for label, (class_name, n_patients) in enumerate(zip(CLASSES, patients, strict=True)):
        for p in range(n_patients):
            for photo in range(int(rng.integers(1, 5))):
                path = Path("/data") / class_name / f"P{p}_{photo}.jpg"
                records.append(
                    ImageRecord(path, class_name, 1 - label, f"{class_name}/P{p}", split)
                )
    return records


def unsplit_index(records: list[ImageRecord]) -> DatasetIndex:
    return DatasetIndex(
        root=Path("/data"),
        layout="unsplit",
        class_names=list(CLASSES),
        classes=["Others", "Monkey Pox"],
        positive_class="Monkey Pox",
        multiclass=False,
        records=records,
    )


def patients(records: list[ImageRecord]) -> set[str]:
    return {r.patient for r in records}


def positive_share(records: list[ImageRecord]) -> float:
    return sum(r.class_name == "Monkey Pox" for r in records) / len(records)


def assert_patient_disjoint_partition(split, records: list[ImageRecord]) -> None:
    parts = (split.train, split.val, split.test)
    assert sorted(r.path for part in parts for r in part) == sorted(r.path for r in records)
    assert not patients(split.train) & patients(split.test)
    assert not patients(split.train) & patients(split.val)
    assert not patients(split.val) & patients(split.test)
    assert check_leaks(split) == []


def test_split_is_by_patient_stratified_and_about_70_10_20():
    records = synthetic_records()
    split = split_dataset(unsplit_index(records), seed=3)
    assert_patient_disjoint_partition(split, records)
    for class_name, n in zip(CLASSES, (30, 40), strict=True):
        in_test = {p for p in patients(split.test) if p.startswith(class_name)}
        in_val = {p for p in patients(split.val) if p.startswith(class_name)}
        assert abs(len(in_test) - 0.2 * n) <= 1
        assert abs(len(in_val) - 0.1 * n) <= 1
    assert abs(positive_share(split.test) - positive_share(records)) < 0.12


def test_split_is_deterministic_per_seed():
    index = unsplit_index(synthetic_records())
    first, again = split_dataset(index, seed=7), split_dataset(index, seed=7)
    assert [r.path for r in first.test] == [r.path for r in again.test]
    assert [r.path for r in first.val] == [r.path for r in again.val]
    other = split_dataset(index, seed=8)
    assert patients(other.test) != patients(first.test)


def test_presplit_keeps_its_folders(tiny_presplit_dataset):
    index = scan_dataset(tiny_presplit_dataset)
    split = split_dataset(index, seed=1)
    assert {r.split for r in split.train} == {"train"}
    assert {r.split for r in split.val} == {"val"}
    assert {r.split for r in split.test} == {"test"}
    assert len(split.train) + len(split.val) + len(split.test) == len(index.records)


def test_presplit_without_val_folder_carves_val_from_train_patients():
    train = synthetic_records(seed=1, split="train")
    test = [
        ImageRecord(
            r.path.with_name("T" + r.path.name), r.class_name, r.label, r.patient + "t", "test"
        )
        for r in synthetic_records(patients=(5, 5), seed=2, split="test")
    ]
    index = unsplit_index(train + test)
    index.layout = "presplit"
    split = split_dataset(index, val_fraction=0.1)
    assert split.test == test
    assert split.val and not patients(split.val) & patients(split.train)
    assert sorted(r.path for r in split.train + split.val) == sorted(r.path for r in train)


def test_too_few_patients_is_a_dataset_error():
    records = synthetic_records(patients=(1, 10))
    with pytest.raises(DatasetError, match="'Monkey Pox' has 1 patient"):
        split_dataset(unsplit_index(records))
    with pytest.raises(DatasetError, match="Cannot make 5 patient-grouped folds"):
        grouped_folds(synthetic_records(patients=(2, 2)), n_folds=5)


def test_bad_fractions_are_rejected():
    index = unsplit_index(synthetic_records())
    with pytest.raises(ValueError, match="test_fraction"):
        split_dataset(index, test_fraction=0)
    with pytest.raises(ValueError, match="below 1"):
        split_dataset(index, val_fraction=0.5, test_fraction=0.5)


def test_grouped_folds_cover_every_photo_once_without_leaks():
    records = synthetic_records()
    folds = grouped_folds(records, n_folds=5, repeats=2, val_fraction=0.15, seed=0)
    assert [(f.repeat, f.index) for f in folds] == [(r, k) for r in range(2) for k in range(5)]
    for repeat in range(2):
        tested = Counter(r.path for f in folds if f.repeat == repeat for r in f.test)
        assert tested == Counter(r.path for r in records)  # each photo in exactly one test fold
    for fold in folds:
        assert_patient_disjoint_partition(fold, records)
        assert 0.1 < len(patients(fold.val)) / len(patients(fold.train + fold.val)) < 0.25
        assert abs(positive_share(fold.test) - positive_share(records)) < 0.15
    first, second = ([patients(f.test) for f in folds if f.repeat == r] for r in (0, 1))
    assert first != second  # the repeat reshuffles


def test_grouped_folds_are_deterministic_per_seed():
    records = synthetic_records()
    a = grouped_folds(records, seed=5)
    b = grouped_folds(records, seed=5)
    assert [[r.path for r in f.test] for f in a] == [[r.path for r in f.test] for f in b]
    assert [[r.path for r in f.val] for f in a] == [[r.path for r in f.val] for f in b]


def test_check_leaks_names_a_patient_in_two_parts():
    records = synthetic_records(patients=(3, 3))
    by_patient = {r.patient: r for r in records}
    leaked = by_patient["Others/P1"]
    split = Split(
        train=[r for r in records if r.patient != "Others/P2"],
        val=[],
        test=[r for r in records if r.patient == "Others/P2"] + [leaked],
    )
    assert check_leaks(split) == ["Others/P1"]


@pytest.mark.msld
def test_msld_split_and_folds_are_patient_independent(msld_dir):
    index = scan_dataset(msld_dir)
    assert len(patients(index.records)) == 136
    split = split_dataset(index, seed=0)
    assert_patient_disjoint_partition(split, index.records)
    assert abs(positive_share(split.test) - positive_share(index.records)) < 0.06
    folds = grouped_folds(index.records, n_folds=5, seed=0)
    assert Counter(r.path for f in folds for r in f.test) == Counter(r.path for r in index.records)
    for fold in folds:
        assert check_leaks(fold) == []
        assert abs(positive_share(fold.test) - positive_share(index.records)) < 0.06
