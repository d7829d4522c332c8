"""FastAPI dependencies: the settings, the loaded predictor, the rate limit, the language."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from mpoxscan.inference.predictor import Predictor
from mpoxscan.web.api_errors import ApiError
from mpoxscan.web.i18n import LANG_COOKIE, choose_language
from mpoxscan.web.settings import Settings


def get_settings(request: Request) -> Settings:
    """The app's settings (set by ``create_app``)."""
    return request.app.state.settings


def get_predictor(request: Request) -> Predictor:
    """The predictor loaded at startup.

    Raises:
        ApiError: ``model_unavailable`` when no model is loaded.
    """
    predictor = getattr(request.app.state, "predictor", None)
    if predictor is None:
        raise ApiError("model_unavailable", "The model is not loaded yet; retry in a minute.")
    return predictor


def client_key(request: Request) -> str:
    """The client's IP address (behind a proxy, run uvicorn with ``--proxy-headers``)."""
    return request.client.host if request.client else "unknown"


async def enforce_rate_limit(request: Request) -> None:
    """Count a prediction request against the client's per-minute limit.

    Raises:
        ApiError: ``rate_limited`` (429) with ``Retry-After``.
    """
    retry_after = request.app.state.rate_limiter.hit(client_key(request))
    if retry_after is not None:
        raise ApiError(
            "rate_limited",
            f"Too many requests from your address; wait {retry_after} seconds and try again.",
            headers={"Retry-After": str(retry_after)},
        )


def get_language(request: Request) -> str:
    """The page language: ``?lang=``, then the language cookie, then ``Accept-Language``."""
    return choose_language(
        request.query_params.get("lang"),
        request.cookies.get(LANG_COOKIE),
        request.headers.get("accept-language"),
    )


SettingsDep = Annotated[Settings, Depends(get_settings)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]
LanguageDep = Annotated[str, Depends(get_language)]
RateLimitDep = Annotated[None, Depends(enforce_rate_limit)]
