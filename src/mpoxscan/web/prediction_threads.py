"""Running decoding and inference off the event loop, a bounded number at a time."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread
from fastapi import FastAPI

from mpoxscan.web.api_errors import ApiError
from mpoxscan.web.micro_batching import MicroBatcher

logger = logging.getLogger(__name__)

T = TypeVar("T")


async def run_prediction(app: FastAPI, work: Callable[..., T]) -> T:
    """Run ``work(assess=...)`` in a worker thread under the app's prediction limiter.

    ``assess`` runs photos through the model (``Predictor.assess_many``) in micro-batches with
    the photos of other requests (``app.state.micro_batcher``); the request counts as coming
    to the model from the time its thread starts, so batches wait for it while it decodes.

    Unexpected exceptions are logged (with their traceback, server-side only) and become an
    ``internal_error`` whose message gives nothing away.

    Raises:
        ApiError: the ``ApiError`` that ``work`` raised, or ``internal_error``.
    """
    try:
        return await anyio.to_thread.run_sync(
            _with_batcher, app.state.micro_batcher, work, limiter=app.state.prediction_limiter
        )
    except ApiError:
        raise
    except Exception as exc:
        logger.exception("prediction failed")
        raise ApiError(
            "internal_error", "Something went wrong on the server; please try again later."
        ) from exc


def _with_batcher(batcher: MicroBatcher, work: Callable[..., T]) -> T:
    with batcher.caller() as assess:
        return work(assess=assess)
