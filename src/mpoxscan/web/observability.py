"""Request ids, structured (JSON lines) access logs, and the serving log configuration.

The access log replaces uvicorn's, which writes the client's address and the full URL with its
query string. Each request here gets one JSON line with a request id, the method, the path
without the query, the status and the latency; the client's address only when
``Settings.log_client_ip`` asks for it. Nothing from the body (photos, file names, EXIF) is ever
read here.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "X-Request-ID"
ACCESS_LOGGER = "mpoxscan.access"
#: The request-state flag that says the client disconnected before it was answered.
CLIENT_DISCONNECTED = "client_disconnected"
#: A request id a proxy sends is kept when it is this plain (so it cannot forge log lines).
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
#: Paths of unknown pages come from scanners and can be long; the log keeps the start.
_MAX_LOGGED_PATH = 200
#: The LogRecord attribute that carries a line's structured fields.
_RECORD_FIELD = "json_fields"


class AccessLogMiddleware:
    """Give every HTTP request an id (``X-Request-ID``) and log one JSON line when it ends.

    Args:
        app: the ASGI app.
        log_client_ip: add the client's address to each line.
    """

    def __init__(self, app: ASGIApp, log_client_ip: bool = False):
        self.app = app
        self.log_client_ip = log_client_ip
        self.logger = logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        header = (REQUEST_ID_HEADER.lower().encode(), request_id.encode())
        started = time.perf_counter()
        status: list[int] = []

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            # No answer: the client went away (499, as nginx logs it), or an exception escaped
            # the app and became a 500 in Starlette's outer layer.
            gone = scope.get("state", {}).get(CLIENT_DISCONNECTED, False)
            self._log(scope, request_id, status[0] if status else 499 if gone else 500, started)

    def _log(self, scope: Scope, request_id: str, status: int, started: float) -> None:
        fields: dict[str, Any] = {
            "request_id": request_id,
            "method": scope.get("method", ""),
            "path": scope.get("path", "")[:_MAX_LOGGED_PATH],
            "status": status,
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        }
        if self.log_client_ip:
            client = scope.get("client")
            fields["client"] = client[0] if client else None
        self.logger.info(
            "%s %s %d", fields["method"], fields["path"], status, extra={_RECORD_FIELD: fields}
        )


def request_id(request: Request) -> str:
    """The id ``AccessLogMiddleware`` gave the request (``"-"`` outside it, e.g. in unit tests)."""
    return str(request.scope.get("state", {}).get("request_id", "-"))


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _SAFE_REQUEST_ID.fullmatch(text) else None
    return None


class JsonLogFormatter(logging.Formatter):
    """Format every record as one JSON object per line: time, level, logger, message, and the
    record's structured fields (``extra={"json_fields": {...}}``)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            # Which worker process wrote it, when uvicorn runs several.
            "pid": record.process,
            "message": record.getMessage(),
        }
        line.update(getattr(record, _RECORD_FIELD, None) or {})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def log_config(level: str) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` of ``mpoxscan serve``, in every worker process.

    Everything is a JSON line: uvicorn's and mpoxscan's messages on stderr, the access log on
    stdout. uvicorn's own access log is off (``serve`` also passes ``access_log=False``).
    """
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonLogFormatter"}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            },
            "access": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stdout",
            },
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
            "mpoxscan": {"handlers": ["default"], "level": level, "propagate": False},
            ACCESS_LOGGER: {"handlers": ["access"], "level": level, "propagate": False},
        },
    }
