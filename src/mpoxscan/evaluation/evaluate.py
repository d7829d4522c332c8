"""Measure a saved bundle on a dataset (`mpoxscan evaluate`)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mpoxscan.data.audit import merge_duplicates
from mpoxscan.data.copies import GroupMerge, apply_group_merges
from mpoxscan.data.datasets import DatasetIndex, ImageRecord, fingerprint_records
from mpoxscan.data.photos import read_photo
from mpoxscan.data.sources import load_sources
from mpoxscan.data.splits import Split, split_dataset
from mpoxscan.errors import DatasetError, InvalidImageError
from mpoxscan.evaluation.metrics import screening_metrics, to_jsonable
from mpoxscan.evaluation.per_source import ScoredPhotos, per_source_figures
from mpoxscan.evaluation.plots import plot_test_results
from mpoxscan.inference.bundle import BundleMeta
from mpoxscan.inference.predictor import Predictor

BATCH_SIZE = 16

#: The parts of a pre-split dataset (``ImageRecord.split``).
_PARTS = ("train", "val", "test")


@dataclass
class EvaluationReport:
    """Metrics of a bundle on a set of photos, and the plots written."""

    description: str
    metrics: dict[str, Any]
    plots: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    #: Per source and class (binary bundles): called mpox, refused, sensitivity; see
    #: :func:`~mpoxscan.evaluation.per_source.per_source_figures`.
    per_source: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (NaN becomes null)."""
        return to_jsonable(
            {
                "evaluated_on": self.description,
                "metrics": self.metrics,
                "per_source": self.per_source,
                "plots": [str(p) for p in self.plots],
                "skipped": self.skipped,
            }
        )


def evaluation_records(index: DatasetIndex, meta: BundleMeta) -> tuple[list[ImageRecord], str]:
    """The photos to evaluate on, and a description of which part that is.

    A pre-split dataset gives its Test folder. An unsplit dataset that is the bundle's own
    training data (same fingerprint) gives the same held-out test patients as at training
    time; so does, within several sources, a source that alone was the bundle's training data
    (a model trained on MSLD, evaluated on a manifest that includes MSLD). Any other data is
    evaluated whole.
    """
    if index.layout == "presplit":
        return [r for r in index.records if r.split == "test"], "the Test folder"
    if fingerprint_records(index.records) == meta.data_fingerprint:
        return _held_out(index, meta), "the bundle's held-out test patients"
    records, trained_on = [], []
    for spec in index.sources:
        mine = [r for r in index.records if r.source == spec.name]
        if fingerprint_records(mine) == meta.data_fingerprint:
            records += _held_out(replace(index, records=mine, sources=[spec]), meta)
            trained_on.append(spec.name)
        else:
            records += mine
    if trained_on:
        return records, (
            f"all photos, but only the held-out test patients of {', '.join(trained_on)} "
            "(the bundle's training data)"
        )
    return list(index.records), "all photos (not the bundle's training data)"


def _merged_as_at_training(index: DatasetIndex, meta: Mapping[str, Any]) -> DatasetIndex:
    """The index with photo groups merged as the bundle's training merged them (recorded in
    ``model.json``; bundles from before the crop-robust finder merged pHash copies only)."""
    recorded = meta.get("data", {}).get("copy_merges")
    if recorded is None:
        return merge_duplicates(index)
    merges = [GroupMerge(m["group"], tuple(m["members"])) for m in recorded]
    return replace(index, records=apply_group_merges(index.records, merges))


def _held_out(index: DatasetIndex, meta: BundleMeta) -> list[ImageRecord]:
    """The test part of the split the bundle was trained with (same settings and seed)."""
    return _training_split(index, meta).test


def bundle_split(index: DatasetIndex, meta: BundleMeta) -> Split | None:
    """The train / val / test split a bundle was trained with, when ``index`` is its data.

    Args:
        index: a dataset.
        meta: the bundle's metadata.

    Returns:
        A pre-split dataset's own folders; for an unsplit dataset with the bundle's data
        fingerprint, the split of training time; otherwise ``None``.
    """
    if index.layout == "presplit":
        parts = {name: [r for r in index.records if r.split == name] for name in _PARTS}
        return Split(**parts)
    if fingerprint_records(index.records) != meta.data_fingerprint:
        return None
    return _training_split(index, meta)


def _training_split(index: DatasetIndex, meta: BundleMeta) -> Split:
    data_cfg = meta.config.get("data", {})
    train_cfg = meta.config.get("train", {})
    return split_dataset(
        _merged_as_at_training(index, meta),
        val_fraction=data_cfg.get("val_fraction", 0.1),
        test_fraction=data_cfg.get("test_fraction", 0.2),
        seed=train_cfg.get("seed", 0),
    )


def _predict_records(
    predictor: Predictor, records: list[ImageRecord]
) -> tuple[np.ndarray, np.ndarray, list[ImageRecord], list[str]]:
    """Probabilities of every readable photo, whether the page would refuse it ("retake"),
    the records kept and the files skipped."""
    kept, skipped, chunks, refusals = [], [], [], []
    for start in range(0, len(records), BATCH_SIZE):
        images = []
        for record in records[start : start + BATCH_SIZE]:
            try:
                images.append(read_photo(record.path, predictor.image_size_))
                kept.append(record)
            except InvalidImageError as error:
                warnings.warn(f"skipping {record.path}: {error}", stacklevel=2)
                skipped.append(str(record.path))
        if images:
            proba, refused = _assess(predictor, images)
            chunks.append(proba)
            refusals.append(refused)
    n_classes = len(predictor.classes_)
    proba = np.concatenate(chunks) if chunks else np.empty((0, n_classes))
    refused = np.concatenate(refusals) if refusals else np.empty(0, bool)
    return proba, refused, kept, skipped


def _assess(predictor: Predictor, images: list) -> tuple[np.ndarray, np.ndarray]:
    """As the page does (photo checks, out-of-domain check), with the probabilities of the
    refused photos computed too, for the figures that ignore refusals."""
    assessments = predictor.assess_many(images)
    refused = np.array([not a.ok for a in assessments], dtype=bool)
    proba = np.empty((len(images), len(predictor.classes_)))
    for i, assessment in enumerate(assessments):
        if assessment.prediction is not None:
            probabilities = assessment.prediction.probabilities
            proba[i] = [probabilities[name] for name in predictor.classes_]
    if refused.any():
        proba[refused] = predictor.predict_proba([images[i] for i in np.flatnonzero(refused)])
    return proba, refused


def evaluate_bundle(
    bundle_dir: Path, data: Path | Sequence[Path], *, plots_dir: Path | None = None
) -> EvaluationReport:
    """Evaluate a bundle on a dataset with patient-grouped confidence intervals.

    Args:
        bundle_dir: the model bundle.
        data: a dataset folder in either layout, a data manifest, or several of them
            (see :func:`~mpoxscan.data.sources.load_sources`).
        plots_dir: where to write ``confusion_matrix.png`` and ``roc.png`` (skipped if None).

    Returns:
        An :class:`EvaluationReport`.
    """
    predictor = Predictor.load(bundle_dir)
    meta = predictor.meta_
    data_cfg = meta.config.get("data", {})
    index = load_sources(
        [data] if isinstance(data, (str, Path)) else list(data),
        positive=predictor.positive_class_,
        multiclass=meta.multiclass,
        patient_pattern=data_cfg.get("patient_pattern"),
    )
    records, description = evaluation_records(index, meta)
    proba, refused, kept, skipped = _predict_records(predictor, records)
    if not kept:
        raise DatasetError(
            f"None of the {len(records)} photos in {data} could be read, so there is "
            "nothing to evaluate. Check that the folder holds JPEG or PNG photos.",
            code="no_readable_photos",
        )
    labels = np.array([_label_in_bundle(r, index, predictor) for r in kept], dtype=int)
    classes, threshold, binary = predictor.classes_, predictor.threshold_, not meta.multiclass
    groups = [r.patient for r in kept]
    metrics = screening_metrics(labels, proba, classes, threshold, binary, groups)
    per_source = []
    if binary:
        sources = [r.source for r in kept]
        photos = ScoredPhotos.build(
            sources, [r.class_name for r in kept], labels, groups, proba[:, 1], threshold, refused
        )
        per_source = per_source_figures(photos)
    report = EvaluationReport(description, metrics, skipped=skipped, per_source=per_source)
    if plots_dir is not None and len(kept):
        report.plots = plot_test_results(plots_dir, labels, proba, classes, threshold, binary)
    return report


def _label_in_bundle(record: ImageRecord, index: DatasetIndex, predictor: Predictor) -> int:
    if index.multiclass:
        return predictor.classes_.index(record.class_name)
    return record.label
