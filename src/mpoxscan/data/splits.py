"""Patient-grouped, class-stratified splits and cross-validation folds.

All photos of one patient always land in the same part: the MSLD paper's protocol is
patient-independent, and splitting a patient's photos across train and test inflates scores.
"""

from __future__ import annotations

from collections import Counter, defaultdict
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
    """One cross-validation fold: ``index`` within repeat ``repeat`` (both from 0).

    ``left_out`` names the source a leave-one-source-out fold keeps out of training.
    """

    index: int
    repeat: int
    train: list[ImageRecord]
    val: list[ImageRecord]
    test: list[ImageRecord]
    left_out: str | None = None


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

    Strata are classes, or source and class when the records come from several sources (see
    :func:`group_strata`).

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
    by_group = group_strata(records, min_groups=n_folds)
    strata = np.array([by_group[r.patient] for r in records])
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


def leave_source_out_folds(
    records: list[ImageRecord],
    *,
    repeats: int = 1,
    val_fraction: float = 0.15,
    seed: int = 0,
) -> list[Fold]:
    """Leave-one-source-out folds: each trains on all sources but one and tests the one left out.

    Every source without an mpox photo is left out once. The sources with mpox photos (MSLD)
    are never left out whole: their photo groups are split into as many stratified, grouped
    parts as there are folds, and fold ``i`` also tests part ``i``, so mpox sensitivity is
    always measured on unseen patients and every photo is tested once per repeat. Photo groups
    are whole: a group that reaches into a fold's test photos (a copy merged across sources)
    is tested with them, never trained on.

    Args:
        records: the photos of several sources (``ImageRecord.source`` set).
        repeats: how many times to repeat with reshuffled parts (seed ``seed + r``).
        val_fraction: share of each fold's training groups (per stratum) held out for
            validation.
        seed: the same seed gives the same folds.

    Returns:
        One fold per non-mpox source per repeat, ``left_out`` naming the source.

    Raises:
        DatasetError: fewer than two sources without mpox, or no source with mpox
            (``too_few_sources``).
    """
    _check_fraction("val_fraction", val_fraction, allow_zero=True)
    sources = list(dict.fromkeys(r.source for r in records))
    with_mpox = {r.source for r in records if r.label == 1}
    left_outs = [s for s in sources if s not in with_mpox]
    if len(left_outs) < 2 or not with_mpox:
        raise DatasetError(
            f"Leave-one-source-out needs a source with mpox photos and at least two without "
            f"(found {len(with_mpox)} with and {len(left_outs)} without: "
            f"{', '.join(map(str, sources))}); add sources or use plain cross-validation.",
            code="too_few_sources",
        )
    mpox_records = [r for r in records if r.source in with_mpox]
    folds = []
    for repeat in range(repeats):
        parts = grouped_folds(
            mpox_records, n_folds=len(left_outs), val_fraction=0.0, seed=seed + repeat
        )
        for k, (source, part) in enumerate(zip(left_outs, parts, strict=True)):
            tested = {r.patient for r in part.test} | {
                r.patient for r in records if r.source == source
            }
            pool = [r for r in records if r.patient not in tested]
            test = [r for r in records if r.patient in tested]
            train, val = (
                _carve_by_patient(pool, val_fraction, seed + repeat)
                if val_fraction > 0
                else (pool, [])
            )
            folds.append(Fold(k, repeat, train, val, test, left_out=source))
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


def stratum_of(record: ImageRecord, several_sources: bool) -> str:
    """The stratum a photo is balanced by: its class, qualified by its source when a run reads
    several sources (``"<source>/<class>"``)."""
    if several_sources and record.source is not None:
        return f"{record.source}/{record.class_name}"
    return record.class_name


def group_strata(records: list[ImageRecord], min_groups: int) -> dict[str, str]:
    """The stratum of each photo group: the source and class of its first photo.

    With several sources, a stratum with fewer than ``min_groups`` groups (a rare class of one
    source) is pooled into ``"<source>/*"``, so that every stratum can be spread over the parts;
    with one source every class is its own stratum (and too few patients is an error later).

    Args:
        records: the photos.
        min_groups: the fewest groups a stratum needs (the number of parts to spread it over).

    Returns:
        ``{group id: stratum}``.
    """
    several = len({r.source for r in records}) > 1
    stratum: dict[str, str] = {}
    for record in records:
        stratum.setdefault(record.patient, stratum_of(record, several))
    if not several:
        return stratum
    sizes = Counter(stratum.values())
    source_of = {r.patient: r.source for r in records}
    return {
        group: name if sizes[name] >= min_groups else f"{source_of[group]}/*"
        for group, name in stratum.items()
    }


def _carve_by_patient(
    records: list[ImageRecord], fraction: float, seed: int
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """Hold out ``fraction`` of each stratum's patients; returns ``(kept, held_out)``.

    Strata are classes (with several sources: source and class, see :func:`group_strata`);
    whole photo groups are held out, so a group merged across classes stays on one side. With
    several sources a stratum of a single group stays in training.
    """
    strata = group_strata(records, min_groups=2)
    several = len({r.source for r in records}) > 1
    members: dict[str, list[str]] = defaultdict(list)
    for group, name in strata.items():
        members[name].append(group)
    held_groups: set[str] = set()
    for name in sorted(members):
        groups = members[name]
        if len(groups) < 2:
            if several:
                continue
            raise DatasetError(
                f"Class {name!r} has {len(groups)} patient(s) here, too few to split by "
                "patient; add photos of more patients or use a smaller split fraction.",
                code="too_few_patients",
            )
        splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        try:
            _, held_idx = next(splitter.split(groups, groups=groups))
        except ValueError as exc:
            raise DatasetError(
                f"Class {name!r} has too few patients ({len(groups)}) for a "
                f"{fraction:.0%} hold-out; add patients or change the split fractions.",
                code="too_few_patients",
            ) from exc
        held_groups.update(groups[j] for j in held_idx)
    kept = [r for r in records if r.patient not in held_groups]
    held = [r for r in records if r.patient in held_groups]
    return kept, held
