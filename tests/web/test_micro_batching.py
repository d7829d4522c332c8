"""Micro-batching: the batcher on its own, and concurrent requests through the app.

The app tests slow the model down (a wrapper around ``Predictor.assess_many`` that records
each call's size and sleeps), so that while one batch runs the other requests queue up: the
batches that form then do not depend on how fast this machine is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import uvicorn
from fastapi.testclient import TestClient
from typer.testing import CliRunner
from web_support import lesion_jpeg

from mpoxscan.cli import app as cli_app
from mpoxscan.web.app import create_app
from mpoxscan.web.micro_batching import MicroBatcher
from mpoxscan.web.settings import Settings

CLIENTS = 8
MODEL_PAUSE_S = 0.2


def doubled(items: list[int]) -> list[int]:
    return [2 * item for item in items]


def run_in_threads(function, count: int) -> list:
    """Call ``function(i)`` for ``i`` in ``range(count)`` from ``count`` threads at once."""
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(function, range(count)))


# --- the batcher -----------------------------------------------------------------------------


def test_lone_caller_does_not_wait_for_company():
    batcher = MicroBatcher(doubled, max_size=8, max_wait_s=5.0).start()
    try:
        started = time.perf_counter()
        with batcher.caller() as submit:
            assert submit([1, 2]) == [2, 4]
        assert time.perf_counter() - started < 1.0
        assert batcher.batch_sizes == {2: 1}
    finally:
        batcher.close()


def test_batch_waits_for_a_caller_still_decoding():
    batcher = MicroBatcher(doubled, max_size=8, max_wait_s=5.0).start()
    second_entered = threading.Event()

    def first() -> list[int]:
        second_entered.wait()
        with batcher.caller() as submit:
            return submit([1])

    def second() -> list[int]:
        with batcher.caller() as submit:
            second_entered.set()
            time.sleep(0.1)  # "decoding" while the first caller's photo waits
            return submit([2, 3])

    try:
        with ThreadPoolExecutor(2) as pool:
            answers = [pool.submit(first), pool.submit(second)]
            assert [a.result(timeout=10) for a in answers] == [[2], [4, 6]]
        assert batcher.batch_sizes == {3: 1}
    finally:
        batcher.close()


def test_caller_that_never_submits_is_not_waited_for():
    batcher = MicroBatcher(doubled, max_size=8, max_wait_s=5.0).start()
    try:
        with batcher.caller():
            pass  # its photo could not be decoded
        started = time.perf_counter()
        assert batcher.submit([5]) == [10]
        assert time.perf_counter() - started < 1.0
    finally:
        batcher.close()


def wait_until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_callers_are_never_split_and_batches_respect_max_size():
    running, release = threading.Event(), threading.Event()

    def slow(items: list[int]) -> list[int]:
        running.set()
        release.wait(10)
        return doubled(items)

    batcher = MicroBatcher(slow, max_size=4, max_wait_s=0.0).start()
    try:
        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(batcher.submit, [0])
            running.wait(10)  # the batching thread is busy; the next callers queue up in order
            queued = []
            for items in ([1, 2], [3, 4], [5]):
                queued.append(pool.submit(batcher.submit, items))
                wait_until(lambda n=len(queued): len(batcher._queue) == n)
            release.set()
            assert first.result(timeout=10) == [0]
            assert [q.result(timeout=10) for q in queued] == [[2, 4], [6, 8], [10]]
        # [0] alone, then [1, 2] + [3, 4] (the 4 items allowed), then [5]: none was split.
        assert sorted(batcher.batch_sizes.elements()) == [1, 1, 4]
    finally:
        batcher.close()


def test_close_runs_what_is_queued_then_refuses():
    batcher = MicroBatcher(doubled, max_size=8).start()
    assert batcher.submit([1]) == [2]
    batcher.close()
    assert batcher._thread is None
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit([1])


def test_size_one_runs_in_the_callers_thread_without_a_batching_thread():
    threads = []

    def record(items: list[int]) -> list[int]:
        threads.append(threading.current_thread())
        return doubled(items)

    batcher = MicroBatcher(record, max_size=1).start()
    try:
        assert batcher._thread is None
        assert batcher.submit([3, 4]) == [6, 8]
        assert threads == [threading.current_thread()]
    finally:
        batcher.close()


# --- concurrent requests through the app ---------------------------------------------------


class CountingModel:
    """Wraps ``Predictor.assess_many``: records each call's size, pauses, and can fail."""

    def __init__(self, assess_many, pause_s: float = MODEL_PAUSE_S):
        self.assess_many = assess_many
        self.pause_s = pause_s
        self.sizes: list[int] = []
        self.fail = False
        self._lock = threading.Lock()

    def __call__(self, images):
        with self._lock:
            self.sizes.append(len(images))
        time.sleep(self.pause_s)
        if self.fail:
            raise RuntimeError("the model failed")
        return self.assess_many(images)


def app_client(web_settings, **settings) -> TestClient:
    return TestClient(create_app(web_settings.model_copy(update=settings)))


@pytest.fixture(scope="module")
def batching_client(web_settings) -> Iterator[TestClient]:
    """An app that gathers up to 8 requests' photos per model call."""
    with app_client(
        web_settings,
        max_concurrent_predictions=CLIENTS,
        micro_batch_max_size=CLIENTS,
        micro_batch_max_wait_ms=20,
    ) as client:
        yield client


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return [lesion_jpeg(seed=900 + i, positive=i % 2 == 0) for i in range(CLIENTS)]


def predict(client: TestClient, photo: bytes):
    return client.post("/api/v1/predict", files=[("file", ("photo.jpg", photo, "image/jpeg"))])


def probabilities(response) -> dict[str, float]:
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    assert result["status"] == "ok", result
    return result["prediction"]["probabilities"]


@pytest.fixture
def counting_model(batching_client, monkeypatch) -> CountingModel:
    predictor = batching_client.app.state.predictor
    model = CountingModel(predictor.assess_many)
    monkeypatch.setattr(predictor, "assess_many", model)
    return model


def test_concurrent_requests_are_batched_and_answer_as_single_ones(
    batching_client, photos, counting_model
):
    counting_model.pause_s = 0.0
    alone = [probabilities(predict(batching_client, photo)) for photo in photos]
    assert counting_model.sizes == [1] * CLIENTS
    counting_model.sizes.clear()
    counting_model.pause_s = MODEL_PAUSE_S

    together = run_in_threads(lambda i: probabilities(predict(batching_client, photos[i])), CLIENTS)

    assert sum(counting_model.sizes) == CLIENTS
    assert max(counting_model.sizes) > 1, counting_model.sizes
    for single, batched in zip(alone, together, strict=True):
        assert single.keys() == batched.keys()
        for name in single:
            assert batched[name] == pytest.approx(single[name], abs=1e-6)


def test_a_failing_batch_fails_every_request_in_it_and_the_next_succeeds(
    batching_client, photos, counting_model
):
    counting_model.fail = True
    responses = run_in_threads(lambda i: predict(batching_client, photos[i]), CLIENTS)
    assert max(counting_model.sizes) > 1, counting_model.sizes
    for response in responses:
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "internal_error"

    counting_model.fail = False
    probabilities(predict(batching_client, photos[0]))


def test_batch_size_one_turns_batching_off(web_settings, photos, monkeypatch):
    with app_client(
        web_settings, max_concurrent_predictions=CLIENTS, micro_batch_max_size=1
    ) as client:
        predictor = client.app.state.predictor
        model = CountingModel(predictor.assess_many)
        monkeypatch.setattr(predictor, "assess_many", model)
        run_in_threads(lambda i: probabilities(predict(client, photos[i])), CLIENTS)
        assert model.sizes == [1] * CLIENTS
        assert client.app.state.micro_batcher._thread is None


# --- settings and `mpoxscan serve` -----------------------------------------------------------

BATCH_OPTIONS = [
    "--micro-batch-max-size",
    "4",
    "--micro-batch-max-wait-ms",
    "3",
    "--max-concurrent-predictions",
    "8",
]
BATCH_SETTINGS = {
    "micro_batch_max_size": 4,
    "micro_batch_max_wait_ms": 3.0,
    "max_concurrent_predictions": 8,
}


def test_micro_batching_is_off_by_default():
    assert Settings().micro_batch_max_size == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_options_reach_the_settings_of_every_worker(web_bundle, monkeypatch, workers):
    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.append(app))
    for name in Settings.model_fields:  # serve() hands every choice on through these
        # Set, then deleted: monkeypatch then removes whatever serve() sets, afterwards.
        monkeypatch.setenv(f"MPOXSCAN_{name.upper()}", "")
        monkeypatch.delenv(f"MPOXSCAN_{name.upper()}")
    command = ["serve", "--model-dir", str(web_bundle), "--workers", str(workers)]
    result = CliRunner().invoke(cli_app, command + BATCH_OPTIONS)
    assert result.exit_code == 0, result.output
    # One process builds its app here; worker processes build theirs from the environment.
    settings = started[0].state.settings if workers == 1 else Settings()
    for name, value in BATCH_SETTINGS.items():
        assert getattr(settings, name) == value
