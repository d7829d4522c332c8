"""Pure ASGI middlewares that make every answer a designed answer.

- ``HeadAsGetMiddleware``: ``HEAD`` is answered wherever ``GET`` is (monitors use it).
- ``CatchAllMiddleware``: an exception no handler caught becomes the app's own error answer
  (JSON on the API, an HTML page elsewhere) *inside* the security-headers and request-id
  middlewares, so it carries their headers; a client that went away mid-request is logged once,
  at info level, without a traceback.
- ``HeaderCountMiddleware``: a request with more header fields than the limit gets 431.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

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


def _path(scope: Scope) -> str:
    return str(scope.get("path", ""))[:200]
