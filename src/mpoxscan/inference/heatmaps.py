"""Grad-CAM overlays of photo files, as `mpoxscan explain` writes them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mpoxscan.data.photos import read_photo
from mpoxscan.errors import InvalidImageError
from mpoxscan.inference.explain import display_copy, heatmap_png_bytes
from mpoxscan.inference.predictor import Assessment, Predictor


@dataclass
class ExplainedPhoto:
    """One photo of :func:`write_heatmaps`.

    Attributes:
        path: the photo file.
        assessment: its check and prediction (``None`` when it could not be decoded).
        heatmap: the overlay PNG written for it (only for photos that could be assessed).
        error: why the file could not be decoded.
    """

    path: Path
    assessment: Assessment | None = None
    heatmap: Path | None = None
    error: str | None = None


def write_heatmaps(
    predictor: Predictor, paths: Iterable[Path], out_dir: Path
) -> Iterator[ExplainedPhoto]:
    """Check and predict each photo, and write a Grad-CAM overlay of the assessed ones.

    As on the web page, a photo that cannot be assessed (blurred, too dark, not skin…) gets
    its reasons and no heat map. Overlays are ``<out_dir>/<photo stem>.heatmap.png`` (``-2``,
    ``-3``… added when two photos share a name) at most ``DISPLAY_MAX_SIDE`` pixels a side,
    without any of the photo's metadata.

    Args:
        predictor: the loaded bundle.
        paths: photo files.
        out_dir: folder for the PNGs (created when needed).

    Yields:
        One :class:`ExplainedPhoto` per path, as each is done.
    """
    taken: set[str] = set()
    for path in paths:
        try:
            image = read_photo(path, predictor.image_size_)
        except (InvalidImageError, OSError) as error:
            yield ExplainedPhoto(path, error=str(error))
            continue
        assessment = predictor.assess(image)
        if not assessment.ok:
            yield ExplainedPhoto(path, assessment)
            continue
        small = display_copy(image)
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / _free_name(f"{path.stem}.heatmap", taken)
        target.write_bytes(heatmap_png_bytes(small, predictor.explain(small)))
        yield ExplainedPhoto(path, assessment, heatmap=target)


def _free_name(stem: str, taken: set[str]) -> str:
    name, number = f"{stem}.png", 1
    while name in taken:
        number += 1
        name = f"{stem}-{number}.png"
    taken.add(name)
    return name
