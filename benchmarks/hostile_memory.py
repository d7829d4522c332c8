"""Memory under hostile uploads, the long form of issue 17's checks (127.0.0.1 only, bounded).

Starts ``mpoxscan serve`` with the default settings (plus ``--forwarded-allow-ips 127.0.0.1``,
so each simulated client gets its own key from ``X-Forwarded-For``) and:

1. sends the hostile-upload corpus of ``tests/web/test_hostile_uploads.py`` ``--corpus-rounds``
   times from 4 concurrent clients, and reports the answers and the server's peak RSS;
2. sends ``--rounds`` rounds of 16 concurrent clients each posting one 10 MB photo, while
   another process polls ``/api/v1/health`` every 20 ms, and reports the answers, the peak RSS
   against the documented worst case (``worst_case_memory_bytes``) and the health latencies.

Run (results in ``benchmarks/hardening.md``)::

    .venv/bin/python benchmarks/hostile_memory.py --model-dir models/default
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests"), str(HERE.parent / "tests" / "web")]

import test_hardening  # noqa: E402
import test_hostile_uploads  # noqa: E402
from web_support import lesion_jpeg, with_padding  # noqa: E402

import load_test  # noqa: E402
from _common import machine  # noqa: E402
from mpoxscan.web.budgets import worst_case_memory_bytes  # noqa: E402
from mpoxscan.web.settings import Settings  # noqa: E402

MB = 1e6


def corpus_run(server: load_test.ServerProcess, rounds: int) -> dict:
    """The corpus, ``rounds`` times, from 4 concurrent clients."""
    cases = list(test_hostile_uploads.CORPUS.values())
    uploads = list(enumerate([(case.make(), case.filename) for case in cases] * rounds))

    def post(item: tuple[int, tuple[bytes, str]]) -> int:
        index, (data, name) = item
        # A key per upload, so the per-minute rate limit does not shape the run.
        headers = {"X-Forwarded-For": f"198.51.100.{index % 250 + 1}"}
        files = [("file", (name, data, "image/jpeg"))]
        url = server.url + "/api/v1/predict"
        return httpx.post(url, files=files, headers=headers, timeout=120).status_code

    sampler = load_test.RssSampler(server.rss_bytes, interval_s=0.02)
    with sampler, ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(post, uploads))
    return {
        "requests": len(statuses),
        "by_status": dict(Counter(statuses)),
        "peak_rss_mb": round(sampler.peak() / MB),
    }


async def upload_round(url: str, photo: bytes, clients: int, offset: int) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:

        async def one(i: int) -> int:
            headers = {"X-Forwarded-For": f"198.51.{offset}.{i + 1}"}
            files = test_hardening.photo_parts(photo)
            response = await http.post("/api/v1/predict", files=files, headers=headers)
            return response.status_code

        return await asyncio.gather(*(one(i) for i in range(clients)))


def big_bodies_run(server: load_test.ServerProcess, rounds: int, clients: int) -> dict:
    photo = with_padding(lesion_jpeg(seed=175), seed=175, segments=166)
    idle = server.rss_bytes()
    poller = subprocess.Popen(
        [sys.executable, "-c", test_hardening.HEALTH_POLLER, server.url + "/api/v1/health", "0.02"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    statuses: list[int] = []
    started = time.monotonic()
    try:
        time.sleep(1.0)
        with load_test.RssSampler(server.rss_bytes, interval_s=0.02) as sampler:
            for r in range(rounds):
                statuses += asyncio.run(upload_round(server.url, photo, clients, r))
    finally:
        out, _ = poller.communicate("stop\n", timeout=60)
    health = sorted(seconds for _, seconds in json.loads(out))
    budget = worst_case_memory_bytes(Settings(), idle)
    return {
        "photo_bytes": len(photo),
        "requests": len(statuses),
        "seconds": round(time.monotonic() - started, 1),
        "by_status": dict(Counter(statuses)),
        "idle_rss_mb": round(idle / MB),
        "peak_rss_mb": round(sampler.peak() / MB),
        "budget_mb": round(budget / MB),
        "health_polls": len(health),
        "health_p50_ms": round(1000 * statistics.median(health), 1),
        "health_p95_ms": round(1000 * health[int(0.95 * (len(health) - 1))], 1),
        "health_max_ms": round(1000 * health[-1], 1),
        "health_over_200ms": sum(h > 0.2 for h in health),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, default=HERE.parent / "models" / "default")
    parser.add_argument("--corpus-rounds", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    env = {"MPOXSCAN_FORWARDED_ALLOW_IPS": "127.0.0.1"}
    results = {"machine": machine()}
    with load_test.ServerProcess(args.model_dir, env=env, log_level="warning") as server:
        results["start_rss_mb"] = round(server.rss_bytes() / MB)
        results["corpus"] = corpus_run(server, args.corpus_rounds)
        results["big_bodies"] = big_bodies_run(server, args.rounds, args.clients)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
