"""Turning uploaded photos into API results; plain functions, run in a worker thread.

Nothing here touches the disk or logs photo content: bytes are decoded in memory, the decoded
images are only passed to the predictor, and heat maps are encoded to in-memory PNGs.
"""

from __future__ import annotations

import base64
import io
import logging
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from mpoxscan.data.images import ImageLimits, decode_cost
from mpoxscan.data.photos import read_photo
from mpoxscan.errors import InvalidImageError
from mpoxscan.inference.explain import DISPLAY_MAX_SIDE, display_copy, heatmap_png_bytes
from mpoxscan.inference.predictor import Assessment, Predictor
from mpoxscan.web.api_errors import ApiError
from mpoxscan.web.budgets import DecodeBudget
from mpoxscan.web.schemas import (
    CombinedResult,
    ErrorDetail,
    Issue,
    ModelInfo,
    PhotoResult,
    PredictionOut,
    PredictResponse,
    TrainingSource,
)
from mpoxscan.web.uploads import Upload

logger = logging.getLogger(__name__)

DEFAULT_INTENDED_USE = (
    "Research and education: a screening aid that estimates how much a photo of a skin lesion "
    "resembles the mpox photos the model was trained on. It is not a diagnosis and must not "
    "replace a clinician or a PCR test."
)


@dataclass
class Analysis:
    """The API response plus, for the server-rendered page, each photo as a data URI."""

    response: PredictResponse
    photos: list[str | None]


def model_info(predictor: Predictor) -> ModelInfo:
    """The served bundle's model card, from ``predictor.meta_``."""
    meta = predictor.meta_
    weights_hash = meta.files.get("model.safetensors") or next(iter(meta.files.values()), "")
    return ModelInfo(
        version=str(weights_hash)[:12] or "unknown",
        architecture=meta.architecture.name,
        classes=list(predictor.classes_),
        positive_class=predictor.positive_class_,
        threshold=_float_or_none(predictor.threshold_),
        temperature=_float_or_none(meta.temperature),
        image_size=meta.preprocessing.image_size,
        backend=predictor.backend_,
        created=meta.created,
        mpoxscan_version=meta.mpoxscan_version,
        data_fingerprint=meta.data_fingerprint,
        metrics=dict(meta.metrics),
        training_sources=training_sources(meta),
        intended_use=str(meta.get("intended_use") or DEFAULT_INTENDED_USE),
    )


def training_sources(meta: Mapping[str, Any]) -> list[TrainingSource]:
    """The sources ``model.json`` says the model was trained on (``data.sources``)."""
    found = []
    for source in (meta.get("data") or {}).get("sources") or []:
        classes = source.get("classes") or {}
        found.append(
            TrainingSource(
                name=str(source.get("name")),
                origin=source.get("origin"),
                provenance=source.get("provenance"),
                photos=int(source.get("photos", 0)),
                groups=int(source.get("groups", 0)),
                mpox_photos=sum(
                    int(c.get("photos", 0)) for c in classes.values() if c.get("label") == "mpox"
                ),
                classes=sorted(classes),
                fingerprint=source.get("fingerprint"),
            )
        )
    return found


def warm_up(predictor: Predictor) -> None:
    """Run one photo through the checks, the model and Grad-CAM, so lazy loading and first-call
    set-up happen at startup rather than in the first user's request."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(90, 230, (DISPLAY_MAX_SIDE, DISPLAY_MAX_SIDE, 3), dtype=np.uint8)
    photo = Image.fromarray(pixels, "RGB")
    predictor.assess_many([photo])
    heatmap_png_bytes(photo, predictor.explain(photo))


def analyse_uploads(
    predictor: Predictor,
    uploads: Sequence[Upload],
    *,
    limits: ImageLimits,
    explain: bool,
    with_photos: bool = False,
    assess: Callable[[Sequence[Image.Image]], list[Assessment]] | None = None,
    decode_budget: DecodeBudget | None = None,
) -> Analysis:
    """Decode, check and predict every photo of one request.

    Args:
        predictor: the loaded model.
        uploads: the request's photos, in order (at least one).
        limits: decoding limits (bytes, pixels).
        explain: add a Grad-CAM overlay PNG to each assessed photo.
        with_photos: also return each photo as a small JPEG data URI (no EXIF).
        assess: runs the decoded photos through the checks and the model;
            ``predictor.assess_many`` when ``None`` (the server passes its micro-batcher's).
        decode_budget: each photo waits for room in it (its ``decode_cost`` plus its file)
            while it is decoded; none when ``None``.

    Returns:
        The results, one per upload, and the combined result.

    Raises:
        ApiError: when the request has a single photo and it cannot be decoded; with several
            photos, a bad file becomes an ``error`` entry and the others are still predicted.
    """
    size = predictor.image_size_
    decoded = [_decode(upload, limits, decode_budget, size) for upload in uploads]
    if len(decoded) == 1 and isinstance(decoded[0], ApiError):
        raise decoded[0]
    images = [item for item in decoded if isinstance(item, Image.Image)]
    assessments = iter((assess or predictor.assess_many)(images) if images else [])
    results: list[PhotoResult] = []
    photos: list[str | None] = []
    for index, item in enumerate(decoded):
        if isinstance(item, ApiError):
            results.append(
                PhotoResult(
                    index=index,
                    status="error",
                    error=ErrorDetail(code=item.code, message=item.message),
                )
            )
            photos.append(None)
            continue
        result = _photo_result(index, next(assessments))
        wants_heatmap = explain and result.status == "ok"
        # The small copy costs a resize; only heat maps and the result page use it.
        display = display_copy(item) if wants_heatmap or with_photos else None
        if wants_heatmap:
            png = heatmap_png_bytes(display, predictor.explain(display))
            result.heatmap_png = base64.b64encode(png).decode("ascii")
        results.append(result)
        photos.append(_jpeg_data_uri(display) if with_photos else None)
    response = PredictResponse(
        model=model_info(predictor),
        results=results,
        combined=combine_results(results),
    )
    return Analysis(response=response, photos=photos)


def combine_results(results: Sequence[PhotoResult]) -> CombinedResult:
    """Combine photos of one person: the highest mpox probability among the assessed photos.

    Taking the maximum is the cautious choice for a screen: one worrying lesion is enough to
    advise seeing a clinician, whatever the other photos show.
    """
    assessed = [r for r in results if r.status in _ASSESSED and r.prediction is not None]
    lesions = [r for r in assessed if r.status == "ok"]
    # Photos without a lesion count only when no photo showed one.
    scored = [r for r in lesions or assessed if r.prediction.probability is not None]
    status = "ok" if lesions else "no_lesion" if assessed else "retake"
    combined = CombinedResult(status=status, photos=len(results), assessed=len(assessed))
    if scored:
        top = max(scored, key=lambda r: r.prediction.probability)
        combined.probability = top.prediction.probability
        combined.label = top.prediction.label
        combined.index = top.index
        combined.band = top.prediction.band
    return combined


_ASSESSED = ("ok", "no_lesion")


def _decode(
    upload: Upload, limits: ImageLimits, budget: DecodeBudget | None, input_size: int
) -> Image.Image | ApiError:
    if upload.too_large:
        return ApiError(
            "file_too_large",
            f"A photo is {upload.size / 1024 / 1024:.1f} MiB, above the "
            f"{limits.max_bytes / 1024 / 1024:.0f} MiB limit; send a smaller JPEG of it.",
        )
    try:
        data = bytes(upload.data)  # no copy: the upload is bytes already
        # Read as every other path reads it (read_photo: reduced to a few times the model's
        # input, which replaces limits.max_side), so the page's answer is the CLI's.
        if budget is None:
            return read_photo(data, input_size, limits)
        # The copy of the file is held while decoding too; the cost comes from the header
        # (counted at max_side, more than read_photo's smaller reduced size needs).
        with budget.reserve(decode_cost(data, limits) + len(data)):
            return read_photo(data, input_size, limits)
    except InvalidImageError as exc:
        return ApiError.from_invalid_image(exc)
    except (OSError, ValueError, RuntimeError, struct.error, IndexError, TypeError) as exc:
        # A decoder error decode_image does not know yet: this photo gets an error entry and
        # the request's other photos are still predicted. The kind is logged, never the bytes.
        logger.warning("a photo could not be decoded (%s)", type(exc).__name__)
        return ApiError(
            "not_an_image",
            "A photo could not be decoded; export it again as a JPEG or PNG and retry.",
        )


def _photo_result(index: int, assessment: Assessment) -> PhotoResult:
    issues = [Issue(code=r.code, message=r.message) for r in assessment.reasons]
    if not assessment.ok or assessment.prediction is None:
        return PhotoResult(index=index, status="retake", issues=issues)
    pred = assessment.prediction
    return PhotoResult(
        index=index,
        status="no_lesion" if pred.no_lesion else "ok",
        issues=issues,
        prediction=PredictionOut(
            label=pred.label,
            probability=_float_or_none(pred.probability),
            probabilities={k: float(v) for k, v in pred.probabilities.items()},
            band=pred.band,
            no_lesion=pred.no_lesion,
            no_lesion_probability=_float_or_none(pred.no_lesion_probability),
        ),
    )


def _jpeg_data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    # Saved from pixels only: no EXIF (location, camera, time) leaves the server.
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _float_or_none(value: object) -> float | None:
    return None if value is None else float(value)
