"""Soak: minutes of steady load at about 70% of capacity, with a worker killed now and then.

Not part of the default run (marker ``soak``; ``nox -s soak``; ``SOAK_SECONDS``
sets the length, 180 by default). The server is the chaos suite's (``echo`` with
2 workers and a memory limit, so the memory watchers run too, and ``steady``).
First the capacity is measured with closed-loop clients; then requests are
sent open-loop at 70% of it. After a warm-up, the supervisor process's RSS, open
file descriptors and threads are sampled every few seconds; the medians of the
first and the last samples must match within small bounds, and every request
must meet the invariants of tests/invariants.py.
"""

from __future__ import annotations

import os
import signal
import statistics

import attrs
import httpx
import psutil
import pytest
import trio

from tests.invariants import KEEPALIVE_EXPIRY, Ledger, figures, report, violations
from tests.test_chaos import WORK, Chaos, start_chaos, stop_cleanly

pytestmark = [pytest.mark.slow, pytest.mark.soak]

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "180"))
WARMUP = 20.0
KILL_EVERY = 15.0
SAMPLE_EVERY = 5.0
LOAD = 0.7


@attrs.frozen
class Sample:
    """The supervisor process at one moment."""

    at: float
    rss: int
    fds: int
    threads: int


def sample(pid: int) -> Sample:
    process = psutil.Process(pid)
    with process.oneshot():
        return Sample(
            trio.current_time(), process.memory_info().rss, process.num_fds(), process.num_threads()
        )


async def capacity(ledger: Ledger, seconds: float = 5.0) -> float:
    """Successful requests per second with 16 closed-loop clients."""
    stop = trio.Event()
    before = len(ledger.outcomes)
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: ledger.drive("echo", WORK, concurrency=16, stop=stop))
        await trio.sleep(seconds)
        stop.set()
    ok = sum(o.ok for o in ledger.outcomes[before:])
    return ok / (trio.current_time() - started)


async def paced(ledger: Ledger, rate: float, until: float) -> None:
    """Send one request every ``1 / rate`` seconds (open loop) until ``until``."""
    async with trio.open_nursery() as nursery:
        next_at = trio.current_time()
        while next_at < until:
            nursery.start_soon(lambda: ledger.call("echo", WORK))
            next_at += 1 / rate
            await trio.sleep_until(next_at)


async def kill_now_and_then(chaos: Chaos, until: float) -> None:
    while trio.current_time() + KILL_EVERY < until:
        await trio.sleep(KILL_EVERY)
        pid = await chaos.victim()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            chaos.kills.append(pid)


async def sample_until(pid: int, until: float, samples: list[Sample]) -> None:
    while trio.current_time() < until:
        samples.append(sample(pid))
        await trio.sleep(SAMPLE_EVERY)
    samples.append(sample(pid))


def window(samples: list[Sample], first: bool) -> Sample:
    """The median of the first (or last) quarter of the samples, at least 3."""
    count = max(3, len(samples) // 4)
    part = samples[:count] if first else samples[-count:]
    return Sample(
        part[0].at,
        int(statistics.median(s.rss for s in part)),
        int(statistics.median(s.fds for s in part)),
        int(statistics.median(s.threads for s in part)),
    )


async def test_soak_keeps_the_supervisor_flat(nursery, tmp_path, handler_dir):
    limits = httpx.Limits(
        max_connections=256, max_keepalive_connections=256, keepalive_expiry=KEEPALIVE_EXPIRY
    )
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        chaos = await start_chaos(
            nursery, tmp_path, handler_dir, client, echo_extra="memory_limit_mb = 500"
        )
        ledger = Ledger(client, chaos.urls[0], chaos.server.headers("inference"))
        rate = LOAD * await capacity(ledger)
        warm_end = trio.current_time() + WARMUP
        end = warm_end + SOAK_SECONDS
        samples: list[Sample] = []
        measured = Ledger(client, chaos.urls[0], chaos.server.headers("inference"))
        async with trio.open_nursery() as load:
            load.start_soon(paced, ledger, rate, warm_end)
            await trio.sleep_until(warm_end)
            load.start_soon(paced, measured, rate, end)
            load.start_soon(kill_now_and_then, chaos, end)
            load.start_soon(sample_until, chaos.pid, end, samples)
        await stop_cleanly(chaos)
    assert violations(ledger.outcomes + measured.outcomes) == []
    start, finish = window(samples, first=True), window(samples, first=False)
    data = {
        **figures(measured.outcomes, warm_end, end),
        "rate_per_s": round(rate, 1),
        "worker_kills": len(chaos.kills),
        "supervisor": {
            "rss_mb": [round(start.rss / 2**20, 1), round(finish.rss / 2**20, 1)],
            "fds": [start.fds, finish.fds],
            "threads": [start.threads, finish.threads],
            "samples": len(samples),
        },
    }
    report(f"soak-{round(SOAK_SECONDS)}s", data)
    assert finish.rss <= start.rss * 1.10 + 8 * 2**20
    assert finish.fds <= start.fds + 4
    assert finish.threads <= start.threads + 4
    assert data["succeeded"] >= 0.95 * data["sent"]
