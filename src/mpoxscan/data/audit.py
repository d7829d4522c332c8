"""Data audit: unreadable files, copies of one photo and patient leaks between splits.

Copies are found by ``mpoxscan.data.copies``: identical bytes, perceptual hashes, and (with an
embedder from the caller) a crop-robust search by pretrained features confirmed by matched local
features. The audit reports them within each set, across its splits and patient-grouped CV
folds, between the sets audited together and against other sets.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mpoxscan.data.copies import (
    CopyConfig,
    CopyPair,
    Embedder,
    UnreadableFile,
    merge_copy_groups,
    perceptual_hash,
    scan_copies,
)
from mpoxscan.data.datasets import DatasetIndex, ImageRecord, scan_dataset
from mpoxscan.data.sources import is_manifest, load_sources
from mpoxscan.data.splits import Fold, Split, check_leaks, grouped_folds, split_dataset
from mpoxscan.errors import DatasetError

log = logging.getLogger(__name__)  # progress: one line per stage (the CLI shows it)

__all__ = [
    "AuditReport",
    "DuplicatePair",
    "UnreadableFile",
    "audit_dataset",
    "find_split_leaks",
    "merge_duplicate_patients",
    "merge_duplicates",
    "perceptual_hash",
]

#: A pair of files showing one photo, as the audit reports it (``where`` filled in).
DuplicatePair = CopyPair


@dataclass
class AuditReport:
    """What ``audit_dataset`` found. ``has_leaks`` says whether train and test may share photos.

    Attributes:
        root: the (first) audited dataset.
        layout: its ``"presplit"`` or ``"unsplit"`` layout.
        class_names: class folders found (in every audited set).
        n_images: image files found (in every audited set).
        near_threshold: largest perceptual-hash distance counted as a copy.
        unreadable: files that could not be decoded (training skips them).
        exact_duplicates: groups of byte-identical files.
        near_duplicates: pairs of different files showing one photo among the audited sources.
        cross_split: copies in different parts of one set (pre-split folders; or, for an
            unsplit set, different patient-grouped CV test folds or ``split_dataset`` parts,
            after the copies' photo groups were merged as ``train`` and ``cv`` merge them).
        patient_leaks: patients with photos in more than one part.
        cross_class: the same photo under two classes of one set.
        photos_per_class: images per class folder.
        patients_per_class: distinct patients per class folder.
        photos_per_patient: images per class-qualified patient id.
        sources: every audited set (``root`` first).
        cross_source: those of them between two of the audited sources.
        against: the other datasets compared with.
        against_duplicates: photos of the audited sets (``a``) also found in ``against`` (``b``).
        copy_config: the copy finder's thresholds.
        notes: anything the audit could not check, and why.
    """

    root: Path
    layout: str
    class_names: list[str]
    n_images: int
    near_threshold: int
    unreadable: list[UnreadableFile] = field(default_factory=list)
    exact_duplicates: list[list[Path]] = field(default_factory=list)
    near_duplicates: list[CopyPair] = field(default_factory=list)
    cross_split: list[CopyPair] = field(default_factory=list)
    patient_leaks: list[str] = field(default_factory=list)
    cross_class: list[CopyPair] = field(default_factory=list)
    photos_per_class: dict[str, int] = field(default_factory=dict)
    patients_per_class: dict[str, int] = field(default_factory=dict)
    photos_per_patient: dict[str, int] = field(default_factory=dict)
    sources: list[Path] = field(default_factory=list)
    cross_source: list[CopyPair] = field(default_factory=list)
    against: list[Path] = field(default_factory=list)
    against_duplicates: list[CopyPair] = field(default_factory=list)
    copy_config: CopyConfig = field(default_factory=CopyConfig)
    notes: list[str] = field(default_factory=list)

    @property
    def has_leaks(self) -> bool:
        """Whether a photo or patient is on both sides of a split, under two classes, in two
        audited sets, or also in an ``against`` set."""
        return bool(
            self.cross_split
            or self.patient_leaks
            or self.cross_class
            or self.cross_source
            or self.against_duplicates
        )

    @property
    def all_pairs(self) -> list[CopyPair]:
        """Every copy pair found, once each (within sets, across sets, against other sets)."""
        exact = [
            CopyPair(group[0], other, "exact", 1.0, distance=0)
            for group in self.exact_duplicates
            for other in group[1:]
        ]
        return exact + self.near_duplicates + self.against_duplicates

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable view; paths are relative to their dataset folder.

        Returns:
            The report as plain dicts, lists, strings and numbers.
        """
        bases = [*self.sources, *self.against] or [self.root]

        def rel(path: Path) -> str:
            for base in bases:
                if path.is_relative_to(base):
                    prefix = "" if base == self.root else f"{base.name}/"
                    return prefix + path.relative_to(base).as_posix()
            return str(path)

        def pairs(items: list[CopyPair]) -> list[dict[str, Any]]:
            return [pair_dict(p, rel) for p in items]

        return {
            "root": str(self.root),
            "sources": [str(p) for p in self.sources],
            "layout": self.layout,
            "class_names": list(self.class_names),
            "n_images": self.n_images,
            "near_threshold": self.near_threshold,
            "copy_config": {
                k: str(v) if isinstance(v, Path) else v for k, v in vars(self.copy_config).items()
            },
            "has_leaks": self.has_leaks,
            "unreadable": [{"path": rel(u.path), "reason": u.reason} for u in self.unreadable],
            "exact_duplicates": [[rel(p) for p in group] for group in self.exact_duplicates],
            "near_duplicates": pairs(self.near_duplicates),
            "cross_split": pairs(self.cross_split),
            "patient_leaks": list(self.patient_leaks),
            "cross_class": pairs(self.cross_class),
            "cross_source": pairs(self.cross_source),
            "photos_per_class": dict(self.photos_per_class),
            "patients_per_class": dict(self.patients_per_class),
            "photos_per_patient": dict(self.photos_per_patient),
            "against": [str(p) for p in self.against],
            "against_duplicates": pairs(self.against_duplicates),
            "notes": list(self.notes),
        }


def pair_dict(pair: CopyPair, rel: Any = str) -> dict[str, Any]:
    """A copy pair as JSON: both files, the stage that found it, its score and matched points.

    Args:
        pair: the pair.
        rel: turns a path into the string shown (e.g. relative to its dataset).
    """
    return {
        "a": rel(pair.a),
        "b": rel(pair.b),
        "stage": pair.stage,
        "score": pair.score,
        "inliers": pair.inliers,
        "distance": pair.distance,
        "exact": pair.exact,
        "mirrored": pair.mirrored,
        "how": pair.describe(),
    } | ({"where": pair.where} if pair.where else {})


def audit_dataset(
    root: str | Path | Sequence[str | Path],
    *,
    against: str | Path | Sequence[str | Path] | None = None,
    near_threshold: int = 6,
    positive: str | None = None,
    patient_pattern: str | None = None,
    seed: int = 0,
    folds: int = 5,
    embed: Embedder | None = None,
    copy_config: CopyConfig | None = None,
) -> AuditReport:
    """Audit one or more dataset folders for unreadable files, copies and leaks between splits.

    Args:
        root: the dataset folder (pre-split or unsplit, as ``scan_dataset`` reads it), or
            several audited together (copies between them are reported as ``cross_source``).
        against: other dataset folders (e.g. an external test set) to look for shared photos.
        near_threshold: largest perceptual-hash distance (of 64 bits) counted as the same photo
            (overrides ``copy_config.phash_threshold``).
        positive: the positive class, as for ``scan_dataset`` (only used to name classes).
        patient_pattern: patient-id regex, as for ``scan_dataset``.
        seed: seed of the ``split_dataset`` split and ``grouped_folds`` folds checked for an
            unsplit set (use the seed you train with).
        folds: number of CV folds checked for an unsplit set.
        embed: features for the crop-robust copy search (e.g.
            ``mpoxscan.models.region_embedding.RegionEmbedder()``); ``None`` finds identical
            files and perceptual-hash near-duplicates only.
        copy_config: the copy finder's other thresholds and its embedding cache.

    Returns:
        The ``AuditReport``.
    """
    roots = [root] if isinstance(root, str | Path) else list(root)
    others = [] if against is None else [against] if isinstance(against, str | Path) else against
    config = replace(copy_config or CopyConfig(), phash_threshold=near_threshold)
    index = _audit_index(roots, positive, patient_pattern)
    other_indexes = [scan_dataset(o, multiclass=True) for o in others]
    audited = {r.path for r in index.records}
    compared = [r for o in other_indexes for r in o.records if r.path not in audited]
    log.info("finding copies among %d photos (%d to compare)", len(audited), len(compared))
    scan = scan_copies(index.records + compared, embed=embed, config=config)
    report = AuditReport(
        root=index.root,
        layout=index.layout,
        class_names=list(index.class_names),
        n_images=len(index.records),
        near_threshold=near_threshold,
        unreadable=[u for u in scan.unreadable if u.path in audited],
        sources=[Path(r) for r in roots],
        against=[o.root for o in other_indexes],
        copy_config=config,
        photos_per_class=dict(Counter(r.class_name for r in index.records)),
        patients_per_class=_patients_per_class(index.records),
        photos_per_patient=dict(sorted(Counter(r.patient for r in index.records).items())),
        notes=list(scan.notes),
    )
    by_path = {r.path: r for r in scan.records}
    within = []
    for pair in scan.pairs:
        in_a, in_b = pair.a in audited, pair.b in audited
        if not (in_a or in_b):
            continue  # a copy inside an against set is that set's business
        if not (in_a and in_b):
            a, b = (pair.a, pair.b) if in_a else (pair.b, pair.a)
            report.against_duplicates.append(replace(pair, a=a, b=b, where="against"))
        elif by_path[pair.a].source != by_path[pair.b].source:
            where = f"{by_path[pair.a].source} / {by_path[pair.b].source}"
            report.cross_source.append(replace(pair, where=where))
            within.append(pair)
        else:
            within.append(pair)
    report.exact_duplicates = _exact_groups(scan.records, scan.sha256, audited)
    report.near_duplicates = [p for p in within if not p.exact]
    report.cross_class = [
        replace(p, where=f"{by_path[p.a].class_name} / {by_path[p.b].class_name}")
        for p in within
        if by_path[p.a].class_name != by_path[p.b].class_name
        and by_path[p.a].source == by_path[p.b].source
    ]
    log.info("checking the splits and folds for patients and photos in two parts")
    for label, part_of in _partitions(index, within, seed=seed, folds=folds, notes=report.notes):
        report.patient_leaks += _patient_leaks(index.records, part_of, label)
        report.cross_split += _straddling(within, part_of, label)
    return report


def _audit_index(
    roots: Sequence[str | Path], positive: str | None, patient_pattern: str | None
) -> DatasetIndex:
    """One folder as ``scan_dataset`` reads it (every class its own); several sources with
    their class folders qualified by source, so that each is counted and checked apart."""
    if len(roots) == 1 and not is_manifest(roots[0]):
        return scan_dataset(
            roots[0], positive=positive, multiclass=True, patient_pattern=patient_pattern
        )
    index = load_sources(roots, positive=positive, patient_pattern=patient_pattern)
    records = [replace(r, class_name=f"{r.source}/{r.class_name}") for r in index.records]
    return replace(index, records=records, class_names=sorted({r.class_name for r in records}))


def find_split_leaks(split: Split | Fold, near_threshold: int = 6) -> list[str]:
    """Describe every patient and every identical or pHash-near photo found in two parts.

    ``train`` and ``cv`` call this to warn before training (they have merged the photo groups of
    cropped copies already). Unreadable files are skipped here (the loader names them).

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
    part_of = {r.path: name for name, part in parts.items() for r in part}
    config = CopyConfig(phash_threshold=near_threshold)
    for pair in scan_copies(records, config=config).pairs:
        part_a, part_b = part_of[pair.a], part_of[pair.b]
        if part_a == part_b:
            continue
        kind = (
            "The same file"
            if pair.exact
            else f"A near-duplicate photo (hash distance {pair.distance})"
        )
        messages.append(f"{kind} is in {part_a} ({pair.a}) and {part_b} ({pair.b}).")
    return messages


def merge_duplicate_patients(
    records: Sequence[ImageRecord], near_threshold: int = 6
) -> list[ImageRecord]:
    """Give photos that are identical or pHash-near copies one patient id (across classes too).

    The crop-robust version is ``mpoxscan.data.copies.merge_copies`` (needs an embedder).

    Args:
        records: the photos.
        near_threshold: largest perceptual-hash distance counted as the same photo.

    Returns:
        The records, in order, with ``patient`` rewritten where merged.
    """
    config = CopyConfig(phash_threshold=near_threshold)
    pairs = scan_copies(records, config=config).pairs
    return merge_copy_groups(records, pairs)[0]


def merge_duplicates(index: DatasetIndex, near_threshold: int = 6) -> DatasetIndex:
    """The index with identical or pHash-near copies under two patient ids merged.

    A pre-split layout is returned as it is: its folders are the user's split.
    """
    if index.layout == "presplit":
        return index
    return replace(index, records=merge_duplicate_patients(index.records, near_threshold))


def _exact_groups(
    records: list[ImageRecord], sha256: list[str], keep: set[Path]
) -> list[list[Path]]:
    by_sha: dict[str, list[Path]] = defaultdict(list)
    for record, sha in zip(records, sha256, strict=True):
        if record.path in keep:
            by_sha[sha].append(record.path)
    return [paths for paths in by_sha.values() if len(paths) > 1]


def _patients_per_class(records: list[ImageRecord]) -> dict[str, int]:
    patients: dict[str, set[str]] = defaultdict(set)
    for record in records:
        patients[record.class_name].add(record.patient)
    return {name: len(ids) for name, ids in sorted(patients.items())}


def _partitions(
    index: DatasetIndex, pairs: list[CopyPair], *, seed: int, folds: int, notes: list[str]
) -> list[tuple[str, dict[Path, str]]]:
    """The partitions whose parts must not share photos, as ``(label, path -> part name)``.

    A pre-split set has its folders; an unsplit one the ``split_dataset`` split and the
    patient-grouped CV test folds that ``train`` and ``cv`` use (copies' groups merged first).
    """
    if index.layout == "presplit":
        return [("folders", {r.path: str(r.split) for r in index.records})]
    index = replace(index, records=merge_copy_groups(index.records, pairs)[0])
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


def _straddling(pairs: list[CopyPair], part_of: dict[Path, str], label: str) -> list[CopyPair]:
    """The pairs whose two photos fall in different parts of a partition."""
    found = []
    for pair in pairs:
        part_a, part_b = part_of.get(pair.a), part_of.get(pair.b)
        if part_a and part_b and part_a != part_b:
            found.append(replace(pair, where=f"{label}: {part_a} / {part_b}"))
    return found
