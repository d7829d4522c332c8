"""The uvicorn options of ``mpoxscan serve``: bounded request heads, slow-client timeouts,
connection limits and which proxies are believed.

uvicorn's default HTTP parser (httptools) reads request headers of any size for as long as a
client keeps sending them (a 32 MiB header was accepted; 2,000 half-sent requests stayed
open). ``mpoxscan serve`` runs uvicorn's h11 parser instead, through ``BoundedH11Protocol``,
which counts every request head's bytes (over ``Settings.max_header_bytes`` it answers 431 and
closes the connection) and closes a connection that has not sent a whole request head within
``Settings.header_timeout_seconds``.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from mpoxscan.web.settings import Settings


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head (slowloris).

    The deadline starts when the connection opens, and again when the first bytes of a later
    request on a kept-alive connection arrive; it ends when the head is complete.

    Args:
        header_timeout: seconds a client has to send a whole request head.
        *args, **kwargs: uvicorn's (``config``, ``server_state``, ``app_state``).
    """

    def __init__(
        self,
        *args: Any,
        header_timeout: float = 10.0,
        max_head_bytes: int = 16 * 1024,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.max_head_bytes = max_head_bytes
        self._head_deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._tail = b""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_deadline()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE and self._head_too_large(data):
            return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._head_bytes, self._tail = 0, b""
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            # Waiting for (the rest of) a request head.
            if self._head_deadline is None:
                self._start_head_deadline()
        else:
            self._cancel_head_deadline()

    def _head_too_large(self, data: bytes) -> bool:
        """Count the bytes of the request head (up to its blank line); over the limit, answer
        431 and close. h11's own bound only applies while a head is incomplete in its buffer,
        so a large head that arrives in one read would pass it."""
        end = (self._tail + data).find(b"\r\n\r\n")
        self._head_bytes += len(data) if end < 0 else max(0, end + 4 - len(self._tail))
        self._tail = data[-3:]
        if self._head_bytes <= self.max_head_bytes:
            return False
        self.logger.info("closing a connection whose request head is over the limit")
        message = b"Request header fields too large."
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(message), message)
        )
        self.transport.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def _start_head_deadline(self) -> None:
        self._head_deadline = self.loop.call_later(self.header_timeout, self._head_too_slow)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.info("closing a connection that sent no whole request head in time")
            self.transport.close()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run``/``uvicorn.Config`` from the settings."""
    options: dict[str, Any] = {
        "http": partial(
            BoundedH11Protocol,
            header_timeout=settings.header_timeout_seconds,
            max_head_bytes=settings.max_header_bytes,
        ),
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "timeout_keep_alive": settings.keep_alive_seconds,
        "limit_concurrency": settings.max_connections,
        "server_header": False,
    }
    if settings.forwarded_allow_ips.strip():
        options["proxy_headers"] = True
        options["forwarded_allow_ips"] = settings.forwarded_allow_ips
    else:
        # uvicorn would otherwise believe X-Forwarded-For from 127.0.0.1: any local process
        # (or a proxy passing the header through) could pick its rate-limit key.
        options["proxy_headers"] = False
    return options
