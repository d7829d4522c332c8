"""Record a cross-validation of a bundle's recipe in the bundle's ``model.json``.

A bundle is trained once, on one patient-grouped split, so its own test figures rest on a few
dozen patients. ``mpoxscan cv`` with the same recipe on the same photos says what the recipe
gets across every patient. :func:`attach_cv` copies that summary into ``model.json``
(``metrics["cv"]`` for the model card and the API, ``cross_validation`` for provenance), after
checking that the cross-validation really is of this bundle's recipe and data.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mpoxscan.errors import MpoxscanError
from mpoxscan.evaluation.metrics import SUMMARY_METRICS
from mpoxscan.hashing import file_sha256
from mpoxscan.inference.bundle import BundleMeta, read_bundle_meta, update_bundle_files

#: Settings that may differ between the cross-validation and the bundle: the seed (each fold
#: has its own anyway), where embeddings are cached, and how the single split was cut.
IGNORED_SETTINGS = frozenset(
    {
        "train.seed",
        "train.features.cache_dir",
        "data.data_dir",
        "data.more_data",
        "data.val_fraction",
        "data.test_fraction",
        "folds",
        "repeats",
    }
)


class CrossValidationMismatch(MpoxscanError, ValueError):
    """The cross-validation is not of this bundle's recipe or data."""


def recipe_mismatches(meta: BundleMeta, summary: Mapping[str, Any]) -> list[str]:
    """What differs between a bundle and a cross-validation, as readable lines.

    Args:
        meta: the bundle's metadata.
        summary: the cross-validation's ``summary.json``.

    Returns:
        One line per difference (empty when the cross-validation describes this bundle).
    """
    problems = [
        f"{key}: bundle {flat_meta!r}, cross-validation {flat_summary!r}"
        for key, flat_meta, flat_summary in _differences(
            _flatten(meta.config), _flatten(summary.get("config") or {})
        )
        if key not in IGNORED_SETTINGS
    ]
    ours = {"classes": list(meta.classes), "positive_class": meta.positive_class}
    for key, value in ours.items():
        if value != summary.get(key):
            problems.append(f"{key}: bundle {value!r}, cross-validation {summary.get(key)!r}")
    fingerprint = (summary.get("data") or {}).get("fingerprint")
    if fingerprint is None:
        problems.append("the cross-validation has no data fingerprint: run mpoxscan cv again")
    elif fingerprint != meta.data_fingerprint:
        problems.append("the photos differ (the data fingerprints do not match)")
    return problems


def card_metrics(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The model card's view of a cross-validation summary.

    Each measure is the mean ± SD over folds (and repeats) at p = 0.5, with the 95% interval
    of the pooled out-of-fold predictions of the first repeat (every photo scored once);
    ``patient_level`` scores each patient by their highest probability, and ``screening`` gives
    the fold means at each fold's screening threshold (chosen on its validation patients).
    """
    pooled = summary["pooled"]
    config = summary.get("config") or {}
    card: dict[str, Any] = {
        "n_images": summary["data"]["n_images"],
        "n_patients": summary["data"]["n_patients"],
        "n_folds": config.get("folds"),
        "repeats": config.get("repeats"),
        "threshold": pooled.get("threshold"),
    }
    for name in SUMMARY_METRICS:
        stats = summary["mean_std"].get(name)
        if stats is not None:
            card[name] = {
                "mean": stats["mean"],
                "std": stats["std"],
                "ci": pooled.get(f"{name}_ci"),
            }
    patients = pooled.get("patient_level") or {}
    card["patient_level"] = {"n_patients": patients.get("n_patients")} | {
        key: patients[key]
        for name in SUMMARY_METRICS
        for key in (name, f"{name}_ci")
        if key in patients
    }
    card["screening"] = {
        name: {"mean": stats["mean"], "std": stats["std"]}
        for name, stats in (summary.get("screening_mean_std") or {}).items()
        if name in SUMMARY_METRICS
    }
    return card


def attach_cv(bundle_dir: str | Path, cv_dir: str | Path) -> BundleMeta:
    """Write a cross-validation of the bundle's recipe into its ``model.json``.

    Args:
        bundle_dir: the bundle folder.
        cv_dir: the ``--out`` folder of ``mpoxscan cv`` (with ``summary.json``).

    Returns:
        The bundle's new metadata.

    Raises:
        CrossValidationMismatch: the cross-validation used another recipe, other classes or
            other photos.
        MpoxscanError: ``summary.json`` is missing or unreadable.
    """
    summary_path = Path(cv_dir) / "summary.json"
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError) as err:
        raise MpoxscanError(f"Cannot read {summary_path}: {err}") from err
    meta = read_bundle_meta(bundle_dir)
    problems = recipe_mismatches(meta, summary)
    if problems:
        raise CrossValidationMismatch(
            f"{summary_path} is not a cross-validation of {bundle_dir}:\n  " + "\n  ".join(problems)
        )
    config = summary.get("config") or {}
    provenance = {
        "command": summary.get("command"),
        "versions": summary.get("versions"),
        "folds": config.get("folds"),
        "repeats": config.get("repeats"),
        "seed": (config.get("train") or {}).get("seed"),
        "summary_sha256": file_sha256(summary_path),
    }
    others = {key: value for key, value in meta.metrics.items() if key != "cv"}
    return update_bundle_files(
        bundle_dir,
        meta_updates={
            "metrics": {"cv": card_metrics(summary)} | others,
            "cross_validation": provenance,
        },
        meta=meta,
    )


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat |= _flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat


def _differences(left: Mapping[str, Any], right: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    return [
        (key, left.get(key), right.get(key))
        for key in sorted(left.keys() | right.keys())
        if _comparable(left.get(key)) != _comparable(right.get(key))
    ]


def _comparable(value: Any) -> Any:
    # JSON turns tuples into lists; a recipe read back from model.json must still match.
    return tuple(value) if isinstance(value, list) else value
