"""Pure ASGI middlewares that make every answer a designed answer.

- ``HeadAsGetMiddleware``: ``HEAD`` is answered wherever ``GET`` is (monitors use it).
- ``CatchAllMiddleware``: an exception no handler caught becomes the app's own error answer
  (JSON on the API, an HTML page elsewhere) *inside* the security-headers and request-id
  middlewares, so it carries their headers; a client that went away mid-request is logged once,
  at info level, without a traceback.
- ``HeaderCountMiddleware``: a request with more header fields than the limit gets 431.
- ``AllowedHostsMiddleware``: a request whose ``Host`` is not allowed gets the app's own
  ``400 invalid_host`` answer (Starlette's ``TrustedHostMiddleware`` answers plain text).
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Sequence

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mpoxscan.web.api_errors import ApiError
from mpoxscan.web.observability import CLIENT_DISCONNECTED

logger = logging.getLogger(__name__)


class HeadAsGetMiddleware:
    """Serve a ``HEAD`` request as the ``GET`` of the same path, without the body.

    The headers (``Content-Length`` and ``Content-Type`` included) are those of the ``GET``, as
    RFC 9110 asks; paths without ``GET`` answer ``HEAD`` with their usual 405.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_without_body)


class CatchAllMiddleware:
    """Turn an unexpected exception into ``error_response(request)``, logged once.

    Args:
        app: the ASGI app.
        error_response: builds the 500 answer for a request (the route's media type).
    """

    def __init__(self, app: ASGIApp, error_response: Callable[[Request], Response]):
        self.app = app
        self.error_response = error_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ClientDisconnect:
            # Nobody is left to answer; the access log records the request with status 499.
            scope.setdefault("state", {})[CLIENT_DISCONNECTED] = True
            logger.info("client disconnected during %s %s", scope.get("method"), _path(scope))
        except Exception:
            logger.exception("unhandled error on %s %s", scope.get("method"), _path(scope))
            if started:  # part of an answer is already out: close the connection instead
                raise
            await self.error_response(Request(scope, receive))(scope, receive, send)


class HeaderCountMiddleware:
    """Refuse a request with more than ``max_headers`` header fields (431).

    The server bounds the *size* of the request head; this bounds how many fields it may
    have, so no handler iterates over thousands of them.
    """

    def __init__(self, app: ASGIApp, max_headers: int):
        self.app = app
        self.max_headers = max_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and len(scope.get("headers", ())) > self.max_headers:
            error = ApiError(
                "too_many_headers",
                f"The request has more than {self.max_headers} header fields; send fewer.",
            )
            await JSONResponse(error.body(), status_code=error.status_code)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class AllowedHostsMiddleware:
    """Refuse a request whose ``Host`` header is not one of ``allowed_hosts``.

    Patterns are host names, IP addresses (IPv6 with or without brackets) or ``*.example.org``
    (any subdomain); ``*`` allows every host. A ``Host`` that is missing or not a plain
    ``name[:port]`` or ``[ipv6][:port]`` is refused too. The answer is
    ``error_response(request)``, so it has the route's media type and, inside the
    security-header and request-id middlewares, their headers.

    Args:
        app: the ASGI app.
        allowed_hosts: the accepted patterns.
        error_response: builds the refusal for a request.
    """

    def __init__(
        self,
        app: ASGIApp,
        allowed_hosts: Sequence[str],
        error_response: Callable[[Request], Response],
    ):
        for pattern in allowed_hosts:
            wildcard = pattern.startswith("*") and not pattern.startswith("*.")
            if pattern != "*" and ("*" in pattern[1:] or wildcard):
                raise ValueError(f"host pattern {pattern!r}: use '*.example.org' or '*'")
        self.app = app
        self.allow_any = "*" in allowed_hosts
        self.patterns = [_normal_host(p) for p in allowed_hosts if p != "*"]
        self.error_response = error_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.allow_any or scope["type"] != "http" or self._allowed(_host_header(scope)):
            await self.app(scope, receive, send)
            return
        await self.error_response(Request(scope, receive))(scope, receive, send)

    def _allowed(self, header: str | None) -> bool:
        host = _host_name(header)
        if host is None:
            return False
        return any(
            host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:]))
            for pattern in self.patterns
        )


#: ``name[:port]`` or ``[ipv6][:port]``; nothing else is a host (no user info, no path).
_HOST = re.compile(r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9._-]+))(?::[0-9]{1,5})?")


def _host_header(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"host":
            return value.decode("latin-1")
    return None


def _host_name(header: str | None) -> str | None:
    """The host of a ``Host`` header, lower case, an IPv6 address without brackets and in
    its short form; ``None`` when the header is missing or malformed."""
    match = _HOST.fullmatch(header or "")
    if match is None:
        return None
    if match["ipv6"] is None:
        return match["name"].lower()
    try:
        return ipaddress.IPv6Address(match["ipv6"]).compressed
    except ValueError:
        return None


def _normal_host(pattern: str) -> str:
    """An allowed-host pattern in the form ``_host_name`` gives (``[::1]`` and ``::1`` alike)."""
    text = pattern.strip().lower().removeprefix("[").removesuffix("]")
    try:
        return ipaddress.IPv6Address(text).compressed
    except ValueError:
        return text


def _path(scope: Scope) -> str:
    return str(scope.get("path", ""))[:200]
