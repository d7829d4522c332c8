"""The JSON API: ``POST /api/v1/predict``, ``GET /api/v1/health``, ``GET /api/v1/model``."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial

import anyio.to_thread
from fastapi import APIRouter, Query, Request

from mpoxscan._version import __version__
from mpoxscan.data.images import ImageLimits
from mpoxscan.inference.predictor import Predictor
from mpoxscan.questionnaire import answers_json_schema, default_rules
from mpoxscan.web.api_errors import ApiError
from mpoxscan.web.budgets import WORKING_MAX_SIDE
from mpoxscan.web.deps import PredictorDep, RateLimitDep, SettingsDep, UploadSlotDep
from mpoxscan.web.observability import request_id
from mpoxscan.web.prediction_log import audit_records
from mpoxscan.web.prediction_threads import run_prediction
from mpoxscan.web.questionnaire_answers import (
    ANSWERS_FIELD,
    add_advice,
    answers_only,
    has_answers,
    read_answers,
)
from mpoxscan.web.schemas import ErrorResponse, Health, ModelInfo, PredictResponse
from mpoxscan.web.service import Analysis, analyse_uploads
from mpoxscan.web.settings import Settings
from mpoxscan.web.uploads import Upload, UploadForm, check_content_length, read_upload_form

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["predict"])

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "One part per photo of the same person (up to "
                            "MPOXSCAN_MAX_FILES, default 10; each up to "
                            "MPOXSCAN_MAX_UPLOAD_BYTES, default 10 MiB). JPEG, PNG, WebP, "
                            "BMP, TIFF or HEIC. Required unless answers are sent.",
                        },
                        ANSWERS_FIELD: {
                            **answers_json_schema(default_rules()),
                            "description": "Optional questionnaire answers: one text part "
                            "(no file name, at most 1 KiB) holding a JSON object of question "
                            "id -> answer; every question may be skipped. See "
                            "docs/questionnaire.md. Processed in memory, never logged or "
                            "stored.",
                        },
                    },
                },
                "encoding": {ANSWERS_FIELD: {"contentType": "application/json"}},
            }
        },
    }
}

_ERRORS = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "malformed_request",
        408: "upload_timeout",
        413: "file_too_large, request_too_large",
        415: "unsupported_media_type",
        422: "no_file, too_many_files, too_many_parts, empty_file, not_an_image, "
        "truncated_image, too_many_pixels, invalid_answers, validation_error",
        429: "rate_limited (with Retry-After)",
        500: "internal_error",
        503: "model_unavailable",
    }.items()
}


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=_ERRORS,
    openapi_extra=_UPLOAD_BODY,
    summary="Screen one or more photos of one person for mpox",
)
async def predict(
    request: Request,
    predictor: PredictorDep,
    settings: SettingsDep,
    _: RateLimitDep,
    __: UploadSlotDep,
    explain: bool = Query(
        False, description="Add a base64 PNG Grad-CAM overlay (heatmap_png) to each assessed photo."
    ),
) -> PredictResponse:
    """Screen photos sent as multipart ``file`` parts, with optional questionnaire ``answers``.

    Each photo gets a result: ``ok`` with the calibrated mpox probability and its band,
    ``no_lesion`` when the model saw skin without a lesion (its probability is still given),
    ``retake`` with the reasons it cannot be assessed, or, in a request with several photos,
    ``error`` when its file cannot be read (the other photos are still predicted). A request
    with a single photo that cannot be read gets the error itself (4xx). ``combined`` takes
    the highest probability among the assessed photos. File names and EXIF are never echoed.
    With answers, ``questionnaire`` gives the advice of the rules (docs/questionnaire.md), the
    photo band included; answers without a photo get the advice from the answers alone.
    """
    form = await read_photos(request, settings, answers_allowed=True)
    analysis = await analyse_form(request, predictor, settings, form, explain=explain)
    return analysis.response


@router.get("/health", response_model=Health, summary="Liveness and model readiness")
async def health(request: Request) -> Health:
    """``ok`` once the model is loaded."""
    predictor = getattr(request.app.state, "predictor", None)
    info: ModelInfo | None = getattr(request.app.state, "model_info", None)
    return Health(
        status="ok" if predictor is not None else "unavailable",
        model_loaded=predictor is not None,
        version=__version__,
        model_version=info.version if info else None,
        backend=info.backend if info else None,
    )


@router.get(
    "/model",
    response_model=ModelInfo,
    responses={503: {"model": ErrorResponse}},
    summary="The model card",
)
async def model_card(request: Request, _: PredictorDep) -> ModelInfo:
    """The served bundle: version, architecture, classes, threshold, metrics, intended use."""
    return request.app.state.model_info


async def read_photos(
    request: Request, settings: Settings, *, answers_allowed: bool = False
) -> UploadForm:
    """Read the request's photos into memory under the settings' limits.

    Raises:
        ApiError: ``no_file`` when no ``file`` part was sent (and, with ``answers_allowed``,
            no questionnaire answers either), or any ``read_upload_form`` error.
    """
    check_content_length(request.headers.get("content-length"), settings.max_request_bytes)
    form = await read_upload_form(
        request.headers.get("content-type"),
        request.stream(),
        max_files=settings.max_files,
        max_file_bytes=settings.max_upload_bytes,
        max_request_bytes=settings.max_request_bytes,
        max_parts=settings.max_parts,
        max_seconds=settings.max_upload_seconds,
    )
    if not form.files and not (answers_allowed and has_answers(form)):
        raise ApiError(
            "no_file", 'No photo was sent; add at least one multipart part named "file".'
        )
    return form


async def analyse_form(
    request: Request,
    predictor: Predictor,
    settings: Settings,
    form: UploadForm,
    *,
    explain: bool,
    with_photos: bool = False,
) -> Analysis:
    """Run the form's photos (if any) through the model and its answers (if any) through the
    questionnaire rules; answers are checked first, so bad ones cost no model time.

    Raises:
        ApiError: ``invalid_answers``, or a photo's error when the request has a single photo.
    """
    answers = read_answers(form)
    if not form.files:
        analysis = answers_only(predictor)
    else:
        analysis = await run_prediction(
            request.app,
            partial(
                analyse_uploads,
                predictor,
                form.files,
                limits=image_limits(settings),
                explain=explain,
                with_photos=with_photos,
                decode_budget=request.app.state.decode_budget,
            ),
        )
        await finish_analysis(request, form.files, analysis)
    add_advice(analysis.response, answers)
    return analysis


def image_limits(settings: Settings) -> ImageLimits:
    """The decoding limits from the settings."""
    return ImageLimits(
        max_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_pixels,
        max_decoded_bytes=settings.max_decoded_bytes,
        max_side=WORKING_MAX_SIDE,
    )


async def finish_analysis(request: Request, uploads: Sequence[Upload], analysis: Analysis) -> None:
    """Log the request's counts and, when the audit log is on, store its rows."""
    log_analysis(analysis)
    audit = getattr(request.app.state, "audit_log", None)
    if audit is None:
        return
    files = request.app.state.predictor.meta_.files
    served = "model.onnx" if analysis.response.model.backend == "onnx" else "model.safetensors"
    records = partial(
        audit_records,
        analysis.response,
        uploads,
        request_id=request_id(request),
        model_sha256=files.get(served) or files["model.safetensors"],
    )
    # Hashing ten 10 MiB photos and a database round trip stay off the event loop.
    await anyio.to_thread.run_sync(lambda: audit.record_or_log(records()))


def log_analysis(analysis: Analysis) -> None:
    """Log counts and statuses only: never bytes, names, EXIF or probabilities per person."""
    statuses = [r.status for r in analysis.response.results]
    logger.info(
        "predicted %d photo(s): %d ok, %d no lesion, %d retake, %d error",
        len(statuses),
        statuses.count("ok"),
        statuses.count("no_lesion"),
        statuses.count("retake"),
        statuses.count("error"),
    )
