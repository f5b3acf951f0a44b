"""Chaos under load: workers killed (SIGKILL) or frozen (SIGSTOP) while clients hammer them.

A real ``python -m supervisor serve`` child serves two models built from the
echo handler: ``echo`` (2 workers, the victim) and ``steady`` (1 worker, left
alone). 32 clients keep ``echo`` busy and 2 keep ``steady`` busy while a random
``echo`` worker is killed every 1 to 2 s. Every request must get exactly one
answer within its deadline (a result or a JSON error naming the worker, its
incarnation and its log tail), ``steady`` must never notice, the server's own
request count must match the clients', and after SIGTERM the server exits 0
with no worker or grandchild left.

The short runs are part of the default suite; the minute-long ones are marked
``chaos`` (``nox -s chaos``) and publish their figures in docs/reliability.md.
"""

from __future__ import annotations

import os
import random
import re
import signal
import textwrap
from pathlib import Path

import httpx
import psutil
import pytest
import trio

from tests.helpers import ECHO_HANDLER, eventually
from tests.invariants import (
    KEEPALIVE_EXPIRY,
    Ledger,
    descendants,
    figures,
    report,
    still_alive,
    violations,
)
from tests.serveproc import ServeProcess

pytestmark = pytest.mark.slow

CONFIG = """
[server]
inference_address = "127.0.0.1:0"
management_address = "127.0.0.1:0"
metrics_address = "127.0.0.1:0"
shutdown_grace = 5.0

[defaults]
heartbeat_interval = 0.2
heartbeat_timeout = 1.0
response_timeout = 5.0
stop_grace = 0.5

[defaults.restart]
max_restarts = 100
window = 60.0
backoff_initial = 0.05
backoff_max = 0.5

[[models]]
name = "echo"
handler = "echo_handler"
model_dir = "{model_dir}"
workers = 2
batch_size = 4
max_batch_delay = 0.005
job_queue_size = 256
{echo_extra}

[[models]]
name = "steady"
handler = "echo_handler"
model_dir = "{model_dir}"
workers = 1
"""

KILL_EVERY = (1.0, 2.0)
WORK = b"sleep 0.01"  # 10 ms per request: the workers, not the clients, are the bottleneck
DEADLINE = 10.0


class Chaos:
    """The server under test, its clients, and the faults inflicted on it."""

    def __init__(self, server: ServeProcess, client: httpx.AsyncClient, seed: int) -> None:
        self.server = server
        self.client = client
        self.rng = random.Random(seed)
        self.seed = seed
        self.kills: list[int] = []
        self.seen: set[tuple[int, float]] = set()
        self.urls: tuple[str, str, str] = ("", "", "")

    @property
    def pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    async def describe(self, model: str) -> dict:
        url = f"{self.urls[1]}/models/{model}"
        r = await self.client.get(url, headers=self.server.headers("management"))
        assert r.status_code == 200, r.text
        return r.json()[0]

    async def wait_ready(self, model: str, workers: int) -> None:
        with trio.fail_after(60):
            while True:
                desc = await self.describe(model)
                ready = [w for w in desc["workers"] if w["state"] in ("READY", "BUSY")]
                if len(ready) == workers:
                    return
                await trio.sleep(0.05)

    async def wait_repaired(self, incarnations: int) -> None:
        """Wait until the ``echo`` slots reached ``incarnations`` in all, both serving."""
        with trio.fail_after(15):
            while True:
                workers = (await self.describe("echo"))["workers"]
                serving = all(w["state"] in ("READY", "BUSY") for w in workers)
                if serving and sum(w["incarnation"] for w in workers) >= incarnations:
                    return
                await trio.sleep(0.05)

    async def victim(self) -> int | None:
        """A random ``echo`` worker that is serving and not already frozen."""
        workers = (await self.describe("echo"))["workers"]
        pids = [w["pid"] for w in workers if w["state"] in ("READY", "BUSY") and w["pid"]]
        pids = [pid for pid in pids if _running(pid)]
        return self.rng.choice(pids) if pids else None

    async def inflict(self, how: signal.Signals, seconds: float) -> None:
        """Send ``how`` to a random worker every 1-2 s, for ``seconds``."""
        end = trio.current_time() + seconds
        while (left := end - trio.current_time()) > 0:
            await trio.sleep(min(left, self.rng.uniform(*KILL_EVERY)))
            if trio.current_time() >= end:
                return
            self.seen |= descendants(self.pid)
            pid = await self.victim()
            if pid is not None:
                os.kill(pid, how)
                self.kills.append(pid)

    async def requests_counted(self, model: str) -> int:
        """The server's own count of the requests it answered for ``model``."""
        text = (await self.client.get(f"{self.urls[2]}/metrics")).text
        pattern = rf'^ts_inference_requests_total{{[^}}]*model_name="{model}"[^}}]*}} (\S+)$'
        match = re.search(pattern, text, re.MULTILINE)
        return int(float(match.group(1))) if match else 0


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


async def start_chaos(nursery, tmp_path: Path, handler_dir, client, echo_extra="") -> Chaos:
    """The server with ``echo`` and ``steady`` ready; ``echo_extra``: more TOML for ``echo``."""
    model_dir = handler_dir("echo_handler", ECHO_HANDLER)
    config = tmp_path / "chaos.toml"
    text = CONFIG.format(model_dir=model_dir, echo_extra=echo_extra)
    config.write_text(textwrap.dedent(text))
    server = ServeProcess(tmp_path, "--config", str(config))
    await nursery.start(server.run)
    chaos = Chaos(server, client, seed=int(os.environ.get("CHAOS_SEED", "1")))
    chaos.urls = await server.wait_listening()
    await chaos.wait_ready("echo", 2)
    await chaos.wait_ready("steady", 1)
    return chaos


async def run_chaos(chaos: Chaos, how: signal.Signals, seconds: float) -> dict:
    """Load both models while faults hit ``echo``; return the figures of the run."""
    ledger = Ledger(chaos.client, chaos.urls[0], chaos.server.headers("inference"))
    steady_before = (await chaos.describe("steady"))["workers"][0]
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: ledger.drive("echo", WORK, concurrency=32, stop=stop))
        nursery.start_soon(lambda: ledger.drive("steady", b"ok", concurrency=2, stop=stop))
        start = trio.current_time()
        await chaos.inflict(how, seconds)
        end = trio.current_time()
        stop.set()
    assert violations(ledger.outcomes) == []
    steady = ledger.of("steady")
    assert steady
    assert all(o.status == 200 for o in steady)
    steady_after = (await chaos.describe("steady"))["workers"][0]
    assert (steady_after["pid"], steady_after["incarnation"]) == (
        steady_before["pid"],
        steady_before["incarnation"],
    )
    echo = ledger.of("echo")
    assert await chaos.requests_counted("echo") == len(echo)  # each answered once, no more
    await chaos.wait_repaired(2 + len(chaos.kills))  # every fault was seen and repaired
    return {
        **figures(echo, start, end),
        "signal": how.name,
        "faults": len(chaos.kills),
        "seed": chaos.seed,
        "concurrency": 32,
        "other_model": {"sent": len(steady), "all_200": True, "worker_restarted": False},
    }


async def stop_cleanly(chaos: Chaos) -> None:
    """SIGTERM: exit 0 and, within 2 s, no descendant ever seen is left."""
    chaos.seen |= descendants(chaos.pid)
    assert chaos.server.process is not None
    chaos.server.process.send_signal(signal.SIGTERM)
    with trio.fail_after(20):
        assert await chaos.server.process.wait() == 0
    await eventually(lambda: not still_alive(chaos.seen), within=2.0)


@pytest.mark.parametrize(
    ("how", "seconds"),
    [
        pytest.param(signal.SIGKILL, 8, id="sigkill-8s"),
        pytest.param(signal.SIGSTOP, 8, id="sigstop-8s"),
        pytest.param(signal.SIGKILL, 60, id="sigkill-60s", marks=pytest.mark.chaos),
        pytest.param(signal.SIGSTOP, 60, id="sigstop-60s", marks=pytest.mark.chaos),
    ],
)
async def test_chaos_under_load(nursery, tmp_path, handler_dir, how, seconds):
    limits = httpx.Limits(
        max_connections=64, max_keepalive_connections=64, keepalive_expiry=KEEPALIVE_EXPIRY
    )
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        chaos = await start_chaos(nursery, tmp_path, handler_dir, client)
        data = await run_chaos(chaos, how, seconds)
        await stop_cleanly(chaos)
    assert data["faults"] >= seconds // 2 - 1
    assert data["succeeded"] > data["sent"] * 0.9
    report(f"chaos-{how.name.lower()}-{seconds}s", data)


@pytest.mark.parametrize("run", range(3))
async def test_sigkill_of_the_supervisor_under_load_leaves_no_process(
    nursery, tmp_path, handler_dir, run
):
    limits = httpx.Limits(
        max_connections=64, max_keepalive_connections=64, keepalive_expiry=KEEPALIVE_EXPIRY
    )
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        chaos = await start_chaos(nursery, tmp_path, handler_dir, client)
        ledger = Ledger(client, chaos.urls[0], chaos.server.headers("inference"))
        stop = trio.Event()
        async with trio.open_nursery() as load:
            load.start_soon(lambda: ledger.drive("echo", WORK, concurrency=32, stop=stop))
            load.start_soon(lambda: ledger.drive("steady", b"ok", concurrency=4, stop=stop))
            await eventually(lambda: len(ledger.outcomes) > 200, within=30)
            seen = descendants(chaos.pid)
            assert len(seen) == 3
            assert chaos.server.process is not None
            chaos.server.process.kill()
            await chaos.server.process.wait()
            stop.set()
        await eventually(lambda: not still_alive(seen), within=2.0)
