"""Faults from inside a handler: log floods, a broken protocol socket, crash loops.

Each test runs a real server (``serve()`` on 127.0.0.1:0, real worker processes)
with a faulty model and a ``steady`` one, sends requests over HTTP through a
``Ledger`` and checks the shared invariants (tests/invariants.py): every request
answered once, in time, with a result or a JSON error that names the worker,
its incarnation and its log tail; the other model never notices. Faults that
earlier suites already cover (kill -9, hangs, SIGSTOP, crash at load, memory
limits) are in test_real_workers.py, test_chaos.py and test_memwatch.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial

import attrs
import httpx
import pytest
import trio

from supervisor import ModelConfig, ServerConfig, open_supervisor
from supervisor.config import KIB
from supervisor.server import BaseURLs, serve
from tests.helpers import ECHO_HANDLER, FAST_RESTARTS, eventually
from tests.invariants import Ledger, violations

pytestmark = pytest.mark.slow

FAULTY_HANDLER = """
import os, socket, sys, threading, time

def protocol_fd():
    return int(sys.argv[sys.argv.index("--fd") + 1])

def flood(megabytes, line=b"x" * 1023 + b"\\n"):
    for _ in range(megabytes * 1024):
        os.write(2, line)

class Faulty:
    def initialize(self, context):
        print("faulty handler ready", flush=True)

    def handle(self, batch, context):
        body = batch[0]["body"]
        body = body.decode() if isinstance(body, (bytes, bytearray)) else str(body)
        if body == "flood forever":
            threading.Thread(target=flood, args=(1 << 20,), daemon=True).start()
        elif body.startswith("flood "):
            flood(int(body.split()[1]))
        elif body.startswith("one line "):
            os.write(2, b"y" * (int(body.split()[2]) << 20))
            os.write(2, b"\\nafter the long line\\n")
        elif body == "close socket":
            print("closing the protocol socket on purpose", flush=True)
            os.close(protocol_fd())
        elif body == "shut down socket":
            print("shutting down the protocol socket on purpose", flush=True)
            socket.socket(fileno=os.dup(protocol_fd())).shutdown(socket.SHUT_RDWR)
            time.sleep(5)
        elif body == "corrupt socket":
            print("writing garbage to the protocol socket on purpose", flush=True)
            os.write(protocol_fd(), b"\\xff" * 64)
            time.sleep(5)
        elif body == "crash":
            print("crashing on purpose", flush=True)
            os._exit(3)
        return [{"echo": body, "pid": os.getpid()} for _ in batch]
"""


def faulty_model(handler_dir, **settings) -> ModelConfig:
    directory = handler_dir("faulty_handler", FAULTY_HANDLER)
    settings.setdefault("stop_grace", 0.5)
    return ModelConfig(
        name="faulty", handler="faulty_handler", model_dir=str(directory), **settings
    )


def steady_model(handler_dir) -> ModelConfig:
    directory = handler_dir("echo_handler", ECHO_HANDLER)
    return ModelConfig(name="steady", handler="echo_handler", model_dir=str(directory))


@attrs.define
class Served:
    """A running server, its client, and the ledger of what was sent."""

    endpoints: BaseURLs
    client: httpx.AsyncClient
    ledger: Ledger

    async def describe(self, model: str) -> dict:
        r = await self.client.get(f"{self.endpoints.management}/models/{model}")
        assert r.status_code == 200, r.text
        return r.json()[0]

    async def wait_serving(self, model: str, incarnation: int) -> dict:
        with trio.fail_after(30):
            while True:
                [worker] = (await self.describe(model))["workers"]
                if worker["state"] == "READY" and worker["incarnation"] == incarnation:
                    return worker
                await trio.sleep(0.05)


@pytest.fixture
async def served(nursery, handler_dir, request) -> AsyncIterator[Served]:
    """A server with ``faulty`` (settings from the test's param) and ``steady``, both ready."""
    faulty = faulty_model(handler_dir, **getattr(request, "param", {}))
    config = ServerConfig(
        inference_address="127.0.0.1:0",
        management_address="127.0.0.1:0",
        metrics_address="127.0.0.1:0",
        models=(faulty, steady_model(handler_dir)),
        disable_token_authorization=True,
        shutdown_grace=1.0,
    )
    shutdown = trio.Event()
    endpoints = await nursery.start(partial(serve, config, shutdown=shutdown, handle_signals=False))
    async with httpx.AsyncClient(timeout=60) as client:
        served = Served(endpoints, client, Ledger(client, endpoints.inference))
        await served.wait_serving("faulty", 1)
        await served.wait_serving("steady", 1)
        yield served
    shutdown.set()


async def assert_steady_untouched(served: Served) -> None:
    """The other model answered everything and its worker is its first incarnation."""
    outcome = await served.ledger.call("steady", b"still here")
    assert outcome.status == 200
    assert all(o.status == 200 for o in served.ledger.of("steady"))
    [worker] = (await served.describe("steady"))["workers"]
    assert (worker["incarnation"], worker["restarts"]) == (1, 0)
    assert violations(served.ledger.outcomes) == []


# --- a handler that floods its log ----------------------------------------------------------


@pytest.mark.parametrize(
    "body", [b"flood 16", b"one line 16"], ids=["16 MB of lines", "one 16 MB line"]
)
async def test_a_log_flood_never_blocks_the_worker_and_the_tail_stays_bounded(handler_dir, body):
    config = faulty_model(handler_dir, log_lines=50, log_bytes=16 * KIB)
    async with open_supervisor() as sup:
        await sup.load_model(config)
        with trio.fail_after(30):
            reply = await sup.predict("faulty", body, content_type="text/plain")
        assert reply.ok
        log = sup.pool("faulty").slots[0].worker.log
        await eventually(lambda: log.total_bytes >= 16 << 20)  # the pipe was read to the end
        lines = log.lines()
        assert len(lines) <= 50
        assert sum(len(line.encode()) for line in lines) <= 16 * KIB
        assert max(len(line) for line in lines) <= 4096 + len(" [...line cut]")
        [worker] = sup.describe("faulty")[0].workers
        assert worker.incarnation == 1
        if body.startswith(b"one line"):
            assert lines[-1] == "after the long line"


async def test_a_worker_flooding_all_the_time_still_serves_and_answers_heartbeats(handler_dir):
    config = faulty_model(handler_dir, heartbeat_interval=0.2, heartbeat_timeout=1.0)
    async with open_supervisor() as sup:
        await sup.load_model(config)
        assert (await sup.predict("faulty", b"flood forever", content_type="text/plain")).ok
        log = sup.pool("faulty").slots[0].worker.log
        start = log.total_bytes
        for i in range(20):  # 4 s: four heartbeat timeouts
            with trio.fail_after(2):
                reply = await sup.predict("faulty", f"{i}".encode(), content_type="text/plain")
            assert reply.ok
            await trio.sleep(0.2)
        assert log.total_bytes - start > 1 << 20  # it kept flooding all along
        assert len(log.lines()) <= config.log_lines
        assert sup.describe("faulty")[0].workers[0].incarnation == 1


# --- a handler that breaks its protocol socket ---------------------------------------------


@pytest.mark.parametrize(
    ("body", "said", "why"),
    [
        (b"close socket", "closing the protocol socket", "the process exited"),
        # the worker's reader sees EOF, takes it for the supervisor's death and kills its group
        (b"shut down socket", "the protocol socket was closed", "killed by signal 9"),
        (b"corrupt socket", "writing garbage", "protocol error"),
    ],
)
async def test_a_broken_protocol_socket_is_a_clear_error_and_the_worker_is_replaced(
    served, body, said, why
):
    first = (await served.describe("faulty"))["workers"][0]["pid"]
    outcome = await served.ledger.call("faulty", body)
    assert outcome.status in (500, 507)
    error = outcome.error()
    assert error is not None
    assert "faulty/1.0 w1#1" in error["message"]
    assert why in error["message"]
    assert any(said in line for line in error["logTail"])
    worker = await served.wait_serving("faulty", 2)
    assert worker["lastExit"]["pid"] == first
    assert (await served.ledger.call("faulty", b"fine")).status == 200
    await assert_steady_untouched(served)


# --- crash loops --------------------------------------------------------------------------


@pytest.mark.parametrize("served", [{"restart": FAST_RESTARTS}], indirect=True)
async def test_a_crash_loop_at_inference_fails_the_model_and_only_that_model(served):
    for incarnation in (1, 2, 3):
        await served.wait_serving("faulty", incarnation)
        outcome = await served.ledger.call("faulty", b"crash")
        assert outcome.status == 500
        assert f"w1#{incarnation}" in outcome.error()["message"]
    await eventually_failed(served)
    outcome = await served.ledger.call("faulty", b"fine")
    assert outcome.status == 503
    error = outcome.error()
    assert "is FAILED" in error["message"]
    assert "more than 2 restarts" in error["message"]
    assert any("crashing on purpose" in line for line in error["logTail"])
    ping = await served.client.get(f"{served.endpoints.inference}/ping")
    assert ping.status_code == 500
    assert ping.json()["failedModels"] == ["faulty/1.0"]
    await assert_steady_untouched(served)


async def eventually_failed(served: Served) -> None:
    with trio.fail_after(15):
        while (await served.describe("faulty"))["state"] != "FAILED":  # noqa: ASYNC110
            await trio.sleep(0.05)
