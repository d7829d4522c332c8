"""A per-client request limit: at most N prediction requests per IP in each minute."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class RateLimiter:
    """Fixed one-minute windows per client key (an IP address).

    The counts live in this object (one per app, so one per worker process): with several
    workers a client may get up to ``workers x limit`` requests a minute.

    Keys are addresses already reduced by ``deps.client_key_of`` (short strings). At most
    ``max_keys`` are counted in one window; beyond them, new keys share one overflow count, so
    a flood of addresses costs bounded memory (and limits only itself).

    Args:
        limit: requests allowed per key per window; 0 allows everything.
        window_s: the window length in seconds.
        clock: a monotonic clock (tests pass a fake one).
        max_keys: most keys counted in one window.
    """

    #: The key every client shares once ``max_keys`` are counted in a window.
    OVERFLOW_KEY = "overflow"

    def __init__(
        self,
        limit: int,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ):
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self.max_keys = max_keys
        self._window_start = clock()
        self._counts: dict[str, int] = {}

    def hit(self, key: str) -> int | None:
        """Count one request for ``key``.

        Returns:
            ``None`` when the request is allowed, else the whole seconds until the window
            resets (the ``Retry-After`` value).
        """
        if self.limit <= 0:
            return None
        now = self.clock()
        if now - self._window_start >= self.window_s:
            # A new window: dropping every count keeps memory bounded by one minute's clients.
            self._window_start = now
            self._counts.clear()
        if key not in self._counts and len(self._counts) >= self.max_keys:
            key = self.OVERFLOW_KEY
        count = self._counts.get(key, 0) + 1
        self._counts[key] = count
        if count <= self.limit:
            return None
        return max(1, math.ceil(self._window_start + self.window_s - now))
