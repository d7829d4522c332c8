"""Pydantic models of the API's responses (they make the OpenAPI schema)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Band = Literal["low", "uncertain", "high"]


class ErrorDetail(BaseModel):
    """What went wrong: a stable code and a message saying what to do."""

    code: str = Field(examples=["not_an_image"])
    message: str


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


class Issue(BaseModel):
    """Why a photo cannot be assessed (``too_small``, ``too_blurry``, ``too_dark``,
    ``overexposed``, ``out_of_domain``)."""

    code: str
    message: str


class PredictionOut(BaseModel):
    """The model's output for one photo."""

    label: str = Field(description="The predicted class.")
    probability: float | None = Field(
        description="Calibrated probability of the positive class (mpox), 0-1; null when the "
        "model has no positive class."
    )
    probabilities: dict[str, float] = Field(description="Calibrated probability of each class.")
    band: Band | None = Field(
        description="low / uncertain / high, from the probability and the model's threshold."
    )
    no_lesion: bool = Field(
        default=False,
        description="The model's no-lesion head saw skin without a lesion (only ever with band "
        "low); the photo's status is then no_lesion.",
    )
    no_lesion_probability: float | None = Field(
        default=None, description="That head's probability; null when the model has none."
    )


class PhotoResult(BaseModel):
    """The result for one photo, in the order the photos were sent. File names and EXIF data
    are never echoed."""

    index: int = Field(description="0-based position of the photo in the request.")
    status: Literal["ok", "no_lesion", "retake", "error"] = Field(
        description="ok: assessed; no_lesion: assessed, but no skin lesion was seen (healthy "
        "skin; photograph the lesion itself); retake: the photo cannot be assessed (see "
        "issues); error: the file could not be read (see error; only in multi-photo requests)."
    )
    prediction: PredictionOut | None = None
    issues: list[Issue] = Field(default_factory=list)
    error: ErrorDetail | None = None
    heatmap_png: str | None = Field(
        default=None,
        description="With explain=true: base64 PNG of the photo with the Grad-CAM heat map "
        "overlaid (at most 512 pixels a side).",
    )


class CombinedResult(BaseModel):
    """One result for all the photos (of one person)."""

    status: Literal["ok", "no_lesion", "retake", "no_photo"] = Field(
        description="ok when a lesion could be assessed on at least one photo; no_lesion when "
        "photos were assessed but none showed a lesion; else retake; no_photo when the request "
        "had answers only."
    )
    method: Literal["max"] = Field(
        default="max",
        description="The highest mpox probability among the photos that could be assessed; "
        "the band is that of the same photo.",
    )
    probability: float | None = None
    band: Band | None = None
    label: str | None = None
    index: int | None = Field(default=None, description="The photo that gave the probability.")
    photos: int = Field(description="Photos sent.")
    assessed: int = Field(description="Photos that could be assessed (ok or no_lesion).")


class TrainingSource(BaseModel):
    """One data source of the training data, as ``model.json`` records it."""

    name: str
    origin: str | None = None
    provenance: str | None = None
    photos: int
    groups: int
    mpox_photos: int = Field(description="Photos of classes labelled mpox.")
    classes: list[str] = Field(description="Class folders of the source.")
    fingerprint: str | None = Field(default=None, description="SHA-256 of the source's photos.")


class ModelInfo(BaseModel):
    """The model card of the bundle being served."""

    version: str = Field(description="First 12 hex digits of the weights' SHA-256.")
    architecture: str
    classes: list[str]
    positive_class: str | None
    threshold: float | None
    temperature: float | None = None
    image_size: int | None = None
    backend: str
    created: str | None = None
    mpoxscan_version: str | None = None
    data_fingerprint: str | None = None
    metrics: dict = Field(default_factory=dict, description="The bundle's test and CV metrics.")
    training_sources: list[TrainingSource] = Field(
        default_factory=list, description="The data sources the model was trained on."
    )
    intended_use: str


class FiredRule(BaseModel):
    """A questionnaire rule that fired (``rules.json`` of ``mpoxscan.questionnaire``)."""

    id: str
    category: str | None
    recommendation: str
    sources: list[str] = Field(description="Ids of the guidance documents the rule cites.")


class QuestionnaireResult(BaseModel):
    """The advice from the answers and the photo band; see docs/questionnaire.md."""

    category: str | None = Field(
        description="suspected_case, unexplained_signs or contact (the guidance's categories "
        "the answers match), or null for none."
    )
    recommendation: str = Field(
        description="get_tested (at a sexual-health clinic or a doctor), see_doctor (soon) or "
        "watch (and check again): the most urgent recommendation of the fired rules."
    )
    rules: list[FiredRule] = Field(description="The rules that fired, in rule-file order.")
    version: str = Field(description="The rule set's version.")


class PredictResponse(BaseModel):
    """Results of ``POST /api/v1/predict``."""

    model: ModelInfo
    results: list[PhotoResult]
    combined: CombinedResult
    questionnaire: QuestionnaireResult | None = Field(
        default=None, description="The advice, when the request had answers."
    )


class Health(BaseModel):
    """Liveness and readiness."""

    status: Literal["ok", "unavailable"]
    model_loaded: bool
    version: str = Field(description="The mpoxscan package version.")
    model_version: str | None = None
    backend: str | None = None
