"""The short form of the load and fault tests (the long form is ``benchmarks/load_test.py``).

A real ``mpoxscan serve`` on a free 127.0.0.1 port gets 200 mixed good and bad uploads from
32 concurrent clients: no 5xx, every good photo gets the prediction ``Predictor`` gives it
directly, and the server's memory stays flat. With two workers, one SIGKILLed mid-run is
replaced while the other keeps answering, and SIGTERM lets the requests in flight finish.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from web_support import lesion_jpeg, load_benchmark, with_padding

from mpoxscan.data.photos import read_photo
from mpoxscan.inference.predictor import Predictor

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUESTS = 200
CLIENTS = 32


load_test = load_benchmark("load_test")
ENV = {**load_test.ONE_ADDRESS_ENV, "MPOXSCAN_MAX_UPLOAD_BYTES": str(4 * 2**20)}


@pytest.fixture(scope="module")
def cases() -> list:
    """Eight good photos (phone-sized uploads) and, after every third, a bad upload."""
    good = [
        load_test.UploadCase(
            f"good-{i}", with_padding(lesion_jpeg(700 + i, i % 2 == 0, 320), i), True
        )
        for i in range(8)
    ]
    bad = load_test.bad_cases(lesion_jpeg(710))
    mixed = []
    for i, case in enumerate(good):
        mixed.append(case)
        if i % 3 == 2:
            mixed.append(bad[(i // 3) % len(bad)])
    return mixed


@pytest.fixture(scope="module")
def expected(web_bundle, cases) -> dict[str, dict]:
    """What ``Predictor`` says about each good photo, in the test process."""
    predictor = Predictor.load(web_bundle)
    answers = {}
    for case in cases:
        if case.good:
            assessment = predictor.assess(read_photo(case.data, predictor.image_size_))
            answers[case.name] = {
                "status": "ok" if assessment.ok else "retake",
                "probability": assessment.prediction.probability if assessment.ok else None,
            }
    return answers


@pytest.fixture(scope="module")
def server(web_bundle) -> Iterator:
    with load_test.ServerProcess(web_bundle, env=ENV, log_level="warning") as running:
        yield running


def test_mixed_load_gets_no_5xx_right_answers_and_flat_memory(server, cases, expected):
    # Warm-up: connection pools, thread pools and the allocator reach their working size.
    load_test.mixed_run(server, cases, requests=2 * CLIENTS, concurrency=CLIENTS, max_seconds=120)
    with load_test.RssSampler(server.rss_bytes, interval_s=0.1) as sampler:
        answers, duration = asyncio.run(
            load_test.run_load(
                server.url, cases, requests=REQUESTS, concurrency=CLIENTS, max_seconds=150
            )
        )
    report = load_test.summarise(answers, duration, sampler.samples)
    assert report.requests == REQUESTS, report
    assert report.server_errors == 0 and report.connection_errors == 0, report
    for answer in answers:
        assert_expected(answer, expected)

    good = [c for c in cases if c.good]
    upload_bytes = sum(len(c.data) for c in good) / len(good)
    good_answers = sum(1 for a in answers if a.good)
    # Were every upload kept, RSS would climb linearly and the second half's mean would sit
    # good_answers * upload_bytes / 2 above the first half's; half of that is allowed.
    tolerance_mb = good_answers * upload_bytes / 2 / 2 / 2**20
    assert tolerance_mb > 50  # well above the allocator's drift (within +-30 MiB here)
    growth = report.rss_second_half_mb - report.rss_first_half_mb
    assert growth < tolerance_mb, report


def assert_expected(answer, expected: dict[str, dict]) -> None:
    """A good photo got Predictor's answer; a bad upload got its 422."""
    if not answer.good:
        assert answer.status == 422, answer
        assert answer.code in {"not_an_image", "truncated_image", "empty_file"}, answer
        return
    want = expected[answer.case]
    assert (answer.status, answer.code) == (200, want["status"]), answer
    if want["probability"] is not None:
        got = answer.result["prediction"]["probability"]
        assert got == pytest.approx(want["probability"], abs=1e-4), answer.case


def test_a_killed_worker_is_replaced_and_sigterm_lets_requests_finish(web_bundle, cases, expected):
    env = {**ENV, "MPOXSCAN_MAX_CONCURRENT_PREDICTIONS": "1"}
    with load_test.ServerProcess(web_bundle, workers=2, env=env, log_level="info") as server:
        before = set(server.worker_pids())
        report = load_test.mixed_run(
            server, cases, requests=96, concurrency=8, max_seconds=150, kill_worker_after=24
        )
        # Only the requests in flight on the killed worker may fail; the other answers.
        assert report.server_errors == 0, report
        assert report.connection_errors <= 8, report
        assert report.by_status.get("200", 0) >= 96 - 8 - report.by_status.get("422", 0)
        assert any("replacement worker" in event for event in report.events), report.events
        new_pids = set(server.worker_pids()) - before
        assert len(new_pids) == 1
        assert_new_worker_answers(server, new_pids.pop(), cases, expected)
        assert_sigterm_finishes_in_flight_requests(server, cases, expected)


def assert_new_worker_answers(server, pid: int, cases, expected) -> None:
    """Send requests until the replacement worker has answered one (its access log line)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        answers, _ = asyncio.run(
            load_test.run_load(server.url, cases, requests=8, concurrency=4, max_seconds=60)
        )
        for answer in answers:
            assert answer.status != 0, answer
            assert_expected(answer, expected)
        if any(line.get("pid") == pid for line in access_lines(server.logs())):
            return
        time.sleep(1)
    pytest.fail(f"the replacement worker {pid} answered nothing in 120 s:\n{server.logs()}")


def access_lines(logs: str) -> list[dict]:
    lines = []
    for text in logs.splitlines():
        if text.startswith("{") and '"mpoxscan.access"' in text:
            lines.append(json.loads(text))
    return lines


def assert_sigterm_finishes_in_flight_requests(server, cases, expected) -> None:
    """SIGTERM while six requests are in flight: all six are answered, then the server exits."""
    good = [c for c in cases if c.good][:6]

    async def in_flight() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            tasks = [
                asyncio.create_task(
                    client.post(
                        load_test.PREDICT_PATH,
                        files=load_test.multipart_files(case),
                        params={"explain": "true"},
                    )
                )
                for case in good
            ]
            # Once one is answered the others are being served (one prediction at a time).
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            server.process.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks)

    responses = asyncio.run(in_flight())
    for case, response in zip(good, responses, strict=True):
        assert response.status_code == 200, response.text
        result = response.json()["results"][0]
        assert result["status"] == expected[case.name]["status"]
    assert server.process.wait(timeout=60) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + load_test.HEALTH_PATH, timeout=5)
