"""Data audit: unreadable files, duplicate photos and patient leaks between splits.

Exact duplicates are found by the SHA-256 of the file bytes, near-duplicates (resized,
re-encoded, slightly cropped copies) by a DCT perceptual hash (pHash). A plain pHash is
shifted by a few bits by a 2-3 % crop, so each photo is hashed as a whole and as a few slightly
cropped versions (centred and from each corner); two photos are as close as their closest
crop-to-whole pair. On MSLD every 2.5-3 %-cropped, shrunk, JPEG-70 copy is within 6 bits (the
default threshold) of its original, while distinct photos are 12 or more bits apart.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.fft
from PIL import Image

from mpoxscan.data.datasets import DatasetIndex, ImageRecord, scan_dataset
from mpoxscan.data.images import decode_image, image_sha256
from mpoxscan.data.sources import is_manifest, load_sources
from mpoxscan.data.splits import Fold, Split, check_leaks, grouped_folds, split_dataset
from mpoxscan.errors import DatasetError, InvalidImageError

log = logging.getLogger(__name__)  # progress: one line per stage (the CLI shows it)

#: Side to which photos are shrunk before hashing; the hash only looks at 32 x 32 pixels.
_HASH_WORKING_SIDE = 256
#: Centred crops hashed besides the whole photo, as fractions cut from every side.
_CENTRE_CROPS = (0.015, 0.03, 0.045)
#: Corner crops: this fraction cut from two adjacent sides.
_CORNER_CROP = 0.04


@dataclass(frozen=True)
class UnreadableFile:
    """A file that could not be read or decoded, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class DuplicatePair:
    """Two files showing the same photo.

    Attributes:
        a: one file.
        b: the other.
        distance: Hamming distance of their perceptual hashes (0-64; 0 for exact copies).
        exact: the two files have identical bytes.
        where: what the pair straddles, e.g. ``"train/test"`` or ``"cv test folds 1 and 4"``.
    """

    a: Path
    b: Path
    distance: int
    exact: bool
    where: str = ""


@dataclass
class AuditReport:
    """What ``audit_dataset`` found. ``has_leaks`` says whether train and test may share photos.

    Attributes:
        root: the audited dataset.
        layout: ``"presplit"`` or ``"unsplit"``.
        class_names: class folders found.
        n_images: image files found.
        near_threshold: largest hash distance counted as a near-duplicate.
        unreadable: files that could not be decoded (training skips them).
        exact_duplicates: groups of byte-identical files.
        near_duplicates: pairs of different files within ``near_threshold``.
        cross_split: exact or near duplicates in different parts (pre-split folders; or, for
            an unsplit set, different patient-grouped CV test folds or ``split_dataset`` parts).
        patient_leaks: patients with photos in more than one part.
        cross_class: the same photo (exact or near) under two classes.
        photos_per_class: images per class folder.
        patients_per_class: distinct patients per class folder.
        photos_per_patient: images per class-qualified patient id.
        against: the other dataset compared with, if any.
        against_duplicates: photos of this set (``a``) also found in ``against`` (``b``).
        notes: anything the audit could not check, and why.
    """

    root: Path
    layout: str
    class_names: list[str]
    n_images: int
    near_threshold: int
    unreadable: list[UnreadableFile] = field(default_factory=list)
    exact_duplicates: list[list[Path]] = field(default_factory=list)
    near_duplicates: list[DuplicatePair] = field(default_factory=list)
    cross_split: list[DuplicatePair] = field(default_factory=list)
    patient_leaks: list[str] = field(default_factory=list)
    cross_class: list[DuplicatePair] = field(default_factory=list)
    photos_per_class: dict[str, int] = field(default_factory=dict)
    patients_per_class: dict[str, int] = field(default_factory=dict)
    photos_per_patient: dict[str, int] = field(default_factory=dict)
    against: Path | None = None
    against_duplicates: list[DuplicatePair] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def has_leaks(self) -> bool:
        """Whether a photo or patient is on both sides of a split, under two classes, or also in
        the ``against`` set."""
        return bool(
            self.cross_split or self.patient_leaks or self.cross_class or self.against_duplicates
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view; paths are relative to their dataset folder.

        Returns:
            The report as plain dicts, lists, strings and numbers.
        """

        def rel(path: Path) -> str:
            for base in (self.root, self.against):
                if base is not None and path.is_relative_to(base):
                    return path.relative_to(base).as_posix()
            return str(path)

        def pairs(items: list[DuplicatePair]) -> list[dict[str, Any]]:
            return [
                {"a": rel(p.a), "b": rel(p.b), "distance": p.distance, "exact": p.exact}
                | ({"where": p.where} if p.where else {})
                for p in items
            ]

        return {
            "root": str(self.root),
            "layout": self.layout,
            "class_names": list(self.class_names),
            "n_images": self.n_images,
            "near_threshold": self.near_threshold,
            "has_leaks": self.has_leaks,
            "unreadable": [{"path": rel(u.path), "reason": u.reason} for u in self.unreadable],
            "exact_duplicates": [[rel(p) for p in group] for group in self.exact_duplicates],
            "near_duplicates": pairs(self.near_duplicates),
            "cross_split": pairs(self.cross_split),
            "patient_leaks": list(self.patient_leaks),
            "cross_class": pairs(self.cross_class),
            "photos_per_class": dict(self.photos_per_class),
            "patients_per_class": dict(self.patients_per_class),
            "photos_per_patient": dict(self.photos_per_patient),
            "against": str(self.against) if self.against else None,
            "against_duplicates": pairs(self.against_duplicates),
            "notes": list(self.notes),
        }


@dataclass
class _Hashed:
    """Hashes of the readable records of a set, row ``i`` for ``records[i]``."""

    records: list[ImageRecord]
    sha256: list[str]
    phashes: np.ndarray  # (n, crops) uint64
    unreadable: list[UnreadableFile]


def audit_dataset(
    root: str | Path | Sequence[str | Path],
    *,
    against: str | Path | None = None,
    near_threshold: int = 6,
    positive: str | None = None,
    patient_pattern: str | None = None,
    seed: int = 0,
    folds: int = 5,
) -> AuditReport:
    """Audit a dataset folder for unreadable files, duplicates and leaks between splits.

    Args:
        root: the dataset folder (pre-split or unsplit, as ``scan_dataset`` reads it), or data
            manifests and source folders (several sources; classes are then named
            ``<source>/<class>``).
        against: another dataset folder (e.g. an external test set) to look for shared photos.
        near_threshold: largest perceptual-hash distance (of 64 bits) counted as the same photo.
        positive: the positive class, as for ``scan_dataset`` (only used to name classes).
        patient_pattern: patient-id regex, as for ``scan_dataset``.
        seed: seed of the ``split_dataset`` split and ``grouped_folds`` folds checked for an
            unsplit set (use the seed you train with).
        folds: number of CV folds checked for an unsplit set.

    Returns:
        The ``AuditReport``.
    """
    index = _audit_index(root, positive, patient_pattern)
    log.info("hashing %d photos in %s", len(index.records), index.root)
    hashed = _hash_records(index.records)
    pairs = _near_pairs(hashed.phashes, None, near_threshold)
    report = AuditReport(
        root=index.root,
        layout=index.layout,
        class_names=list(index.class_names),
        n_images=len(index.records),
        near_threshold=near_threshold,
        unreadable=hashed.unreadable,
        exact_duplicates=_exact_groups(hashed),
        photos_per_class=dict(Counter(r.class_name for r in index.records)),
        patients_per_class=_patients_per_class(index.records),
        photos_per_patient=dict(sorted(Counter(r.patient for r in index.records).items())),
    )
    report.near_duplicates = [
        _pair(hashed, i, j, d) for i, j, d in pairs if hashed.sha256[i] != hashed.sha256[j]
    ]
    report.cross_class = [
        _pair(hashed, i, j, d, f"{hashed.records[i].class_name} / {hashed.records[j].class_name}")
        for i, j, d in pairs
        if hashed.records[i].class_name != hashed.records[j].class_name
    ]
    log.info("checking the splits and folds for patients and photos in two parts")
    partitions = _partitions(index, seed=seed, folds=folds, notes=report.notes)
    for label, part_of in partitions:
        report.patient_leaks += _patient_leaks(index.records, part_of, label)
        report.cross_split += _straddling(hashed, pairs, part_of, label)
    if against is not None:
        other = scan_dataset(against, multiclass=True)
        log.info("hashing %d photos in %s to compare", len(other.records), other.root)
        other_hashed = _hash_records(other.records)
        report.against = other.root
        report.against_duplicates = [
            DuplicatePair(
                hashed.records[i].path,
                other_hashed.records[j].path,
                d,
                hashed.sha256[i] == other_hashed.sha256[j],
                "against",
            )
            for i, j, d in _near_pairs(hashed.phashes, other_hashed.phashes, near_threshold)
        ]
    return report


def _audit_index(
    root: str | Path | Sequence[str | Path], positive: str | None, patient_pattern: str | None
) -> DatasetIndex:
    """One folder as ``scan_dataset`` reads it (every class its own); several sources with
    their class folders qualified by source, so that each is counted and checked apart."""
    paths = [root] if isinstance(root, (str, Path)) else list(root)
    if len(paths) == 1 and not is_manifest(paths[0]):
        return scan_dataset(
            paths[0], positive=positive, multiclass=True, patient_pattern=patient_pattern
        )
    index = load_sources(paths, positive=positive, patient_pattern=patient_pattern)
    records = [replace(r, class_name=f"{r.source}/{r.class_name}") for r in index.records]
    return replace(index, records=records, class_names=sorted({r.class_name for r in records}))


def find_split_leaks(split: Split | Fold, near_threshold: int = 6) -> list[str]:
    """Describe every patient and every (near-)duplicate photo found in two parts of a split.

    ``train`` and ``cv`` call this to warn before training. Unreadable files are skipped here
    (the loader names them).

    Args:
        split: a ``Split`` or ``Fold``.
        near_threshold: largest perceptual-hash distance counted as the same photo.

    Returns:
        One plain sentence per leak; empty when the parts share no patient and no photo.
    """
    messages = [
        f"Patient {patient} has photos in more than one of train/val/test."
        for patient in check_leaks(split)
    ]
    parts = {"train": split.train, "val": split.val, "test": split.test}
    records = [r for part in parts.values() for r in part]
    part_of = {id(r): name for name, part in parts.items() for r in part}
    hashed = _hash_records(records)
    for i, j, d in _near_pairs(hashed.phashes, None, near_threshold):
        a, b = hashed.records[i], hashed.records[j]
        part_a, part_b = part_of[id(a)], part_of[id(b)]
        if part_a == part_b:
            continue
        kind = (
            "The same file"
            if hashed.sha256[i] == hashed.sha256[j]
            else f"A near-duplicate photo (hash distance {d})"
        )
        messages.append(f"{kind} is in {part_a} ({a.path}) and {part_b} ({b.path}).")
    return messages


def merge_duplicate_patients(
    records: Sequence[ImageRecord], near_threshold: int = 6
) -> list[ImageRecord]:
    """Give photos that are (near-)duplicates of each other, within a class, one patient id.

    Splitting by the merged ids keeps copies of a photo filed under two patient ids (MSLD has
    one such pair) on the same side. Each merged group takes its smallest patient id; duplicates
    under two classes are left alone (they are label conflicts; ``audit_dataset`` reports them).

    Args:
        records: the photos.
        near_threshold: largest perceptual-hash distance counted as the same photo.

    Returns:
        The records, in order, with ``patient`` rewritten where merged.
    """
    hashed = _hash_records(list(records))
    parent: dict[str, str] = {}

    def find(patient: str) -> str:
        while parent.get(patient, patient) != patient:
            patient = parent[patient]
        return patient

    for i, j, _ in _near_pairs(hashed.phashes, None, near_threshold):
        a, b = hashed.records[i], hashed.records[j]
        if a.class_name == b.class_name:
            root_a, root_b = find(a.patient), find(b.patient)
            if root_a != root_b:
                low, high = sorted((root_a, root_b))
                parent[high] = low
    return [replace(r, patient=find(r.patient)) if r.patient in parent else r for r in records]


def perceptual_hash(img: Image.Image) -> int:
    """Return the 64-bit DCT perceptual hash (pHash) of an image.

    The image is shrunk to 32 x 32 gray pixels (area average); the hash has one bit per
    coefficient of the 8 x 8 lowest-frequency DCT block, set when it is above their median.

    Args:
        img: any Pillow image.

    Returns:
        The hash as an unsigned 64-bit integer.
    """
    gray = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.BOX), np.float64)
    low = scipy.fft.dctn(gray, type=2)[:8, :8]
    bits = (low > np.median(low)).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def _crop_hashes(img: Image.Image) -> list[int]:
    """Hashes of the whole photo (first) and of its slightly cropped versions."""
    gray = img.convert("L")
    if max(gray.size) > _HASH_WORKING_SIDE:
        gray.thumbnail((_HASH_WORKING_SIDE, _HASH_WORKING_SIDE), Image.Resampling.BILINEAR)
    w, h = gray.size
    boxes = [(0, 0, w, h)]
    for cut in _CENTRE_CROPS:
        dx, dy = round(w * cut), round(h * cut)
        boxes.append((dx, dy, w - dx, h - dy))
    dx, dy = round(w * _CORNER_CROP), round(h * _CORNER_CROP)
    boxes += [(dx, dy, w, h), (0, 0, w - dx, h - dy), (dx, 0, w, h - dy), (0, dy, w - dx, h)]
    return [perceptual_hash(gray.crop(box)) for box in boxes]


def _hash_records(records: list[ImageRecord]) -> _Hashed:
    kept, shas, hashes, unreadable = [], [], [], []
    for record in records:
        try:
            data = record.path.read_bytes()
            img = decode_image(data)
        except (InvalidImageError, OSError) as exc:
            unreadable.append(UnreadableFile(record.path, str(exc)))
            continue
        kept.append(record)
        shas.append(image_sha256(data))
        hashes.append(_crop_hashes(img))
    n_crops = 2 + len(_CENTRE_CROPS) + 3
    phashes = np.array(hashes, dtype=np.uint64).reshape(len(kept), n_crops)
    return _Hashed(records=kept, sha256=shas, phashes=phashes, unreadable=unreadable)


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x).astype(np.int64)
    bits = np.unpackbits(x.astype(np.uint64)[..., None].view(np.uint8), axis=-1)
    return bits.sum(axis=-1).astype(np.int64)


def _near_pairs(a: np.ndarray, b: np.ndarray | None, threshold: int) -> list[tuple[int, int, int]]:
    """``(i, j, distance)`` of photo pairs within ``threshold``.

    With ``b`` ``None`` the pairs are within ``a`` (``i < j``); otherwise ``i`` indexes ``a`` and
    ``j`` indexes ``b``. The distance of two photos is the smallest distance between the whole of
    one and any crop of the other.
    """
    other = a if b is None else b
    found = []
    for i in range(len(a)):
        # crops of photo i vs the whole of each other photo, and the whole of i vs their crops
        to_whole = _popcount(a[i][:, None] ^ other[None, :, 0]).min(axis=0)
        to_crops = _popcount(a[i][0] ^ other).min(axis=1)
        dist = np.minimum(to_whole, to_crops)
        start = i + 1 if b is None else 0
        for j in np.flatnonzero(dist[start:] <= threshold) + start:
            found.append((i, int(j), int(dist[j])))
    return found


def _pair(hashed: _Hashed, i: int, j: int, distance: int, where: str = "") -> DuplicatePair:
    exact = hashed.sha256[i] == hashed.sha256[j]
    a, b = hashed.records[i].path, hashed.records[j].path
    return DuplicatePair(a, b, 0 if exact else distance, exact, where)


def _exact_groups(hashed: _Hashed) -> list[list[Path]]:
    by_sha: dict[str, list[Path]] = defaultdict(list)
    for record, sha in zip(hashed.records, hashed.sha256, strict=True):
        by_sha[sha].append(record.path)
    return [paths for paths in by_sha.values() if len(paths) > 1]


def _patients_per_class(records: list[ImageRecord]) -> dict[str, int]:
    patients: dict[str, set[str]] = defaultdict(set)
    for record in records:
        patients[record.class_name].add(record.patient)
    return {name: len(ids) for name, ids in sorted(patients.items())}


def merge_duplicates(index: DatasetIndex, near_threshold: int = 6) -> DatasetIndex:
    """The index with duplicate photos filed under two patient ids merged into one patient.

    ``train`` and ``cv`` split the merged index, so that such copies never straddle a split.
    A pre-split layout is returned as it is: its folders are the user's split.
    """
    if index.layout == "presplit":
        return index
    return replace(index, records=merge_duplicate_patients(index.records, near_threshold))


def _partitions(
    index: DatasetIndex, *, seed: int, folds: int, notes: list[str]
) -> list[tuple[str, dict[Path, str]]]:
    """The partitions whose parts must not share photos, as ``(label, path -> part name)``.

    A pre-split set has its folders; an unsplit one the ``split_dataset`` split and the
    patient-grouped CV test folds that ``train`` and ``cv`` use (duplicates merged first).
    """
    if index.layout == "presplit":
        return [("folders", {r.path: str(r.split) for r in index.records})]
    index = merge_duplicates(index)
    found: list[tuple[str, dict[Path, str]]] = []
    try:
        split = split_dataset(index, seed=seed)
        parts = {"train": split.train, "val": split.val, "test": split.test}
        found.append(("split", {r.path: name for name, part in parts.items() for r in part}))
    except DatasetError as exc:
        notes.append(f"Split not checked: {exc}")
    try:
        cv = grouped_folds(index.records, n_folds=folds, val_fraction=0.0, seed=seed)
        found.append(("cv", {r.path: f"test fold {f.index + 1}" for f in cv for r in f.test}))
    except DatasetError as exc:
        notes.append(f"Cross-validation folds not checked: {exc}")
    return found


def _patient_leaks(records: list[ImageRecord], part_of: dict[Path, str], label: str) -> list[str]:
    parts: dict[str, set[str]] = defaultdict(set)
    for record in records:
        if record.path in part_of:
            parts[record.patient].add(part_of[record.path])
    return [
        f"{patient} ({label}: {', '.join(sorted(names))})"
        for patient, names in sorted(parts.items())
        if len(names) > 1
    ]


def _straddling(
    hashed: _Hashed, pairs: list[tuple[int, int, int]], part_of: dict[Path, str], label: str
) -> list[DuplicatePair]:
    """The pairs whose two photos fall in different parts of a partition."""
    found = []
    for i, j, d in pairs:
        part_a = part_of.get(hashed.records[i].path)
        part_b = part_of.get(hashed.records[j].path)
        if part_a and part_b and part_a != part_b:
            found.append(_pair(hashed, i, j, d, f"{label}: {part_a} / {part_b}"))
    return found
