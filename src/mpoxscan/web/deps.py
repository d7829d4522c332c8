"""FastAPI dependencies: the settings, the loaded predictor, the rate limit, the language."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request

from mpoxscan.inference.predictor import Predictor
from mpoxscan.web.api_errors import ApiError
from mpoxscan.web.i18n import LANG_COOKIE, choose_language
from mpoxscan.web.settings import Settings

#: The longest text form of an IP address (IPv6 with an IPv4 tail and a zone is shorter).
_MAX_ADDRESS_CHARS = 64


# The dependencies are ``async def`` although they do no I/O: FastAPI runs a plain ``def``
# dependency in a worker thread, so each request took two thread hops, and under a burst of
# uploads the event loop waited for new threads to start (``Thread.start``).


async def get_settings(request: Request) -> Settings:
    """The app's settings (set by ``create_app``)."""
    return request.app.state.settings


async def get_predictor(request: Request) -> Predictor:
    """The predictor loaded at startup.

    Raises:
        ApiError: ``model_unavailable`` when no model is loaded.
    """
    predictor = getattr(request.app.state, "predictor", None)
    if predictor is None:
        raise ApiError("model_unavailable", "The model is not loaded yet; retry in a minute.")
    return predictor


def client_key(request: Request) -> str:
    """The client's address as a rate-limit key (``client_key_of``).

    Behind a reverse proxy, ``mpoxscan serve --forwarded-allow-ips`` makes uvicorn put the
    address the proxy saw here; from any other peer ``X-Forwarded-For`` is ignored.
    """
    return client_key_of(request.client.host if request.client else None)


def client_key_of(host: str | None) -> str:
    """A bounded key for a client address: the IPv4 address, or the /64 network of an IPv6
    address (one subscriber usually holds a whole /64); ``"unknown"`` for anything that is
    not an IP address (so no client can make up keys of its own)."""
    if not host or len(host) > _MAX_ADDRESS_CHARS:
        return "unknown"
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


async def upload_slot(request: Request) -> AsyncIterator[None]:
    """Hold the request's place in the app's ``UploadGate`` until the request is answered.

    Raises:
        ApiError: ``too_many_uploads`` (429) or ``server_busy`` (503), with ``Retry-After``,
            before any of the body is read.
    """
    settings: Settings = request.app.state.settings
    declared = request.headers.get("content-length")
    size = int(declared) if declared and declared.isdigit() else settings.max_request_bytes
    size = min(size, settings.max_request_bytes)
    with request.app.state.upload_gate.admit(client_key(request), size):
        yield


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
UploadSlotDep = Annotated[None, Depends(upload_slot)]
