"""Splits and folds across several sources: stratified by source and class, grouped, and
leave-one-source-out folds that never train on the source they test."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mpoxscan.data.datasets import DatasetIndex, ImageRecord
from mpoxscan.data.splits import (
    check_leaks,
    grouped_folds,
    leave_source_out_folds,
    split_dataset,
)
from mpoxscan.errors import DatasetError

#: (source, class, label, groups): an MSLD-like source, two negative sources, one rare class.
LAYOUT = (
    ("web", "Monkey Pox", 1, 30),
    ("web", "Others", 0, 36),
    ("abdomen", "Healthy", 0, 60),
    ("clinic", "Scabies", 0, 40),
    ("clinic", "Healthy", 0, 20),
    ("clinic", "Ecthyma", 0, 3),
    ("bites", "Ants", 0, 50),
)


def records(seed: int = 0) -> list[ImageRecord]:
    """Records (no files) with 1-3 photos per group; group ids qualified by source."""
    rng = np.random.default_rng(seed)
    found = []
    for source, class_name, label, n_groups in LAYOUT:
        for g in range(n_groups):
            for photo in range(int(rng.integers(1, 4))):
                path = Path("/data") / source / class_name / f"G{g}_{photo}.jpg"
                group = f"{source}/{class_name}/G{g}"
                found.append(ImageRecord(path, class_name, label, group, None, source))
    return found


def stratum_shares(part: list[ImageRecord]) -> Counter:
    counts = Counter((r.source, r.class_name) for r in part)
    return Counter({key: n / len(part) for key, n in counts.items()})


def groups(part: list[ImageRecord]) -> set[str]:
    return {r.patient for r in part}


def test_split_keeps_every_source_and_class_share_and_never_splits_a_group():
    found = records()
    index = DatasetIndex(
        Path("/data"), "unsplit", [], ["Other", "Monkey Pox"], "Monkey Pox", False, found
    )
    split = split_dataset(index, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert check_leaks(split) == []
    assert sorted(r.path for r in split.train + split.val + split.test) == sorted(
        r.path for r in found
    )
    whole = stratum_shares(found)
    for part in (split.train, split.test):
        shares = stratum_shares(part)
        for key in [k for k in whole if k != ("clinic", "Ecthyma")]:
            assert shares[key] == pytest.approx(whole[key], abs=0.05), key
    # the same class name in two sources is balanced per source
    test_healthy = Counter(r.source for r in split.test if r.class_name == "Healthy")
    assert test_healthy["abdomen"] > 0 and test_healthy["clinic"] > 0


def test_folds_are_stratified_by_source_and_class_and_grouped():
    found = records()
    folds = grouped_folds(found, n_folds=5, val_fraction=0.15, seed=1)
    tested = Counter(r.path for fold in folds for r in fold.test)
    assert set(tested.values()) == {1} and len(tested) == len(found)
    for fold in folds:
        assert check_leaks(fold) == []
        per_source = Counter(r.source for r in fold.test)
        for source in ("web", "abdomen", "clinic", "bites"):
            whole = sum(r.source == source for r in found) / len(found)
            assert per_source[source] / len(fold.test) == pytest.approx(whole, abs=0.06)
        web_mpox = [r for r in fold.test if r.class_name == "Monkey Pox"]
        assert 4 <= len(groups(web_mpox)) <= 8  # 30 patients over 5 folds


def test_a_group_merged_across_classes_stays_on_one_side():
    found = records()
    # a copy of a bite photo filed under another source's class joins the bite's group
    copy = replace(found[-1], path=Path("/data/clinic/Scabies/copy.jpg"), class_name="Scabies")
    copy = replace(copy, source="clinic")
    found.append(copy)
    for fold in grouped_folds(found, n_folds=4, seed=2):
        assert check_leaks(fold) == []
    for fold in leave_source_out_folds(found, seed=2):
        assert check_leaks(fold) == []
        assert copy.patient not in groups(fold.train + fold.val) or fold.left_out != "bites"


def test_leave_source_out_never_trains_on_the_source_it_tests():
    found = records()
    folds = leave_source_out_folds(found, val_fraction=0.15, seed=0)
    assert [f.left_out for f in folds] == ["abdomen", "clinic", "bites"]
    web_tested = Counter()
    for fold in folds:
        trained = fold.train + fold.val
        assert all(r.source != fold.left_out for r in trained)
        assert {r.path for r in found if r.source == fold.left_out} <= {r.path for r in fold.test}
        assert check_leaks(fold) == []
        # the mpox source is split by patient: some of it is tested, none of those trained on
        web = [r for r in fold.test if r.source == "web"]
        assert web and not groups(web) & groups(trained)
        assert {"Monkey Pox", "Others"} <= {r.class_name for r in web}
        # the other left-out candidates are in training in this fold
        assert {r.source for r in trained} == {"web", "abdomen", "clinic", "bites"} - {
            fold.left_out
        }
        web_tested.update(r.path for r in web)
    # every MSLD-like photo is tested exactly once
    assert len(web_tested) == sum(r.source == "web" for r in found)
    assert set(web_tested.values()) == {1}


def test_leave_source_out_needs_two_sources_without_mpox():
    found = [r for r in records() if r.source in {"web", "abdomen"}]
    with pytest.raises(DatasetError) as caught:
        leave_source_out_folds(found)
    assert caught.value.code == "too_few_sources"
