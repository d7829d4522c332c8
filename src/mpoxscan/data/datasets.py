"""Finding the photos of a dataset folder: layout, classes, labels and patient ids."""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mpoxscan.data.images import IMAGE_SUFFIXES
from mpoxscan.errors import DatasetError
from mpoxscan.hashing import file_sha256

#: Folder names of a pre-split layout (compared in lower case) and the split each stands for.
SPLIT_FOLDERS: dict[str, str] = {
    "train": "train",
    "val": "val",
    "validation": "val",
    "test": "test",
}

#: Class folder names taken as the positive class when ``positive`` is not given.
POSITIVE_PATTERN = re.compile(r"m(onkey)?[ _-]?pox", re.IGNORECASE)

#: ...unless the name negates it, as in ``Non-Monkeypox`` or ``not_mpox``.
NEGATED_PATTERN = re.compile(r"^\W*no[nt]?(\b|_)", re.IGNORECASE)

#: Name of the negative class in binary mode when several folders are merged into it.
OTHER_CLASS = "Other"


@dataclass(frozen=True)
class ImageRecord:
    """One photo of a dataset.

    Attributes:
        path: the image file.
        class_name: the folder (class) it was found in.
        label: its model target (index into ``DatasetIndex.classes``).
        patient: the photo group (patient) id: ``"<class_name>/<id>"`` for one dataset
            folder, ``"<source>/<class_name>/<id>"`` for several sources.
        split: ``"train"``, ``"val"`` or ``"test"`` in a pre-split layout, else ``None``.
        source: the data source (its name; for one folder, the folder's name).
    """

    path: Path
    class_name: str
    label: int
    patient: str
    split: str | None
    source: str | None = None


@dataclass
class DatasetIndex:
    """What ``scan_dataset`` found in a dataset folder.

    Attributes:
        root: the dataset folder.
        layout: ``"presplit"`` (``Train``/``Val``/``Test`` folders) or ``"unsplit"``.
        class_names: class folder names found, sorted.
        classes: the meaning of the model outputs, in order (see ``docs/architecture.md``).
        positive_class: the class screened for, or ``None`` (multi-class without one).
        multiclass: one output per class instead of one positive-vs-rest logit.
        records: every photo, sorted by path.
        sources: the ``SourceSpec`` of each source of a multi-source index
            (:mod:`mpoxscan.data.sources`); empty for one dataset folder.
    """

    root: Path
    layout: Literal["presplit", "unsplit"]
    class_names: list[str]
    classes: list[str]
    positive_class: str | None
    multiclass: bool
    records: list[ImageRecord]
    sources: list[Any] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Counts for a quick look: images per class and split, patients per class.

        Returns:
            A JSON-serialisable dict.
        """
        per_split: dict[str, dict[str, int]] = {}
        for record in self.records:
            counts = per_split.setdefault(record.split or "all", {})
            counts[record.class_name] = counts.get(record.class_name, 0) + 1
        patients: dict[str, set[str]] = {name: set() for name in self.class_names}
        for record in self.records:
            patients[record.class_name].add(record.patient)
        return {
            "root": str(self.root),
            "layout": self.layout,
            "classes": list(self.classes),
            "positive_class": self.positive_class,
            "multiclass": self.multiclass,
            "images": len(self.records),
            "images_per_class": dict(Counter(r.class_name for r in self.records)),
            "images_per_split": per_split,
            "patients_per_class": {name: len(ids) for name, ids in patients.items()},
        }


def scan_dataset(
    root: str | Path,
    *,
    positive: str | None = None,
    multiclass: bool = False,
    patient_pattern: str | None = None,
) -> DatasetIndex:
    """Index the photos of a dataset folder.

    Two layouts are understood. Pre-split: ``root/Train``, ``root/Val`` (or ``Validation``,
    optional) and ``root/Test`` (any case), each holding one folder per class. Unsplit:
    ``root/<class>/<images>``. Images may sit in sub-folders of a class folder; hidden files and
    folders, and files whose suffix is not in ``IMAGE_SUFFIXES``, are ignored.

    Args:
        root: the dataset folder.
        positive: the class to screen for; by default the one whose name matches
            ``mpox``/``monkeypox``/``monkey pox`` (any case).
        multiclass: give every class its own output instead of positive-vs-rest.
        patient_pattern: regex whose first group (or whole match) in a file's stem is its
            patient id; by default the stem up to its first ``_``.

    Returns:
        The ``DatasetIndex``.

    Raises:
        DatasetError: the folder is missing, has an unknown layout, fewer than two classes, or
            no class matches the positive class in binary mode.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"Dataset folder {root} does not exist; pass the folder that holds one sub-folder "
            "per class (or Train/Val/Test folders).",
            code="dataset_not_found",
        )
    split_dirs = _split_folders(root)
    layout: Literal["presplit", "unsplit"] = "presplit" if split_dirs else "unsplit"
    found = _find_images(split_dirs) if split_dirs else _find_images({None: root})
    class_names = sorted({class_name for _, class_name, _ in found})
    if len(class_names) < 2:
        raise DatasetError(
            f"Found {len(class_names)} class folder(s) with images in {root} "
            f"({', '.join(class_names) or 'none'}); a dataset needs at least two, as "
            "root/<class>/<images> or root/Train/<class>/<images>.",
            code="too_few_classes",
        )
    positive_class = _choose_positive(class_names, positive, required=not multiclass)
    classes = _output_classes(class_names, positive_class, multiclass)
    records = [
        ImageRecord(
            path=path,
            class_name=class_name,
            label=_label(class_name, classes, positive_class, multiclass),
            patient=f"{class_name}/{patient_id(path, patient_pattern)}",
            split=split,
            source=root.name,
        )
        for split, class_name, path in found
    ]
    return DatasetIndex(
        root=root,
        layout=layout,
        class_names=class_names,
        classes=classes,
        positive_class=positive_class,
        multiclass=multiclass,
        records=records,
    )


def patient_id(path: Path, pattern: str | None = None) -> str:
    """Return the patient id in a file name.

    By default the stem up to its first ``_`` (MSLD: ``P13_1.jpg`` -> ``P13``,
    ``a13_2.jpg`` -> ``a13``, ``17.jpg`` -> ``17``). With ``pattern``, the first capture group
    of its first match in the stem, or the whole match when it has no group.

    Args:
        path: the image file.
        pattern: optional regular expression.

    Returns:
        The patient id (unique only within a class).

    Raises:
        DatasetError: ``pattern`` does not match the stem, or is not a valid regex.
    """
    stem = Path(path).stem
    if pattern is None:
        head = stem.split("_", 1)[0]
        return head or stem
    try:
        match = re.search(pattern, stem)
    except re.error as exc:
        raise DatasetError(
            f"Patient pattern {pattern!r} is not a valid regular expression ({exc}); fix it.",
            code="bad_patient_pattern",
        ) from exc
    found = (match.group(1) if match.groups() else match.group(0)) if match else None
    if not found:
        raise DatasetError(
            f"Patient pattern {pattern!r} finds no patient id in file name {stem!r}; change the "
            "pattern so it matches every file, or leave it out to use the stem up to its '_'.",
            code="bad_patient_pattern",
        )
    return found


def fingerprint_records(records: list[ImageRecord]) -> str:
    """Return a SHA-256 that changes when any photo, label or file name of the set changes.

    Paths are taken relative to the records' deepest common folder, so moving the dataset
    keeps its fingerprint.

    Args:
        records: the photos (for example ``DatasetIndex.records`` or one split's part).

    Returns:
        A hex digest.
    """
    if not records:
        return hashlib.sha256(b"").hexdigest()
    base = Path(os.path.commonpath([r.path.parent for r in records]))
    rows = sorted(
        (r.path.relative_to(base).as_posix(), r.label, file_sha256(r.path)) for r in records
    )
    digest = hashlib.sha256()
    for rel, label, file_hash in rows:
        digest.update(f"{rel}\t{label}\t{file_hash}\n".encode())
    return digest.hexdigest()


def _visible_dirs(folder: Path) -> list[Path]:
    """Sub-folders, skipping hidden ones and archive leftovers such as ``__MACOSX``."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_dir() and not p.name.startswith(".") and not p.name.startswith("__")
    )


def _split_folders(root: Path) -> dict[str | None, Path]:
    """The split folders of a pre-split layout, or ``{}`` for an unsplit one."""
    subdirs = _visible_dirs(root)
    splits = [d for d in subdirs if d.name.lower() in SPLIT_FOLDERS]
    if not splits:
        return {}
    others = [d.name for d in subdirs if d.name.lower() not in SPLIT_FOLDERS]
    if others:
        raise DatasetError(
            f"{root} mixes split folders ({', '.join(d.name for d in splits)}) with other "
            f"folders ({', '.join(others)}); move the class folders into Train/Val/Test or "
            "remove the split folders.",
            code="mixed_layout",
        )
    by_split: dict[str | None, Path] = {}
    for folder in splits:
        split = SPLIT_FOLDERS[folder.name.lower()]
        if split in by_split:
            raise DatasetError(
                f"{root} has two folders for the {split} split ({by_split[split].name} and "
                f"{folder.name}); keep one.",
                code="mixed_layout",
            )
        by_split[split] = folder
    for needed in ("train", "test"):
        if needed not in by_split:
            raise DatasetError(
                f"{root} has split folders but no {needed.capitalize()} folder; add it, or "
                "lay the dataset out unsplit as root/<class>/<images>.",
                code="mixed_layout",
            )
    return by_split


def find_class_images(root: Path) -> list[tuple[str | None, str, Path]]:
    """``(split, class name, path)`` of every image of a dataset folder, sorted by path.

    ``split`` is the pre-split folder's split, or ``None`` for an unsplit layout.
    """
    split_dirs = _split_folders(root)
    return _find_images(split_dirs) if split_dirs else _find_images({None: root})


def _find_images(bases: dict[str | None, Path]) -> list[tuple[str | None, str, Path]]:
    """``(split, class name, path)`` of every image under ``base/<class>/``, sorted by path."""
    found = []
    for split, base in bases.items():
        for class_dir in _visible_dirs(base):
            for path in sorted(class_dir.rglob("*")):
                rel_parts = path.relative_to(class_dir).parts
                if any(part.startswith(".") for part in rel_parts):
                    continue
                if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                    found.append((split, class_dir.name, path))
    return sorted(found, key=lambda item: item[2])


def _choose_positive(class_names: list[str], positive: str | None, *, required: bool) -> str | None:
    """The positive class: the one named, else the one matching mpox/monkeypox."""
    available = ", ".join(repr(name) for name in class_names)
    if positive is not None:
        exact = [name for name in class_names if name == positive]
        folded = [name for name in class_names if name.casefold() == positive.casefold()]
        chosen = exact or folded
        if len(chosen) != 1:
            raise DatasetError(
                f"Positive class {positive!r} is not one of the class folders ({available}); "
                "pass one of them.",
                code="unknown_positive_class",
            )
        return chosen[0]
    matches = [
        name
        for name in class_names
        if POSITIVE_PATTERN.search(name) and not NEGATED_PATTERN.search(name)
    ]
    if len(matches) == 1:
        return matches[0]
    if not required:
        return None
    reason = "several class folders look like mpox" if matches else "no class folder names mpox"
    raise DatasetError(
        f"Cannot tell the positive class: {reason} (classes: {available}); pass --positive "
        "with one of them, or use --multiclass.",
        code="unknown_positive_class",
    )


def _output_classes(class_names: list[str], positive: str | None, multiclass: bool) -> list[str]:
    if multiclass:
        return list(class_names)
    assert positive is not None  # _choose_positive requires one in binary mode
    others = [name for name in class_names if name != positive]
    negative = others[0] if len(others) == 1 else OTHER_CLASS
    return [negative, positive]


def _label(class_name: str, classes: list[str], positive: str | None, multiclass: bool) -> int:
    if multiclass:
        return classes.index(class_name)
    return int(class_name == positive)
