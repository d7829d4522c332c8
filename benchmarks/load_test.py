"""A bounded load and fault generator for the mpoxscan web service, on 127.0.0.1 only.

It starts ``mpoxscan serve`` on a free loopback port, sends a fixed number of mixed good and
bad uploads from N concurrent clients (asyncio + httpx), never for longer than
``--max-seconds``, and reports the requests sent, the answers by status and error code, the
5xx count, p50/p99 latency, requests/s and the server's memory (RSS of the server and its
workers, sampled with psutil). ``--kill-worker`` SIGKILLs one uvicorn worker mid-run (with
``--workers 2``) and reports when it was replaced; ``--latency`` times single-photo
predictions at 1, 8 and 32 concurrent clients.

Run (the results page, ``benchmarks/hardening.md``, gives the commands it used)::

    .venv/bin/python benchmarks/load_test.py \
        --model-dir benchmarks/work/bundles/efficientnet-lite0 \
        --requests 2000 --concurrency 32 --max-seconds 300 --latency

The test suite imports this module for its short form (``tests/web/test_load.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
PREDICT_PATH = "/api/v1/predict"
#: Every client of a load run comes from 127.0.0.1, which the server would treat as one user:
#: no rate limit, and room for all of them in the per-client and global upload caps.
ONE_ADDRESS_ENV = {
    "MPOXSCAN_RATE_LIMIT_PER_MINUTE": "0",
    "MPOXSCAN_MAX_UPLOADS_PER_CLIENT": "64",
    "MPOXSCAN_MAX_UPLOADS_IN_FLIGHT": "64",
}
HEALTH_PATH = "/api/v1/health"


@dataclass(frozen=True)
class UploadCase:
    """One kind of upload the generator sends.

    Attributes:
        name: a label for reports (``good-3``, ``text-as-jpg``).
        data: the file's bytes.
        good: whether it is a photo that must get a prediction (else an error is expected).
        filename: the multipart file name.
        content_type: the part's content type.
    """

    name: str
    data: bytes
    good: bool
    filename: str = "photo.jpg"
    content_type: str = "image/jpeg"


@dataclass
class Answer:
    """What one request got back.

    Attributes:
        case: the ``UploadCase.name`` sent.
        good: whether that case was a good photo.
        status: the HTTP status, or 0 when the connection failed.
        code: the error code, the first photo's result status (``ok``/``retake``), or the
            client-side exception's name when ``status`` is 0.
        latency_s: from sending the request to reading the whole answer.
        result: the first photo's result (``ok`` answers), for comparing predictions.
        finished: seconds since the run started.
    """

    case: str
    good: bool
    status: int
    code: str
    latency_s: float
    result: dict[str, Any] | None = None
    finished: float = 0.0


@dataclass
class LoadReport:
    """The numbers of one run (see ``summarise``)."""

    requests: int
    duration_s: float
    requests_per_s: float
    by_status: dict[str, int]
    by_code: dict[str, int]
    server_errors: int
    connection_errors: int
    p50_ms: float | None
    p99_ms: float | None
    server_cpu_ms_per_request: float | None = None
    rss_start_mb: float | None = None
    rss_end_mb: float | None = None
    rss_peak_mb: float | None = None
    rss_first_half_mb: float | None = None
    rss_second_half_mb: float | None = None
    rss_timeline_mb: list[float] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def check_loopback(url: str) -> str:
    """Return ``url`` without a trailing slash when its host is a loopback address.

    Raises:
        ValueError: for any other host; this generator never sends traffic off the machine.
    """
    host = urlsplit(url).hostname or ""
    if host not in LOOPBACK_HOSTS and not host.startswith("127."):
        raise ValueError(f"{url} is not a loopback address; the load test only targets 127.0.0.1")
    return url.rstrip("/")


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``mpoxscan serve`` in a subprocess on a free 127.0.0.1 port, its output in a file.

    Args:
        bundle_dir: the model bundle to serve.
        workers: uvicorn worker processes.
        env: extra ``MPOXSCAN_*`` settings.
        log_level: the server's log level.
    """

    def __init__(
        self,
        bundle_dir: Path,
        *,
        workers: int = 1,
        env: Mapping[str, str] | None = None,
        log_level: str = "info",
    ):
        self.bundle_dir = Path(bundle_dir)
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {}), "MPOXSCAN_LOG_LEVEL": log_level}
        self._log_dir = tempfile.TemporaryDirectory(prefix="mpoxscan-server-")
        self.stdout_path = Path(self._log_dir.name) / "stdout.log"
        self.stderr_path = Path(self._log_dir.name) / "stderr.log"
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        """The command line that starts the server."""
        return [
            sys.executable,
            "-m",
            "mpoxscan.cli",
            "serve",
            "--model-dir",
            str(self.bundle_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
        ]

    def start(self, timeout_s: float = 180.0) -> ServerProcess:
        """Start the server and wait until ``/api/v1/health`` says the model is loaded.

        Raises:
            RuntimeError: the server exited or was not ready in time (its log is in the message).
        """
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(self.command(), stdout=out, stderr=err, env=self.env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited ({self.process.returncode}):\n{self.logs()}")
            if self._healthy() and len(self.worker_pids()) >= self.workers:
                return self
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"the server was not ready in {timeout_s:.0f} s:\n{self.logs()}")

    def _healthy(self) -> bool:
        try:
            response = httpx.get(self.url + HEALTH_PATH, timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and response.json().get("model_loaded") is True

    @property
    def pid(self) -> int:
        """The server's (with several workers: the supervisor's) process id."""
        assert self.process is not None, "start() the server first"
        return self.process.pid

    def worker_pids(self) -> list[int]:
        """The processes that answer requests: the workers, or the server itself."""
        if self.workers == 1:
            return [self.pid]
        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        # uvicorn starts workers with multiprocessing's spawn; other helpers are not workers.
        return [c.pid for c in children if _is_spawned_worker(c)]

    def rss_bytes(self) -> int:
        """Resident memory of the server and all its child processes."""
        return int(self._sum_over_processes(lambda process: process.memory_info().rss))

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the server and its child processes."""

        def used(process: psutil.Process) -> float:
            times = process.cpu_times()
            return times.user + times.system

        return self._sum_over_processes(used)

    def _sum_over_processes(self, measure: Callable[[psutil.Process], float]) -> float:
        try:
            root = psutil.Process(self.pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        total = 0.0
        for process in processes:
            try:
                total += measure(process)
            except psutil.NoSuchProcess:
                continue
        return total

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int | None:
        """Signal the server and wait for it to exit (SIGKILL after ``timeout_s``).

        Returns:
            Its exit code.
        """
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=10)

    def logs(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            if path.exists():
                parts.append(path.read_text(encoding="utf-8", errors="replace"))
        return "\n".join(parts)

    def close(self) -> None:
        """Stop the server and remove its log files."""
        self.stop()
        self._log_dir.cleanup()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_spawned_worker(process: psutil.Process) -> bool:
    try:
        return any("spawn_main" in part for part in process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


class RssSampler:
    """Samples a function's value (the server's RSS) in a background thread.

    Args:
        read: returns the current RSS in bytes.
        interval_s: seconds between samples.
    """

    def __init__(self, read: Callable[[], int], interval_s: float = 0.1):
        self.read = read
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - self._started, self.read()))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.monotonic() - self._started, self.read()))

    def peak(self) -> int:
        """The largest sample."""
        return max(value for _, value in self.samples)


def multipart_files(case: UploadCase) -> list[tuple[str, tuple[str, bytes, str]]]:
    """The ``files=`` argument of httpx for one photo."""
    return [("file", (case.filename, case.data, case.content_type))]


async def send_one(
    client: httpx.AsyncClient, case: UploadCase, params: Mapping[str, str], started: float
) -> Answer:
    """POST one upload and classify the answer (a connection failure is status 0)."""
    sent = time.perf_counter()
    try:
        response = await client.post(PREDICT_PATH, files=multipart_files(case), params=params)
    except httpx.HTTPError as exc:
        return Answer(case.name, case.good, 0, type(exc).__name__, time.perf_counter() - sent)
    latency = time.perf_counter() - sent
    code, result = _classify(response)
    return Answer(
        case.name, case.good, response.status_code, code, latency, result, sent - started + latency
    )


def _classify(response: httpx.Response) -> tuple[str, dict[str, Any] | None]:
    try:
        body = response.json()
    except ValueError:
        return "not_json", None
    if "error" in body:
        return str(body["error"].get("code")), None
    first = body["results"][0]
    return str(first.get("status")), first


async def run_load(
    url: str,
    cases: Sequence[UploadCase],
    *,
    requests: int,
    concurrency: int,
    max_seconds: float,
    params: Mapping[str, str] | None = None,
    on_answer: Callable[[Answer, int], None] | None = None,
) -> tuple[list[Answer], float]:
    """Send ``requests`` uploads (cycling through ``cases``) from ``concurrency`` clients.

    The run stops after ``requests`` requests or ``max_seconds``, whichever comes first; no
    request is started after the deadline.

    Args:
        url: the server, on a loopback address.
        cases: the uploads, sent in turn.
        requests: how many requests in all.
        concurrency: clients sending at the same time (each waits for its answer).
        max_seconds: the run's time bound.
        params: query parameters (``{"explain": "true"}``).
        on_answer: called with each answer and the count so far (e.g. to kill a worker).

    Returns:
        ``(answers, duration_s)``.
    """
    base = check_loopback(url)
    counter = itertools.count()
    answers: list[Answer] = []
    started = time.perf_counter()
    deadline = started + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(max(30.0, max_seconds), connect=10.0)

    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as client:

        async def client_loop() -> None:
            while time.perf_counter() < deadline:
                index = next(counter)
                if index >= requests:
                    return
                answer = await send_one(client, cases[index % len(cases)], params or {}, started)
                answers.append(answer)
                if on_answer is not None:
                    on_answer(answer, len(answers))

        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return answers, time.perf_counter() - started


def summarise(
    answers: Sequence[Answer],
    duration_s: float,
    rss_samples: Sequence[tuple[float, int]] = (),
    events: Sequence[str] = (),
) -> LoadReport:
    """Count answers by status and code; latency percentiles; RSS start, end, peak, halves."""
    latencies = sorted(a.latency_s * 1000 for a in answers if a.status)
    report = LoadReport(
        requests=len(answers),
        duration_s=round(duration_s, 2),
        requests_per_s=round(len(answers) / duration_s, 1) if duration_s else 0.0,
        by_status=dict(sorted(Counter(str(a.status) for a in answers).items())),
        by_code=dict(sorted(Counter(a.code for a in answers).items())),
        server_errors=sum(1 for a in answers if a.status >= 500),
        connection_errors=sum(1 for a in answers if a.status == 0),
        p50_ms=_percentile(latencies, 50),
        p99_ms=_percentile(latencies, 99),
        events=list(events),
    )
    if rss_samples:
        values = [value / 2**20 for _, value in rss_samples]
        half = max(1, len(values) // 2)
        report.rss_start_mb = round(values[0], 1)
        report.rss_end_mb = round(values[-1], 1)
        report.rss_peak_mb = round(max(values), 1)
        report.rss_first_half_mb = round(statistics.fmean(values[:half]), 1)
        report.rss_second_half_mb = round(statistics.fmean(values[half:] or values), 1)
        step = max(1, len(values) // 10)
        report.rss_timeline_mb = [round(v, 1) for v in values[::step]]
    return report


def _percentile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    # Nearest rank: the smallest value with at least q% of the values at or below it.
    rank = min(len(sorted_values), max(1, math.ceil(q / 100 * len(sorted_values))))
    return round(sorted_values[rank - 1], 1)


def kill_one_worker(server: ServerProcess) -> int:
    """SIGKILL one uvicorn worker of ``server``; returns its pid."""
    pids = server.worker_pids()
    if server.workers < 2 or not pids:
        raise ValueError("killing a worker needs a server started with workers >= 2")
    os.kill(pids[0], signal.SIGKILL)
    return pids[0]


def wait_for_replacement(server: ServerProcess, killed: int, timeout_s: float) -> float | None:
    """Seconds until the server again has all its workers, none of them ``killed``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        pids = server.worker_pids()
        if killed not in pids and len(pids) >= server.workers:
            return time.monotonic() - started
        time.sleep(0.1)
    return None


def _note_replacement(server: ServerProcess, killed: int, events: list[str]) -> None:
    replaced = wait_for_replacement(server, killed, timeout_s=120)
    events.append(
        "worker not replaced within 120 s"
        if replaced is None
        else f"a replacement worker process was running {replaced:.1f} s after the kill"
    )


def generated_cases(count: int, size: int) -> list[UploadCase]:
    """Good generated lesion photos plus three kinds of bad upload, about one in four bad."""
    # The generated lesion photos of the test suite: one generator for tests and benchmarks.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from testdata import make_lesion_photo

    good = []
    for seed in range(count):
        buffer = io.BytesIO()
        make_lesion_photo(seed % 2 == 0, seed=seed, size=size).save(buffer, "JPEG", quality=92)
        good.append(UploadCase(f"good-{seed}", buffer.getvalue(), True))
    bad = bad_cases(good[0].data)
    mixed: list[UploadCase] = []
    for i, case in enumerate(good):
        mixed.append(case)
        if i % 3 == 2:
            mixed.append(bad[(i // 3) % len(bad)])
    return mixed


def bad_cases(a_jpeg: bytes) -> list[UploadCase]:
    """Uploads that must get a 4xx: text named .jpg, a truncated JPEG, an empty file."""
    return [
        UploadCase("text-as-jpg", b"just some notes, not a photo\n" * 40, False),
        UploadCase("truncated-jpeg", a_jpeg[: len(a_jpeg) // 3], False),
        UploadCase("empty", b"", False),
    ]


def latency_levels(
    url: str,
    photos: Sequence[UploadCase],
    levels: Sequence[int] = (1, 8, 32),
    requests_per_level: int = 200,
    max_seconds: float = 120.0,
    server_cpu_seconds: Callable[[], float] | None = None,
) -> dict[int, LoadReport]:
    """Single-photo prediction latency and throughput at each number of concurrent clients.

    With ``server_cpu_seconds`` (``ServerProcess.cpu_seconds``) each report also gives the
    server's CPU time per request, which depends much less on other jobs on the machine than
    the rates do.
    """
    reports = {}
    for concurrency in levels:
        # A short warm-up at each level, so connection set-up is not timed.
        asyncio.run(
            run_load(
                url, photos, requests=concurrency, concurrency=concurrency, max_seconds=max_seconds
            )
        )
        cpu_before = server_cpu_seconds() if server_cpu_seconds else 0.0
        answers, duration = asyncio.run(
            run_load(
                url,
                photos,
                requests=requests_per_level,
                concurrency=concurrency,
                max_seconds=max_seconds,
            )
        )
        reports[concurrency] = summarise(answers, duration)
        if server_cpu_seconds and answers:
            cpu_ms = (server_cpu_seconds() - cpu_before) * 1000 / len(answers)
            reports[concurrency].server_cpu_ms_per_request = round(cpu_ms, 2)
    return reports


def mixed_run(
    server: ServerProcess,
    cases: Sequence[UploadCase],
    *,
    requests: int,
    concurrency: int,
    max_seconds: float,
    kill_worker_after: int | None = None,
) -> LoadReport:
    """The mixed good/bad load against ``server``, with RSS sampling and an optional kill."""
    events: list[str] = []
    watchers: list[threading.Thread] = []

    def on_answer(answer: Answer, count: int) -> None:
        if kill_worker_after is not None and not watchers and count >= kill_worker_after:
            killed = kill_one_worker(server)
            events.append(f"SIGKILL worker {killed} after {count} answers")
            # Watched from a thread: the clients keep sending meanwhile.
            watcher = threading.Thread(target=_note_replacement, args=(server, killed, events))
            watcher.start()
            watchers.append(watcher)

    with RssSampler(server.rss_bytes) as sampler:
        answers, duration = asyncio.run(
            run_load(
                server.url,
                cases,
                requests=requests,
                concurrency=concurrency,
                max_seconds=max_seconds,
                on_answer=on_answer,
            )
        )
    for watcher in watchers:
        watcher.join()
    return summarise(answers, duration, sampler.samples, events)


def markdown(report: LoadReport, title: str) -> str:
    """The report as a markdown table."""
    rows = [
        ("requests", report.requests),
        ("duration", f"{report.duration_s} s"),
        ("requests/s", report.requests_per_s),
        ("answers by status", report.by_status),
        ("answers by code", report.by_code),
        ("5xx", report.server_errors),
        ("connection errors", report.connection_errors),
        ("p50 / p99 latency", f"{report.p50_ms} / {report.p99_ms} ms"),
        ("server CPU per request", f"{report.server_cpu_ms_per_request} ms"),
        (
            "server RSS start / end / peak",
            f"{report.rss_start_mb} / {report.rss_end_mb} / {report.rss_peak_mb} MiB",
        ),
        (
            "server RSS mean, first / second half",
            f"{report.rss_first_half_mb} / {report.rss_second_half_mb} MiB",
        ),
        ("server RSS over the run", f"{report.rss_timeline_mb} MiB"),
    ]
    lines = [f"### {title}", "", "| measure | value |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines += [f"- {event}" for event in report.events]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the load test from the command line and print the reports (markdown, then JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("models/default"))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--photos", type=int, default=16, help="distinct generated photos")
    parser.add_argument("--photo-size", type=int, default=640)
    parser.add_argument("--kill-worker", action="store_true", help="SIGKILL a worker mid-run")
    parser.add_argument("--latency", action="store_true", help="also time 1/8/32 clients")
    parser.add_argument("--latency-requests", type=int, default=200)
    parser.add_argument("--latency-photo-size", type=int, default=224)
    parser.add_argument(
        "--photos-dir", type=Path, help="real photos (e.g. MSLD) for the latency runs"
    )
    parser.add_argument("--out", type=Path, help="write the reports here as JSON")
    args = parser.parse_args(argv)

    cases = generated_cases(args.photos, args.photo_size)
    env = dict(ONE_ADDRESS_ENV)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import machine

    results: dict[str, Any] = {"machine": machine()}
    with ServerProcess(args.model_dir, workers=args.workers, env=env, log_level="warning") as srv:
        results["server_start_rss_mb"] = round(srv.rss_bytes() / 2**20, 1)
        if args.requests:
            kill_after = args.requests // 3 if args.kill_worker else None
            mixed = mixed_run(
                srv,
                cases,
                requests=args.requests,
                concurrency=args.concurrency,
                max_seconds=args.max_seconds,
                kill_worker_after=kill_after,
            )
            print(markdown(mixed, f"{args.requests} mixed uploads, {args.concurrency} clients"))
            results["mixed"] = mixed.to_dict()
        if args.latency:
            photos = latency_photos(args)
            levels = latency_levels(
                srv.url,
                photos,
                requests_per_level=args.latency_requests,
                server_cpu_seconds=srv.cpu_seconds,
            )
            for concurrency, report in levels.items():
                print(markdown(report, f"single-photo predictions, {concurrency} client(s)"))
            results["latency"] = {str(k): v.to_dict() for k, v in levels.items()}
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


def latency_photos(args: argparse.Namespace) -> list[UploadCase]:
    """The photos of the latency runs: real ones from ``--photos-dir``, else generated."""
    if args.photos_dir is None:
        return [c for c in generated_cases(args.photos, args.latency_photo_size) if c.good]
    paths = sorted(p for p in args.photos_dir.rglob("*") if p.suffix.lower() in {".jpg", ".png"})
    return [UploadCase(f"photo-{i}", p.read_bytes(), True) for i, p in enumerate(paths[:64])]


if __name__ == "__main__":
    main()
