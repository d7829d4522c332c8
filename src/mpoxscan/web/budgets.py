"""Per-process memory budgets: photos being decoded, and request bodies being received.

Both bound what a worker holds at once, so its worst-case memory is a formula of the settings
(``docs/security.md``):

- ``DecodeBudget``: photos decoded at the same time, by count and by the bytes their decoding
  needs (``mpoxscan.data.images.decode_cost``). Decoding runs in worker threads, which wait
  for room; a wait longer than the limit gives ``503 server_busy`` with ``Retry-After``.
- ``UploadGate``: request bodies being received or held, by count and by bytes (the declared
  ``Content-Length``, or the request limit for a chunked body), over all clients and per
  client. It never waits: a request over it is refused before its body is read, with 503
  (the server is full) or 429 (this client already has its share), both with ``Retry-After``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from mpoxscan.web.api_errors import ApiError
from mpoxscan.web.settings import Settings

#: Photos are analysed at most this many pixels a side (``ImageLimits.max_side``: shrunk right
#: after decoding): a 50 MP photo decodes to 200 MB, ten of them would not fit a small server,
#: and the model sees a few hundred pixels anyway.
WORKING_MAX_SIDE = 2048

#: Seconds a refused client is asked to wait before it retries.
RETRY_AFTER_S = 5


def server_busy(what: str) -> ApiError:
    """``503 server_busy`` with ``Retry-After``."""
    return ApiError(
        "server_busy",
        f"The server is busy ({what}); retry in {RETRY_AFTER_S} seconds.",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


class DecodeBudget:
    """Photos decoded at once in this process: at most ``max_count`` and ``max_bytes``.

    Args:
        max_count: photos decoded at the same time.
        max_bytes: the sum of their decoding costs; one photo may take all of it (a photo
            whose cost is over it was refused by the decoder's own limit).
        wait_s: longest wait for room before ``server_busy``.
    """

    def __init__(self, max_count: int, max_bytes: int, wait_s: float):
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.wait_s = wait_s
        self.count = 0
        self.bytes = 0
        self.peak_bytes = 0
        self._room = threading.Condition()

    @contextmanager
    def reserve(self, n_bytes: int) -> Iterator[None]:
        """Hold ``n_bytes`` (at most ``max_bytes``) and one of the slots while decoding.

        Raises:
            ApiError: ``server_busy`` when no room came within ``wait_s``.
        """
        n_bytes = min(n_bytes, self.max_bytes)
        with self._room:
            if not self._room.wait_for(lambda: self._fits(n_bytes), timeout=self.wait_s):
                raise server_busy("too many photos are being decoded")
            self.count += 1
            self.bytes += n_bytes
            self.peak_bytes = max(self.peak_bytes, self.bytes)
        try:
            yield
        finally:
            with self._room:
                self.count -= 1
                self.bytes -= n_bytes
                self._room.notify_all()

    def _fits(self, n_bytes: int) -> bool:
        return self.count < self.max_count and self.bytes + n_bytes <= self.max_bytes


@dataclass
class UploadGate:
    """Request bodies in flight in this process, over all clients and per client.

    Only the event loop's thread uses it, so it needs no lock.

    Attributes:
        max_count: bodies received or held at once, all clients together.
        max_bytes: their declared sizes together.
        max_per_client: bodies at once from one client key.
    """

    max_count: int
    max_bytes: int
    max_per_client: int
    count: int = 0
    bytes: int = 0
    per_client: dict[str, int] = field(default_factory=dict)

    @contextmanager
    def admit(self, client: str, n_bytes: int) -> Iterator[None]:
        """Hold a place for one body of ``n_bytes`` from ``client`` until the block ends.

        Raises:
            ApiError: ``too_many_uploads`` (429) when the client has ``max_per_client``
                bodies in flight, ``server_busy`` (503) when the server is full.
        """
        if self.per_client.get(client, 0) >= self.max_per_client:
            raise ApiError(
                "too_many_uploads",
                f"Your address already has {self.max_per_client} uploads in progress; wait "
                f"for their answers, then retry in {RETRY_AFTER_S} seconds.",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        if self.count >= self.max_count or self.bytes + n_bytes > self.max_bytes:
            raise server_busy("too many uploads in progress")
        self.count += 1
        self.bytes += n_bytes
        self.per_client[client] = self.per_client.get(client, 0) + 1
        try:
            yield
        finally:
            self.count -= 1
            self.bytes -= n_bytes
            left = self.per_client[client] - 1
            if left:
                self.per_client[client] = left
            else:
                # Only clients with a body in flight are kept: at most max_count keys.
                del self.per_client[client]


def worst_case_memory_bytes(settings: Settings, idle_bytes: int) -> int:
    """The most memory one worker process may hold, from its settings (``docs/security.md``).

    ``idle + U + D + P * F * W + C * H``, where ``idle`` is the process after start-up and
    warm-up (model, runtimes, one Grad-CAM), ``U`` the request bodies in flight
    (``max_upload_bytes_in_flight``), ``D`` the photos being decoded
    (``decode_budget_bytes``: their decoding costs and file copies), ``P * F * W`` the decoded
    photos held by the requests being predicted (``max_concurrent_predictions`` x
    ``max_files`` x a working photo and its display copy, 4 bytes a pixel), and ``C * H`` the
    request heads of open connections (``max_connections`` x ``max_header_bytes``).

    Args:
        settings: the server's settings.
        idle_bytes: the process's resident memory once it has started and warmed up.
    """
    from mpoxscan.inference.explain import DISPLAY_MAX_SIDE

    working_photo = 4 * (WORKING_MAX_SIDE**2 + DISPLAY_MAX_SIDE**2)
    return (
        idle_bytes
        + settings.max_upload_bytes_in_flight
        + settings.decode_budget_bytes
        + settings.max_concurrent_predictions * settings.max_files * working_photo
        + settings.max_connections * settings.max_header_bytes
    )
