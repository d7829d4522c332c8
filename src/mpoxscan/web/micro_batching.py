"""Micro-batching: the photos of concurrent requests go through the model in one call.

On a CPU the model runs a batch of 8 photos in less time per photo than 8 single calls
(``benchmarks/speed.md``), so under load the server gathers the photos that reach the model
step at about the same time. Each request still decodes its own photos in its own worker
thread; only the model step (``Predictor.assess_many``) runs in the batcher's one thread::

    batcher = MicroBatcher(predictor.assess_many, max_size=8, max_wait_s=0.005).start()
    with batcher.caller() as assess:  # in a request's worker thread
        images = decode(...)          # overlaps the model running another request's batch
        assessments = assess(images)  # blocks until its batch has run
    batcher.close()

A request never waits for company that is not coming: the batcher knows how many callers are
between ``caller()`` and their ``assess`` call (decoding), and runs a batch at once when none
are, or when the batch is full, or after ``max_wait_s`` at the most.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

X = TypeVar("X")
Y = TypeVar("Y")


@dataclass
class _Job(Generic[X, Y]):
    """One caller's items and the future its results arrive in."""

    items: list[X]
    future: Future[list[Y]] = field(default_factory=Future)


class MicroBatcher(Generic[X, Y]):
    """Runs ``run_batch`` on the items of concurrent callers together, in one thread.

    Args:
        run_batch: maps a list of items to a list of results, one per item, in order
            (``Predictor.assess_many``). It must not depend on which other items share its
            call, so that batched answers equal single ones.
        max_size: most items in one call; 1 turns batching off (each caller runs
            ``run_batch`` itself, in its own thread). A caller's items are never split: a
            caller with more than ``max_size`` gets a call of its own.
        max_wait_s: longest time a queued caller waits for callers still decoding to join
            its batch.

    Attributes:
        batch_sizes: how many ``run_batch`` calls had each number of items.
    """

    def __init__(
        self, run_batch: Callable[[list[X]], list[Y]], max_size: int = 8, max_wait_s: float = 0.0
    ):
        self.run_batch = run_batch
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.batch_sizes: Counter[int] = Counter()
        self._queue: deque[_Job[X, Y]] = deque()
        self._coming = 0  # callers inside caller() that have not submitted yet
        self._changed = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        """Whether calls are batched (``max_size > 1``)."""
        return self.max_size > 1

    def start(self) -> MicroBatcher[X, Y]:
        """Start the batching thread (none when batching is off); returns ``self``."""
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="micro-batcher", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout_s: float | None = 30.0) -> None:
        """Run what is queued, then stop the thread; later submissions raise ``RuntimeError``."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    @contextmanager
    def caller(self) -> Iterator[Callable[[Sequence[X]], list[Y]]]:
        """Announce a caller that will submit items soon; yields its ``submit`` function.

        Enter it before the slow work that precedes the model (decoding), so that a batch
        waits for this caller (up to ``max_wait_s``) instead of running without it. A caller
        that leaves without submitting (its photos could not be decoded) is no longer waited
        for. The yielded function may be called once.
        """
        submitted = False

        def submit(items: Sequence[X]) -> list[Y]:
            nonlocal submitted
            if submitted:
                raise RuntimeError("a caller submits once; enter caller() again for more")
            submitted = True
            return self._submit(items, announced=True)

        with self._changed:
            self._coming += 1
        try:
            yield submit
        finally:
            if not submitted:
                with self._changed:
                    self._coming -= 1
                    self._changed.notify_all()

    def submit(self, items: Sequence[X]) -> list[Y]:
        """Run ``items`` in a batch with other callers' items and return their results.

        Args:
            items: this caller's items.

        Returns:
            One result per item, in order.

        Raises:
            Exception: whatever ``run_batch`` raised for the batch these items were in (every
                caller of that batch gets it).
            RuntimeError: the batcher is closed.
        """
        return self._submit(items, announced=False)

    def _submit(self, items: Sequence[X], *, announced: bool) -> list[Y]:
        items = list(items)
        job: _Job[X, Y] = _Job(items)
        batched = self.enabled and bool(items)
        with self._changed:
            if announced:
                self._coming -= 1
                self._changed.notify_all()
            if self._closed:
                raise RuntimeError("the micro-batcher is closed; the server is shutting down")
            if batched:
                self._queue.append(job)
                self._changed.notify_all()
        if batched:
            return job.future.result()
        return self._call(items) if items else []

    def _call(self, items: list[X]) -> list[Y]:
        results = self.run_batch(items)
        if len(results) != len(items):
            raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)} items")
        with self._changed:
            self.batch_sizes[len(items)] += 1
        return results

    def _serve(self) -> None:
        """The batching thread: take a batch, run it, hand out the results; until closed."""
        while (jobs := self._next_batch()) is not None:
            items = [item for job in jobs for item in job.items]
            try:
                results = self._call(items)
            except Exception as exc:
                for job in jobs:
                    job.future.set_exception(exc)
                continue
            start = 0
            for job in jobs:
                job.future.set_result(results[start : start + len(job.items)])
                start += len(job.items)

    def _next_batch(self) -> list[_Job[X, Y]] | None:
        """Wait for a caller, give callers still decoding up to ``max_wait_s`` to join, and
        take whole jobs up to ``max_size`` items (at least one job); ``None`` once closed and
        drained."""
        with self._changed:
            while not self._queue and not self._closed:
                self._changed.wait()
            if not self._queue:
                return None
            deadline = time.monotonic() + self.max_wait_s
            while self._coming > 0 and not self._closed and self._queued() < self.max_size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            jobs = [self._queue.popleft()]
            size = len(jobs[0].items)
            while self._queue and size + len(self._queue[0].items) <= self.max_size:
                jobs.append(self._queue.popleft())
                size += len(jobs[-1].items)
            return jobs

    def _queued(self) -> int:
        return sum(len(job.items) for job in self._queue)
