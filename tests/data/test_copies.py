"""The copy finder: disguised copies of photos are found, different photos are not."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from copy_photos import RECIPES, make_copy, original_photos, write_copies
from PIL import Image
from typer.testing import CliRunner

from mpoxscan.cli import app
from mpoxscan.data.copies import (
    CopyConfig,
    CopyPair,
    apply_group_merges,
    find_copies,
    merge_copy_groups,
    scan_copies,
)
from mpoxscan.data.datasets import ImageRecord, scan_dataset
from mpoxscan.models.region_embedding import RegionEmbedder


def photo_records(folder: Path, class_name: str = "Photos") -> list[ImageRecord]:
    return [
        ImageRecord(path, class_name, 0, f"{class_name}/{path.stem.split('_')[0]}", None)
        for path in sorted(folder.glob("*.jpg"))
    ]


class CountingEmbedder:
    """The pretrained embedder, counting the photos it is asked to embed."""

    def __init__(self, inner: RegionEmbedder):
        self.inner = inner
        self.name = inner.name
        self.calls = 0

    def __call__(self, images):
        self.calls += len(images)
        return self.inner(images)


@pytest.fixture(scope="module")
def embedder() -> CountingEmbedder:
    return CountingEmbedder(RegionEmbedder())


@pytest.fixture(scope="module")
def copies(tmp_path_factory) -> tuple[Path, list[tuple[str, str]]]:
    root = tmp_path_factory.mktemp("copies")
    return root / "Photos", write_copies(root)


@pytest.fixture(scope="module")
def scanned(copies, embedder, tmp_path_factory):
    folder, _ = copies
    config = CopyConfig(cache_dir=tmp_path_factory.mktemp("embedding-cache"))
    return scan_copies(photo_records(folder), embed=embedder, config=config), config


def original_of(name: str) -> str:
    return name.split("_")[0].split("-")[0]


def test_finds_at_least_95_percent_of_disguised_copies(copies, scanned):
    _, made = copies
    scan, _ = scanned
    found = {frozenset((p.a.name, p.b.name)) for p in scan.pairs}
    missed = [pair for pair in made if frozenset(pair) not in found]
    assert len(made) == 64 and set(RECIPES) == {name.split("-", 1)[1][:-6] for _, name in made}
    assert len(missed) <= 0.05 * len(made), f"missed {missed}"
    stages = Counter(p.stage for p in scan.pairs)
    assert stages["geometric"] > 0 and stages["phash"] > 0  # both stages take part
    for pair in scan.pairs:
        if pair.stage == "geometric":
            assert pair.inliers >= CopyConfig().min_inliers and "matched points" in pair.describe()


def test_different_photos_are_not_reported(scanned):
    scan, _ = scanned
    names = [original_of(r.path.name) for r in scan.records]
    different = sum(a != b for i, a in enumerate(names) for b in names[i + 1 :])
    wrong = [p for p in scan.pairs if original_of(p.a.name) != original_of(p.b.name)]
    assert different >= 200
    assert len(wrong) <= 1, [(p.a.name, p.b.name, p.describe()) for p in wrong]


def test_embeddings_and_checks_are_cached_by_file_hash(
    copies, scanned, embedder, tmp_path, monkeypatch
):
    from mpoxscan.data import copies as copy_finder

    folder, _ = copies
    scan, config = scanned
    before = embedder.calls
    # the same photos under other names: nothing is embedded or checked again, and the same
    # pairs come back
    renamed = tmp_path / "Photos"
    shutil.copytree(folder, renamed)
    for path in sorted(renamed.glob("*.jpg")):
        path.rename(path.with_name("x" + path.name))

    def no_local_features(*args):
        raise AssertionError("local features taken again for a pair checked before")

    monkeypatch.setattr(copy_finder, "_local_features", no_local_features)
    again = find_copies(photo_records(renamed), embed=embedder, config=config)
    assert embedder.calls == before
    assert len(list(config.cache_dir.glob(f"{embedder.name}-*.npy"))) == len(scan.records)
    assert list(config.cache_dir.glob("copycheck-*.npy"))
    assert sorted(("x" + p.a.name, "x" + p.b.name) for p in scan.pairs) == sorted(
        (p.a.name, p.b.name) for p in again
    )


def test_without_an_embedder_only_identical_and_re_encoded_copies_are_found(tmp_path):
    photos = original_photos()
    folder = tmp_path / "Photos"
    folder.mkdir()
    for name in ("astronaut", "coffee", "rocket"):
        photos[name].save(folder / f"{name}_0.jpg", quality=92)
    shutil.copy(folder / "astronaut_0.jpg", folder / "astronaut-same_1.jpg")
    make_copy(photos["coffee"], "jpeg", seed=3).save(folder / "coffee-jpeg_1.jpg")
    make_copy(photos["rocket"], "crop+rotate+mirror", seed=4).save(folder / "rocket-crop_1.jpg")
    scan = scan_copies(photo_records(folder))
    assert [(p.a.name, p.b.name, p.stage) for p in scan.pairs] == [
        ("astronaut-same_1.jpg", "astronaut_0.jpg", "exact"),
        ("coffee-jpeg_1.jpg", "coffee_0.jpg", "phash"),
    ]
    assert scan.notes and "no embedder" in scan.notes[0]


def test_merge_copy_groups_joins_groups_across_classes_and_warns_on_label_conflicts(
    tmp_path, caplog
):
    def record(name: str, class_name: str, group: str, label: int) -> ImageRecord:
        return ImageRecord(tmp_path / name, class_name, label, f"{class_name}/{group}", None)

    records = [
        record("a.jpg", "Mpox", "P1", 1),
        record("b.jpg", "Mpox", "P7", 1),
        record("c.jpg", "Mpox", "P3", 1),
        record("d.jpg", "Mpox", "P3", 1),
        record("e.jpg", "Others", "N1", 0),
        record("f.jpg", "Acne", "A4", 0),
        record("g.jpg", "Eczema", "E2", 0),
        record("h.jpg", "Eczema", "E9", 0),
    ]
    pairs = [
        CopyPair(tmp_path / "b.jpg", tmp_path / "c.jpg", "geometric", 0.9, 40),
        CopyPair(tmp_path / "a.jpg", tmp_path / "b.jpg", "phash", 0.95, distance=3),
        CopyPair(tmp_path / "a.jpg", tmp_path / "e.jpg", "exact", 1.0),  # label conflict
        CopyPair(tmp_path / "f.jpg", tmp_path / "g.jpg", "geometric", 0.8, 30),  # two classes
    ]
    with caplog.at_level("WARNING", logger="mpoxscan.data.copies"):
        merged, merges = merge_copy_groups(records, pairs)
    assert [r.patient for r in merged] == [
        *("Mpox/P1", "Mpox/P1", "Mpox/P1", "Mpox/P1", "Mpox/P1"),
        *("Acne/A4", "Acne/A4", "Eczema/E9"),
    ]
    assert [(m.group, m.members) for m in merges] == [
        ("Acne/A4", ("Acne/A4", "Eczema/E2")),
        ("Mpox/P1", ("Mpox/P1", "Mpox/P3", "Mpox/P7", "Others/N1")),
    ]
    assert apply_group_merges(records, merges) == merged
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "a.jpg (Mpox) = e.jpg (Others)" in warnings[0]


def test_audit_command_finds_cropped_copies_across_sets_and_draws_them(tmp_path):
    photos = original_photos()
    data, other = tmp_path / "set", tmp_path / "other"
    for n, name in enumerate(("astronaut", "coffee", "chelsea", "camera")):
        folder = data / ("Monkey Pox" if n % 2 else "Others")
        folder.mkdir(parents=True, exist_ok=True)
        photos[name].save(folder / f"{name}_1.jpg", quality=90)
    # a cropped, rotated, mirrored copy under another patient id, and one in another set
    make_copy(photos["coffee"], "crop+rotate+mirror", seed=1).save(data / "Monkey Pox/x_1.jpg")
    (other / "mpox").mkdir(parents=True)
    (other / "healthy").mkdir()
    make_copy(photos["chelsea"], "everything", seed=2).save(other / "mpox/y.jpg")
    photos["rocket"].save(other / "healthy/z.jpg")

    sheet, report_file = tmp_path / "pairs.png", tmp_path / "audit.json"
    result = CliRunner().invoke(
        app,
        [
            *("audit", "--data", str(data), "--against", str(other)),
            *("--json", str(report_file), "--pairs-png", str(sheet)),
        ],
    )
    assert result.exit_code == 1, result.output  # a copy in the other set is a leak
    report = json.loads(report_file.read_text())
    within = report["near_duplicates"]
    assert [(p["a"], p["b"], p["stage"]) for p in within] == [
        ("Monkey Pox/coffee_1.jpg", "Monkey Pox/x_1.jpg", "geometric")
    ]
    assert within[0]["inliers"] >= 8 and within[0]["mirrored"] is True
    assert [(p["a"], p["b"]) for p in report["against_duplicates"]] == [
        ("Others/chelsea_1.jpg", "other/mpox/y.jpg")
    ]
    assert report["cross_split"] == []  # train/cv merge the copy's group with its original's
    with Image.open(sheet) as img:
        assert img.width > 300 and np.asarray(img.convert("L")).std() > 10


@pytest.mark.msld
def test_msld_copies_across_patient_ids(msld_dir, embedder):
    """MSLD's photo groups are patients, and the photos of one patient are mostly crops of one
    picture (they are copies, and are found as such). Across patient ids the finder reports
    the file MSLD ships twice and five pictures filed under two ids each (checked by eye on the
    contact sheet in benchmarks/audit.md); no other pair of different patients. (``35``/``36``,
    two different photos of two children, was reported at exactly 8 points by the two-size
    features used before; ``P2``/``a13`` was missed by them.)"""
    index = scan_dataset(msld_dir)
    pairs = find_copies(index.records, embed=embedder)
    patient = {r.path: r.patient for r in index.records}
    across = {
        frozenset((patient[p.a].split("/")[1], patient[p.b].split("/")[1]))
        for p in pairs
        if patient[p.a] != patient[p.b]
    }
    assert across == {
        frozenset(("34", "82")),  # Others/34_1.jpg is Others/82_1.jpg byte for byte
        frozenset(("29", "34")),
        frozenset(("4", "12")),
        frozenset(("P2", "a13")),
        frozenset(("P28", "a25")),
        frozenset(("a3", "j3")),
    }


def test_photos_of_one_patient_that_do_not_overlap_are_not_copies(tmp_path, embedder):
    """Two pictures of one patient (here: the left and right thirds of one photo, as MSLD's
    crops of one picture often are) share skin, light and camera, but no pixels."""
    folder = tmp_path / "Photos"
    folder.mkdir()
    for name in ("astronaut", "coffee", "hubble_deep_field", "retina", "rocket"):
        img = original_photos()[name]
        w, h = img.size
        img.crop((0, 0, w * 2 // 5, h)).save(folder / f"{name.replace('_', '')}_1.jpg")
        img.crop((w * 3 // 5, 0, w, h)).save(folder / f"{name.replace('_', '')}_2.jpg")
    assert find_copies(photo_records(folder), embed=embedder) == []
