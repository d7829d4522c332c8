"""HTML pages: home with the upload form, the no-JS result page, the model card, privacy."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from mpoxscan._version import __version__
from mpoxscan.inference.predictor import UNCERTAIN_FRACTION
from mpoxscan.questionnaire import default_rules
from mpoxscan.web.api_errors import ApiError
from mpoxscan.web.deps import (
    PredictorDep,
    RateLimitDep,
    SettingsDep,
    UploadSlotDep,
    get_language,
)
from mpoxscan.web.i18n import LANG_COOKIE, LANGUAGE_NAMES, LANGUAGES, normalise_language, translate
from mpoxscan.web.routes.api import analyse_form, read_photos

router = APIRouter(include_in_schema=False)

_ONE_YEAR_S = 365 * 24 * 3600
#: Pages whose language-switch links point back at themselves; any other path (a 404, a
#: form post) links home, so a path like ``//elsewhere.example`` never becomes a link.
_PAGES = frozenset({"/", "/model", "/privacy", "/guidance"})

#: The measures the model card shows, in this order (others in ``metrics`` are not shown).
METRIC_ORDER: tuple[str, ...] = (
    "sensitivity",
    "specificity",
    "roc_auc",
    "pr_auc",
    "accuracy",
    "balanced_accuracy",
    "ppv",
    "npv",
    "f1",
    "ece",
    "brier",
)
_COUNT_KEYS = ("n_images", "n_patients", "n_positive", "n_negative", "n_folds", "repeats")


@router.get("/", response_class=HTMLResponse)
async def home(request: Request) -> Response:
    """The home page: what the tool is and is not, and the upload form."""
    return render(request, "index.html")


@router.post("/result", response_class=HTMLResponse)
async def result_page(
    request: Request,
    predictor: PredictorDep,
    settings: SettingsDep,
    _: RateLimitDep,
    __: UploadSlotDep,
) -> Response:
    """The result without JavaScript: the form posts here and gets a rendered page."""
    form = await read_photos(request, settings, answers_allowed=True)
    explain = form.fields.get("explain") == "on"
    analysis = await analyse_form(
        request, predictor, settings, form, explain=explain, with_photos=True
    )
    return render(request, "result.html", result=analysis.response, photos=analysis.photos)


@router.get("/result")
async def result_redirect() -> RedirectResponse:
    """A reload of the result page goes back to the form (results are never kept)."""
    return RedirectResponse("/", status_code=303)


@router.get("/model", response_class=HTMLResponse)
async def model_page(request: Request, _: PredictorDep) -> Response:
    """The model card: training data, metrics with intervals, threshold, limits, use."""
    info = request.app.state.model_info
    bands = None
    if info.threshold is not None and info.positive_class is not None:
        bands = {
            "high": percent(info.threshold),
            "uncertain": percent(info.threshold * UNCERTAIN_FRACTION),
        }
    return render(request, "model.html", sections=metric_sections(info.metrics), bands=bands)


@router.get("/privacy", response_class=HTMLResponse)
async def privacy_page(request: Request) -> Response:
    """How photos are handled."""
    return render(request, "privacy.html")


@router.get("/guidance", response_class=HTMLResponse)
async def guidance_page(request: Request) -> Response:
    """How the questions become advice: the rule file's sources and rules."""
    return render(request, "guidance.html")


@router.get("/i18n/{lang}.json")
async def catalogue(request: Request, lang: str) -> JSONResponse:
    """The translation catalogue the page's JavaScript uses."""
    code = normalise_language(lang)
    if code is None or code != lang:
        raise ApiError("not_found", f"No catalogue for {lang!r}; use one of {list(LANGUAGES)}.")
    return JSONResponse(request.app.state.catalogues[code])


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    """Render a page in the visitor's language; ``?lang=`` also sets the language cookie."""
    lang = get_language(request)
    settings = request.app.state.settings
    catalogue = request.app.state.catalogues[lang]
    page = {
        "request": request,
        "lang": lang,
        "t": partial(translate, catalogue),
        "has_text": catalogue.__contains__,
        "languages": [(code, LANGUAGE_NAMES[code]) for code in LANGUAGES],
        "path": _page_path(request),
        "model": request.app.state.model_info,
        "app_version": __version__,
        "max_files": settings.max_files,
        "max_mb": _mib(settings.max_upload_bytes),
        "max_upload_bytes": settings.max_upload_bytes,
        "percent": percent,
        "questionnaire": default_rules(),
        **context,
    }
    response = request.app.state.templates.TemplateResponse(
        request, template, page, status_code=status_code
    )
    response.headers["Vary"] = "Accept-Language, Cookie"
    chosen = normalise_language(request.query_params.get("lang"))
    if chosen is not None:
        response.set_cookie(LANG_COOKIE, chosen, max_age=_ONE_YEAR_S, httponly=True, samesite="lax")
    return response


def _page_path(request: Request) -> str:
    path = request.url.path
    return path if request.method == "GET" and path in _PAGES else "/"


def render_error(request: Request, error: ApiError) -> Response:
    """An error as an HTML page, in the visitor's language."""
    response = render(request, "error.html", status_code=error.status_code, error=error)
    response.headers.update(error.headers)
    return response


def percent(probability: float | None) -> str:
    """A probability as a whole percentage; ``<1%`` and ``>99%`` rather than 0% and 100%.

    A screen never gives certainty, so the ends are never shown as 0 or 100.
    """
    if probability is None or math.isnan(probability):
        return "–"
    value = probability * 100
    if value < 1:
        return "<1%"
    if value > 99:
        return ">99%"
    return f"{round(value)}%"


def metric_sections(metrics: dict) -> list[dict[str, Any]]:
    """The bundle's metrics as tables: one per section (``test``, ``cv``, and nested ones such
    as ``test.patient_level``), each with the known measures in a fixed order.

    A measure is ``value`` plus ``value_ci`` ``[low, high]``, or ``{"mean", "std", "ci"}``.
    Counts (``n_images``, ``n_patients``) are kept for the caption; bookkeeping entries
    (confusion counts, bootstrap settings) are left out.

    Returns:
        ``[{"key": "test", "rows": [{name, value, ci, std}], "counts": {...}}]``.
    """
    sections: list[dict[str, Any]] = []
    for key, values in metrics.items():
        if isinstance(values, dict):
            _collect_sections(key, values, sections)
    return sections


def _collect_sections(key: str, values: dict, sections: list[dict[str, Any]]) -> None:
    rows = [
        row
        for name in METRIC_ORDER
        if name in values
        and (row := _metric_row(name, values[name], values.get(f"{name}_ci"))) is not None
    ]
    if rows:
        counts = {name: values[name] for name in _COUNT_KEYS if _finite(values.get(name))}
        sections.append({"key": key, "rows": rows, "counts": counts})
    for name, nested in values.items():
        if isinstance(nested, dict):
            _collect_sections(f"{key}.{name}", nested, sections)


def _metric_row(name: str, value: Any, ci: Any) -> dict[str, Any] | None:
    std = None
    if isinstance(value, dict):
        ci = value.get("ci", ci)
        std = value.get("std")
        value = value.get("mean")
    if not _finite(value):
        return None
    if isinstance(ci, dict):
        ci = (ci.get("low"), ci.get("high"))
    interval = None
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(_finite(v) for v in ci):
        interval = f"{_format_number(float(ci[0]))}–{_format_number(float(ci[1]))}"
    return {
        "name": name,
        "value": _format_number(value),
        "ci": interval,
        "std": _format_number(std) if _finite(std) else None,
    }


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _format_number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    return "–" if not math.isfinite(value) else f"{value:.3f}"


def _mib(n_bytes: int) -> int:
    return max(1, round(n_bytes / 1024 / 1024))
