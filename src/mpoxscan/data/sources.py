"""Several data sources in one run: dataset folders, or a TOML manifest that names them.

A *source* is one unsplit dataset folder, ``<folder>/<class>/<images>``, collected in one way
(one web site, one clinic, one atlas). Screening has two labels: ``mpox`` (the positive class)
and ``negative`` (every other class of every source); each photo keeps its source and class
folder for reporting. A manifest (``benchmarks/shared-data.toml`` for ``../shared/data``) is::

    root = "../../shared/data"      # optional; relative to the manifest file

    [[sources]]
    name = "msld-v1"                # how reports and group ids name it
    folder = "msld-v1"              # relative to root
    group_pattern = "..."           # optional regex; default: file stem up to its first "_"
    origin = "web (news, case reports)"
    provenance = "GitHub ShamsNafisaAli/Monkeypox-Skin-Lesion-Dataset, commit 365f48b"
    classes = { "Monkey Pox" = "mpox", "Others" = "negative" }

Every class folder found on disk must be mapped, and every mapped class must exist: a photo of
a class nobody labelled is an error, not a silent negative. Sources are read in place.
"""

from __future__ import annotations

import os
import tomllib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpoxscan.data.datasets import (
    NEGATED_PATTERN,
    OTHER_CLASS,
    POSITIVE_PATTERN,
    DatasetIndex,
    ImageRecord,
    find_class_images,
    fingerprint_records,
    patient_id,
    scan_dataset,
)
from mpoxscan.errors import DatasetError

#: Screening labels a manifest may give a class folder, and the model target of each.
SCREENING_LABELS: dict[str, int] = {"mpox": 1, "negative": 0}
#: Name of the positive class when the sources' mpox folders are named differently.
MPOX_CLASS = "Mpox"
#: Keys a ``[[sources]]`` table may have besides ``name``, ``folder`` and ``classes``.
_SOURCE_KEYS = frozenset({"group_pattern", "origin", "provenance", "licence", "notes"})


@dataclass(frozen=True)
class SourceSpec:
    """One data source: where it is, how its classes map to screening labels, where from.

    Attributes:
        name: short name, unique in a run; group ids and reports use it.
        folder: the source's folder, ``<folder>/<class>/<images>``.
        classes: class folder -> screening label (``"mpox"`` or ``"negative"``); empty means
            "by name": the folder matching mpox/monkeypox (or ``positive``) is mpox, every other
            one negative.
        group_pattern: regex of the photo-group id in a file stem; ``None``: the stem up to its
            first ``_``.
        provenance: free text fields from the manifest (origin, provenance, licence, notes).
    """

    name: str
    folder: Path
    classes: dict[str, str] = field(default_factory=dict)
    group_pattern: str | None = None
    provenance: dict[str, str] = field(default_factory=dict)


def is_manifest(path: str | Path) -> bool:
    """Whether a ``--data`` path names a manifest file (``*.toml``) rather than a folder."""
    return Path(path).suffix.lower() == ".toml"


def read_manifest(path: str | Path) -> list[SourceSpec]:
    """Read the sources a TOML manifest names; folders are resolved relative to the file.

    Args:
        path: the manifest file.

    Returns:
        One :class:`SourceSpec` per ``[[sources]]`` table, in file order.

    Raises:
        DatasetError: ``bad_manifest`` when the file is missing, not TOML, or malformed.
    """
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _manifest_error(path, f"cannot be read ({exc.strerror or exc})") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise _manifest_error(path, f"is not valid TOML ({exc})") from exc
    tables = document.get("sources")
    if not isinstance(tables, list) or not tables:
        raise _manifest_error(path, "has no [[sources]] table; add one per source folder")
    root = Path(os.path.normpath(path.parent / str(document.get("root", "."))))
    return [_source_spec(path, root, table) for table in tables]


def data_sources(paths: Sequence[str | Path]) -> list[SourceSpec]:
    """The sources behind ``--data`` paths: each a manifest or one source folder.

    A folder becomes a source named after it with its classes mapped by name.

    Args:
        paths: folders and manifest files.

    Returns:
        The sources, in order.

    Raises:
        DatasetError: two sources share a name (``duplicate_source``), or a manifest is bad.
    """
    specs: list[SourceSpec] = []
    for path in paths:
        if is_manifest(path):
            specs.extend(read_manifest(path))
        else:
            specs.append(SourceSpec(name=Path(path).name, folder=Path(path)))
    names = Counter(spec.name for spec in specs)
    twice = sorted(name for name, count in names.items() if count > 1)
    if twice:
        raise DatasetError(
            f"Source name(s) {', '.join(twice)} given twice; each source must appear once "
            "(rename one in its manifest, or drop the repeated --data).",
            code="duplicate_source",
        )
    return specs


def load_sources(
    paths: Sequence[str | Path],
    *,
    positive: str | None = None,
    multiclass: bool = False,
    patient_pattern: str | None = None,
) -> DatasetIndex:
    """Index the photos of one or several sources.

    One dataset folder is read as before (:func:`~mpoxscan.data.datasets.scan_dataset`, either
    layout, group ids ``<class>/<id>``), unless it has a single class folder. Anything else
    (several ``--data`` paths, or a manifest) is a multi-source run: see :func:`scan_sources`.

    Args:
        paths: dataset folders and manifest files (at least one).
        positive: the positive class folder name, for sources mapped by name.
        multiclass: one output per class (single folders only).
        patient_pattern: group-id regex for sources that do not set their own.

    Returns:
        The ``DatasetIndex``; multi-source records carry their ``source``.
    """
    if not paths:
        raise DatasetError("No data given; pass --data with a folder or manifest.", code="no_data")
    if len(paths) == 1 and not is_manifest(paths[0]):
        try:
            return scan_dataset(
                paths[0], positive=positive, multiclass=multiclass, patient_pattern=patient_pattern
            )
        except DatasetError as exc:
            if exc.code != "too_few_classes":
                raise
    if multiclass:
        raise DatasetError(
            "--multiclass works with one dataset folder only; several sources are read as "
            "mpox against every other class.",
            code="multiclass_sources",
        )
    return scan_sources(data_sources(paths), positive=positive, patient_pattern=patient_pattern)


def scan_sources(
    specs: Sequence[SourceSpec], *, positive: str | None = None, patient_pattern: str | None = None
) -> DatasetIndex:
    """Index the photos of several sources for binary screening (mpox against the rest).

    Group ids are qualified by source and class: ``"<source>/<class>/<id>"``. ``classes`` is
    ``[negative name, positive name]``: the mpox folders' common name (else ``"Mpox"``) and the
    other folders' common name (else ``"Other"``).

    Args:
        specs: the sources.
        positive: positive class folder name for sources mapped by name.
        patient_pattern: group-id regex for sources without their own ``group_pattern``.

    Returns:
        The ``DatasetIndex`` (layout ``"unsplit"``, ``sources`` set).

    Raises:
        DatasetError: a folder is missing or pre-split (``source_not_found``,
            ``presplit_source``), a class is unmapped (``unmapped_class``) or missing
            (``missing_class``), or a source has no photos (``empty_source``).
    """
    records: list[ImageRecord] = []
    labels: dict[str, str] = {}
    for spec in specs:
        found = _source_images(spec)
        mapping = spec.classes or _labels_by_name(spec, sorted(found), positive)
        _check_mapping(spec, sorted(found), mapping)
        pattern = spec.group_pattern if spec.group_pattern is not None else patient_pattern
        for class_name in sorted(found):
            label = mapping[class_name]
            labels.setdefault(class_name, label)
            for path in found[class_name]:
                group = patient_id(path, pattern)
                records.append(
                    ImageRecord(
                        path=path,
                        class_name=class_name,
                        label=SCREENING_LABELS[label],
                        patient=f"{spec.name}/{class_name}/{group}",
                        split=None,
                        source=spec.name,
                    )
                )
    class_names = sorted({record.class_name for record in records})
    positives = sorted({r.class_name for r in records if r.label == 1})
    negatives = sorted({r.class_name for r in records if r.label == 0})
    positive_name = positives[0] if len(positives) == 1 else MPOX_CLASS
    negative_name = negatives[0] if len(negatives) == 1 else OTHER_CLASS
    return DatasetIndex(
        root=Path(os.path.commonpath([spec.folder.resolve() for spec in specs])),
        layout="unsplit",
        class_names=class_names,
        classes=[negative_name, positive_name],
        positive_class=positive_name,
        multiclass=False,
        records=records,
        sources=list(specs),
    )


def sources_summary(index: DatasetIndex) -> list[dict[str, Any]]:
    """What each source contributed: folder, provenance, classes with label and counts, and a
    fingerprint; ``model.json`` keeps it as ``data.sources``.

    Args:
        index: an index from :func:`load_sources` (a single folder counts as one source).

    Returns:
        One JSON-ready dict per source, in order.
    """
    specs = index.sources or [SourceSpec(name=index.root.name, folder=index.root)]
    summary = []
    for spec in specs:
        mine = [r for r in index.records if r.source in (spec.name, None)]
        classes: dict[str, dict[str, Any]] = {}
        for record in mine:
            entry = classes.setdefault(
                record.class_name,
                {"label": _label_name(record, index), "photos": 0, "groups": set()},
            )
            entry["photos"] += 1
            entry["groups"].add(record.patient)
        summary.append(
            {
                "name": spec.name,
                "folder": str(spec.folder),
                **spec.provenance,
                "photos": len(mine),
                "groups": len({r.patient for r in mine}),
                "classes": {
                    name: entry | {"groups": len(entry["groups"])}
                    for name, entry in sorted(classes.items())
                },
                "fingerprint": fingerprint_records(mine),
            }
        )
    return summary


def _label_name(record: ImageRecord, index: DatasetIndex) -> str:
    if index.multiclass:
        return record.class_name
    return "mpox" if record.label == 1 else "negative"


def _manifest_error(path: Path, problem: str) -> DatasetError:
    return DatasetError(f"Data manifest {path} {problem}.", code="bad_manifest")


def _source_spec(path: Path, root: Path, table: Any) -> SourceSpec:
    """One ``[[sources]]`` table, checked."""
    if not isinstance(table, dict):
        raise _manifest_error(path, "has a [[sources]] entry that is not a table")
    name, folder, classes = table.get("name"), table.get("folder"), table.get("classes")
    if not isinstance(name, str) or not name or "/" in name:
        raise _manifest_error(path, f"has a source without a valid name ({name!r}; no '/')")
    if not isinstance(folder, str) or not folder:
        raise _manifest_error(path, f"gives source {name!r} no folder")
    if not isinstance(classes, dict) or not classes:
        raise _manifest_error(
            path, f'gives source {name!r} no classes table (class folder = "mpox"|"negative")'
        )
    bad = {c: v for c, v in classes.items() if v not in SCREENING_LABELS}
    if bad:
        raise _manifest_error(
            path,
            f"maps class(es) {bad} of source {name!r} to unknown label(s); use "
            f"{' or '.join(repr(k) for k in SCREENING_LABELS)}",
        )
    unknown = sorted(set(table) - _SOURCE_KEYS - {"name", "folder", "classes"})
    if unknown:
        raise _manifest_error(
            path, f"has unknown key(s) {unknown} in source {name!r}; known: {sorted(_SOURCE_KEYS)}"
        )
    pattern = table.get("group_pattern")
    return SourceSpec(
        name=name,
        folder=root / folder,
        classes=dict(classes),
        group_pattern=str(pattern) if pattern is not None else None,
        provenance={k: str(v) for k, v in table.items() if k in _SOURCE_KEYS - {"group_pattern"}},
    )


def _source_images(spec: SourceSpec) -> dict[str, list[Path]]:
    """Class folder -> image paths of one unsplit source, read in place."""
    if not spec.folder.is_dir():
        raise DatasetError(
            f"Folder {spec.folder} of source {spec.name!r} does not exist; fix the path (a "
            "manifest's folders are relative to its root).",
            code="source_not_found",
        )
    index = _scan_classes(spec.folder)
    if not index:
        raise DatasetError(
            f"Source {spec.name!r} ({spec.folder}) has no class folder with images; lay it out "
            "as <folder>/<class>/<images>.",
            code="empty_source",
        )
    return index


def _scan_classes(folder: Path) -> dict[str, list[Path]]:
    found = find_class_images(folder)
    if any(split is not None for split, _, _ in found):
        raise DatasetError(
            f"Source folder {folder} is split into Train/Val/Test; a source must be unsplit "
            "(<folder>/<class>/<images>) so that splits and folds are made across sources.",
            code="presplit_source",
        )
    by_class: dict[str, list[Path]] = {}
    for _, class_name, path in found:
        by_class.setdefault(class_name, []).append(path)
    return by_class


def _labels_by_name(spec: SourceSpec, class_names: list[str], positive: str | None) -> dict:
    """Map a folder source's classes: the mpox-named (or ``positive``) one is mpox."""

    def is_positive(name: str) -> bool:
        if positive is not None:
            return name.casefold() == positive.casefold()
        return bool(POSITIVE_PATTERN.search(name)) and not NEGATED_PATTERN.search(name)

    return {name: "mpox" if is_positive(name) else "negative" for name in class_names}


def _check_mapping(spec: SourceSpec, class_names: list[str], mapping: dict[str, str]) -> None:
    unmapped = [name for name in class_names if name not in mapping]
    if unmapped:
        raise DatasetError(
            f"Source {spec.name!r} has class folder(s) {', '.join(map(repr, unmapped))} that its "
            f'manifest does not map; add each to its classes as "mpox" or "negative".',
            code="unmapped_class",
        )
    missing = [name for name in mapping if name not in class_names]
    if missing:
        raise DatasetError(
            f"Source {spec.name!r} ({spec.folder}) has no images in mapped class folder(s) "
            f"{', '.join(map(repr, missing))}; fix the manifest or the folder.",
            code="missing_class",
        )
