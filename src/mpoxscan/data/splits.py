"""Patient-grouped, class-stratified splits and cross-validation folds.

All photos of one patient always land in the same part: the MSLD paper's protocol is
patient-independent, and splitting a patient's photos across train and test inflates scores.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

from mpoxscan.data.datasets import DatasetIndex, ImageRecord
from mpoxscan.errors import DatasetError


@dataclass
class Split:
    """A train / validation / test partition of a dataset's photos."""

    train: list[ImageRecord]
    val: list[ImageRecord]
    test: list[ImageRecord]


@dataclass
class Fold:
    """One cross-validation fold: ``index`` within repeat ``repeat`` (both from 0)."""

    index: int
    repeat: int
    train: list[ImageRecord]
    val: list[ImageRecord]
    test: list[ImageRecord]


def split_dataset(
    index: DatasetIndex, *, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0
) -> Split:
    """Split a dataset into train, validation and test parts by patient.

    A pre-split layout keeps its folders (a missing ``Val`` folder is carved from ``Train``
    patients, ``val_fraction`` of them). An unsplit one is split class by class, so each part
    keeps the class proportions: ``test_fraction`` of each class's patients go to test and
    ``val_fraction`` (of the whole) to validation, the rest to train.

    Args:
        index: the scanned dataset.
        val_fraction: share of patients for validation (0 for none).
        test_fraction: share of patients for test (unsplit layouts only).
        seed: the same seed gives the same split.

    Returns:
        The ``Split``.

    Raises:
        DatasetError: a class has too few patients to put one in each part.
    """
    _check_fraction("val_fraction", val_fraction, allow_zero=True)
    _check_fraction("test_fraction", test_fraction, allow_zero=False)
    if val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction + test_fraction is {val_fraction + test_fraction:g}; "
            "keep it below 1 so patients are left for training."
        )
    if index.layout == "presplit":
        by_split: dict[str | None, list[ImageRecord]] = defaultdict(list)
        for record in index.records:
            by_split[record.split].append(record)
        train, val = by_split["train"], by_split["val"]
        if not val and val_fraction > 0:
            train, val = _carve_by_patient(train, val_fraction, seed)
        return Split(train=train, val=val, test=by_split["test"])
    rest, test = _carve_by_patient(index.records, test_fraction, seed)
    val_share = val_fraction / (1 - test_fraction)
    train, val = _carve_by_patient(rest, val_share, seed) if val_fraction > 0 else (rest, [])
    return Split(train=train, val=val, test=test)


def grouped_folds(
    records: list[ImageRecord],
    *,
    n_folds: int = 5,
    repeats: int = 1,
    val_fraction: float = 0.15,
    seed: int = 0,
) -> list[Fold]:
    """Stratified, patient-grouped K-fold cross-validation.

    Each photo is in exactly one test fold per repeat; each fold's validation part is
    ``val_fraction`` of its training patients (per class). Repeat ``r`` reshuffles with seed
    ``seed + r``.

    Args:
        records: the photos to cross-validate on.
        n_folds: number of folds (at least 2).
        repeats: how many times to repeat the K-fold with a new shuffle.
        val_fraction: share of each fold's training patients held out for validation.
        seed: the same seed gives the same folds.

    Returns:
        ``n_folds * repeats`` folds, repeat by repeat.

    Raises:
        DatasetError: there are fewer patients than folds.
    """
    if n_folds < 2 or repeats < 1:
        raise ValueError(f"Need n_folds >= 2 and repeats >= 1, got {n_folds} and {repeats}.")
    _check_fraction("val_fraction", val_fraction, allow_zero=True)
    n_patients = len({r.patient for r in records})
    if n_patients < n_folds:
        raise DatasetError(
            f"Cannot make {n_folds} patient-grouped folds from {n_patients} patients; "
            "use fewer folds or add patients.",
            code="too_few_patients",
        )
    strata = np.array([r.class_name for r in records])
    groups = np.array([r.patient for r in records])
    folds = []
    for repeat in range(repeats):
        kfold = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed + repeat)
        for k, (pool_idx, test_idx) in enumerate(kfold.split(strata, strata, groups)):
            pool = [records[i] for i in pool_idx]
            train, val = (
                _carve_by_patient(pool, val_fraction, seed + repeat)
                if val_fraction > 0
                else (pool, [])
            )
            test = [records[i] for i in test_idx]
            folds.append(Fold(index=k, repeat=repeat, train=train, val=val, test=test))
    return folds


def check_leaks(split: Split | Fold) -> list[str]:
    """Return the patients found in more than one part of a split or fold (sorted).

    Args:
        split: a ``Split`` or ``Fold``.

    Returns:
        Class-qualified patient ids; empty when the parts are patient-disjoint.
    """
    parts: dict[str, set[str]] = defaultdict(set)
    for name, records in (("train", split.train), ("val", split.val), ("test", split.test)):
        for record in records:
            parts[record.patient].add(name)
    return sorted(patient for patient, names in parts.items() if len(names) > 1)


def _check_fraction(name: str, value: float, *, allow_zero: bool) -> None:
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value < 1):
        bound = "0 <=" if allow_zero else "0 <"
        raise ValueError(f"{name} must satisfy {bound} {name} < 1, got {value}.")


def _carve_by_patient(
    records: list[ImageRecord], fraction: float, seed: int
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Hold out ``fraction`` of each class's patients; returns ``(kept, held_out)``.

    Patients are class-qualified, so each one belongs to a single class and splitting class by
    class stratifies exactly.
    """
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        by_class[record.class_name].append(i)
    held_out: set[int] = set()
    for class_name in sorted(by_class):
        members = by_class[class_name]
        groups = [records[i].patient for i in members]
        n_patients = len(set(groups))
        if n_patients < 2:
            raise DatasetError(
                f"Class {class_name!r} has {n_patients} patient(s) here, too few to split by "
                "patient; add photos of more patients or use a smaller split fraction.",
                code="too_few_patients",
            )
        splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        try:
            _, held_idx = next(splitter.split(members, groups=groups))
        except ValueError as exc:
            raise DatasetError(
                f"Class {class_name!r} has too few patients ({n_patients}) for a "
                f"{fraction:.0%} hold-out; add patients or change the split fractions.",
                code="too_few_patients",
            ) from exc
        held_out.update(members[j] for j in held_idx)
    kept = [r for i, r in enumerate(records) if i not in held_out]
    held = [r for i, r in enumerate(records) if i in held_out]
    return kept, held
