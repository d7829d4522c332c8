"""Figures per data source and class: how often each kind of photo is called mpox, or refused.

A screen meets whatever people photograph, so one pooled number hides what matters: healthy
skin called mpox, one kind of bite that always trips it, mpox photos from one source missed.
For every source and class (and every source as a whole) :func:`per_source_figures` gives the
photos and photo groups behind it, the share *called mpox* (assessed, and probability at or
above the screening threshold; also at 0.5), the share *refused* ("retake": a failed photo
check or out of domain) and, for mpox rows, the sensitivity (the share called mpox: a refused
mpox photo is a miss). Every share carries a 95% Wilson interval over photos.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from mpoxscan.evaluation.metrics import wilson_interval

#: The row of a whole source carries this in place of a class name.
ALL_CLASSES = "(all)"
#: The shares each row carries (each with ``<name>_ci`` and ``<name>_n`` = ``[k, n]``).
SHARES = ("called", "called_at_0_5", "refused")


@dataclass(frozen=True)
class ScoredPhotos:
    """Photos with their source, class, label, group, probability, threshold and refusal.

    Attributes:
        source: data source of each photo.
        class_name: class folder of each photo.
        label: 1 for mpox, 0 otherwise.
        group: photo group (patient) id.
        probability: mpox probability (computed even for refused photos).
        threshold: the screening threshold each photo was judged at (a fold's own threshold in
            cross-validation).
        refused: whether the photo was refused ("retake") instead of assessed.
    """

    source: np.ndarray
    class_name: np.ndarray
    label: np.ndarray
    group: np.ndarray
    probability: np.ndarray
    threshold: np.ndarray
    refused: np.ndarray

    @classmethod
    def build(
        cls,
        source: Sequence[Any],
        class_name: Sequence[str],
        label: ArrayLike,
        group: Sequence[str],
        probability: ArrayLike,
        threshold: float | ArrayLike,
        refused: ArrayLike | None = None,
    ) -> ScoredPhotos:
        """Arrays from sequences; one ``threshold`` for all photos or one per photo, and
        ``refused`` all ``False`` when not given."""
        n = len(class_name)
        refused_array = np.zeros(n, bool) if refused is None else np.asarray(refused, bool)
        photos = cls(
            source=np.array([str(s) for s in source], dtype=object),
            class_name=np.array(class_name, dtype=object),
            label=np.asarray(label, dtype=int),
            group=np.array(group, dtype=object),
            probability=np.asarray(probability, dtype=float),
            threshold=np.broadcast_to(np.asarray(threshold, dtype=float), (n,)),
            refused=refused_array,
        )
        lengths = {len(getattr(photos, name)) for name in cls.__dataclass_fields__}
        if lengths != {n}:
            raise ValueError(f"every column needs one entry per photo ({n}), got {lengths}")
        return photos


def per_source_figures(photos: ScoredPhotos) -> list[dict[str, Any]]:
    """One row per source and class, then one per source (class ``"(all)"``).

    Args:
        photos: the scored photos.

    Returns:
        Rows in order of first appearance of each source (classes sorted), each with
        ``source``, ``class``, ``label`` (``"mpox"``, ``"negative"`` or ``"mixed"``),
        ``photos``, ``groups``, and for each of ``called``, ``called_at_0_5``, ``refused`` the
        share, ``<name>_ci`` (95% Wilson) and ``<name>_n`` ``[k, n]``; mpox-only rows also
        carry ``sensitivity`` with its ``_ci`` and ``_n`` (the ``called`` share).
    """
    assessed = ~photos.refused
    called = {
        "called": assessed & (photos.probability >= photos.threshold),
        "called_at_0_5": assessed & (photos.probability >= 0.5),
        "refused": photos.refused,
    }
    rows = []
    for source in dict.fromkeys(photos.source.tolist()):
        in_source = photos.source == source
        classes = sorted(set(photos.class_name[in_source].tolist()))
        selections = [(name, in_source & (photos.class_name == name)) for name in classes]
        if len(classes) > 1:
            selections.append((ALL_CLASSES, in_source))
        for class_name, rows_mask in selections:
            rows.append(_row(source, class_name, photos, rows_mask, called))
    return rows


def _row(
    source: str,
    class_name: str,
    photos: ScoredPhotos,
    mask: np.ndarray,
    called: dict[str, np.ndarray],
) -> dict[str, Any]:
    labels = set(photos.label[mask].tolist())
    label = "mixed" if len(labels) > 1 else ("mpox" if labels == {1} else "negative")
    n = int(mask.sum())
    row: dict[str, Any] = {
        "source": source,
        "class": class_name,
        "label": label,
        "photos": n,
        "groups": len(set(photos.group[mask].tolist())),
    }
    for name in SHARES:
        k = int(called[name][mask].sum())
        row |= _share(name, k, n)
    if label == "mpox":
        row |= _share("sensitivity", row["called_n"][0], n)
    return row


def _share(name: str, k: int, n: int) -> dict[str, Any]:
    return {
        name: k / n if n else float("nan"),
        f"{name}_ci": list(wilson_interval(k, n)),
        f"{name}_n": [k, n],
    }


#: Column headings of :func:`per_source_cells`, in order.
COLUMNS = (
    "Source",
    "Class",
    "Photos",
    "Groups",
    "Called mpox",
    "Called at 0.5",
    "Refused",
    "Sensitivity",
)


def format_share(row: dict[str, Any], name: str, digits: int = 1) -> str:
    """A share as ``"33.5% (29.9–37.3)"`` (95% Wilson interval, ``digits`` decimals);
    ``""`` when absent."""
    value, ci = row.get(name), row.get(f"{name}_ci") or [None, None]
    if value is None or not np.isfinite(value):
        return ""
    if any(v is None or not np.isfinite(v) for v in ci):
        return f"{100 * value:.{digits}f}%"
    return f"{100 * value:.{digits}f}% ({100 * ci[0]:.{digits}f}–{100 * ci[1]:.{digits}f})"


def per_source_cells(rows: Sequence[dict[str, Any]], digits: int = 1) -> list[list[str]]:
    """The rows of :func:`per_source_figures` as text cells under :data:`COLUMNS`."""
    return [
        [
            str(row["source"]),
            str(row["class"]),
            str(row["photos"]),
            str(row["groups"]),
            *(format_share(row, name, digits) for name in (*SHARES, "sensitivity")),
        ]
        for row in rows
    ]


def per_source_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The per-source figures as a Markdown table (for ``benchmarks/*.md`` and the README)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells) + " |" for cells in per_source_cells(rows)]
    return "\n".join(lines) + "\n"
