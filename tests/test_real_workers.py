"""Faults inflicted on real worker processes, through the embedding API (real clock)."""

from __future__ import annotations

import os
import signal
from functools import partial

import attrs
import psutil
import pytest
import trio

from supervisor import (
    InvalidRequest,
    ModelConfig,
    ModelUnavailable,
    SupervisorError,
    WorkerDied,
    WorkerStartFailed,
    WorkerTimeout,
    open_supervisor,
)
from tests.helpers import CRASH_AT_LOAD_HANDLER, ECHO_HANDLER, FAST_RESTARTS, eventually, gone

pytestmark = pytest.mark.slow


def echo_model(handler_dir, name: str = "echo", **settings) -> ModelConfig:
    model_dir = handler_dir("echo_handler", ECHO_HANDLER)
    return ModelConfig(name=name, handler="echo_handler", model_dir=str(model_dir), **settings)


async def predict_into(results: dict, sup, key: str, body: bytes) -> None:
    """Predict on the echo model; store the reply, or the error, under ``key``."""
    try:
        results[key] = await sup.predict("echo", body, content_type="text/plain")
    except SupervisorError as exc:
        results[key] = exc


def tail_has(sup, name: str, text: str) -> bool:
    worker = sup.describe(name)[0].workers[0]
    return any(text in line for line in worker.log_tail)


async def test_kill_9_mid_batch_fails_only_the_batch_in_flight(handler_dir):
    config = echo_model(handler_dir, job_queue_size=10)
    async with open_supervisor() as sup:
        await sup.load_model(config)
        first_pid = sup.describe("echo")[0].workers[0].pid
        results: dict[str, object] = {}
        call = partial(predict_into, results, sup)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "in_flight", b"hang")
            await eventually(lambda: tail_has(sup, "echo", "hanging on purpose"))
            for i in range(3):
                nursery.start_soon(call, f"queued{i}", f"q{i}".encode())
            await eventually(lambda: sup.describe("echo")[0].queue_depth == 3)
            os.kill(first_pid, signal.SIGKILL)

        error = results["in_flight"]
        assert isinstance(error, WorkerDied)
        assert error.status == 507  # killed by SIGKILL, as TorchServe answers an OOM kill
        assert "echo/1.0 w1#1" in error.message
        assert "SIGKILL" in error.message
        assert any("hanging on purpose" in line for line in error.log_tail)
        worker = sup.describe("echo")[0].workers[0]
        assert worker.incarnation == 2
        assert worker.restarts == 1
        assert worker.last_exit is not None
        assert worker.last_exit.signal == signal.SIGKILL
        for i in range(3):
            reply = results[f"queued{i}"]
            assert not isinstance(reply, Exception), reply
            assert reply.ok
            assert f'"echo": "q{i}"'.encode() in reply.body
            assert f'"pid": {worker.pid}'.encode() in reply.body
        assert gone(first_pid)


async def test_hung_handler_gets_504_and_the_worker_is_replaced(handler_dir):
    config = echo_model(handler_dir, response_timeout=1.0, stop_grace=0.5)
    async with open_supervisor() as sup:
        await sup.load_model(config)
        first_pid = sup.describe("echo")[0].workers[0].pid
        with pytest.raises(WorkerTimeout) as caught:
            await sup.predict("echo", b"hang", content_type="text/plain")
        assert caught.value.status == 504
        assert "w1#1" in caught.value.message
        assert any("hanging on purpose" in line for line in caught.value.log_tail)
        reply = await sup.predict("echo", b"after", content_type="text/plain")
        assert reply.ok
        worker = sup.describe("echo")[0].workers[0]
        assert worker.incarnation == 2
        assert "response timeout" in worker.last_exit.reason
        assert gone(first_pid)


async def test_sigstopped_idle_worker_is_replaced_by_the_heartbeat(handler_dir):
    config = echo_model(handler_dir, heartbeat_interval=0.2, heartbeat_timeout=1.0, stop_grace=0.5)
    async with open_supervisor() as sup:
        await sup.load_model(config)
        first_pid = sup.describe("echo")[0].workers[0].pid
        os.kill(first_pid, signal.SIGSTOP)
        await eventually(lambda: sup.describe("echo")[0].workers[0].incarnation == 2)
        worker = sup.describe("echo")[0].workers[0]
        assert "heartbeat" in worker.last_exit.reason
        await eventually(lambda: gone(first_pid), within=5)
        reply = await sup.predict("echo", b"ok", content_type="text/plain")
        assert reply.ok


async def test_crash_at_load_makes_the_model_failed_and_leaves_others_alone(handler_dir):
    broken_dir = handler_dir("broken_handler", CRASH_AT_LOAD_HANDLER)
    broken = ModelConfig(
        name="broken", handler="broken_handler", model_dir=str(broken_dir), restart=FAST_RESTARTS
    )
    async with open_supervisor() as sup:
        await sup.load_model(echo_model(handler_dir))
        with pytest.raises(WorkerStartFailed) as caught:
            await sup.load_model(broken)
        assert any("corrupt (on purpose)" in line for line in caught.value.log_tail)
        stats = sup.describe("broken")[0]
        assert stats.state == "FAILED"
        assert "more than 2 restarts" in stats.failure
        assert any("weights file is corrupt" in line for line in stats.failure_log_tail)
        assert sup.unhealthy_models() == ["broken/1.0"]
        with pytest.raises(ModelUnavailable) as unavailable:
            await sup.predict("broken", b"x")
        assert unavailable.value.status == 503
        assert unavailable.value.log_tail
        reply = await sup.predict("echo", b"still fine", content_type="text/plain")
        assert reply.ok
        assert sup.describe("echo")[0].workers[0].incarnation == 1


IGNORES_SIGTERM_HANDLER = """
import signal, subprocess

class Stubborn:
    def initialize(self, context):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self.child = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 600"])
        print(f"grandchild {self.child.pid}", flush=True)

    def handle(self, batch, context):
        return [self.child.pid for _ in batch]
"""


@pytest.mark.parametrize("how", ["normal exit", "cancellation"])
async def test_worker_ignoring_sigterm_and_its_grandchild_are_gone_after_stop(handler_dir, how):
    model_dir = handler_dir("stubborn_handler", IGNORES_SIGTERM_HANDLER)
    config = ModelConfig(
        name="stubborn", handler="stubborn_handler", model_dir=str(model_dir), stop_grace=0.5
    )
    with trio.CancelScope() as scope:
        async with open_supervisor(grace=1.0) as sup:
            await sup.load_model(config)
            reply = await sup.predict("stubborn", b"x")
            grandchild = int(reply.body)
            worker_pid = sup.describe("stubborn")[0].workers[0].pid
            assert psutil.pid_exists(grandchild)
            if how == "cancellation":
                scope.cancel()
                await trio.sleep_forever()
    assert gone(worker_pid)  # the supervisor reaped the worker before returning
    # the grandchild got SIGKILL (a group sweep) before the block returned; the kernel
    # finishes it off asynchronously
    await eventually(lambda: gone(grandchild), within=2.0)


async def test_scaling_up_and_down_with_real_workers(handler_dir):
    async with open_supervisor() as sup:
        await sup.load_model(echo_model(handler_dir, max_workers=3))
        await sup.scale("echo", 3)
        pids = [w.pid for w in sup.describe("echo")[0].workers]
        assert len(set(pids)) == 3
        await sup.scale("echo", 1)
        await eventually(lambda: len(sup.describe("echo")[0].workers) == 1)
        await eventually(lambda: all(gone(p) for p in pids[1:]), within=5)
        reply = await sup.predict("echo", b"one left", content_type="text/plain")
        assert reply.ok


async def test_unload_without_grace_answers_queued_requests_and_stops_workers(handler_dir):
    async with open_supervisor() as sup:
        await sup.load_model(echo_model(handler_dir))
        pid = sup.describe("echo")[0].workers[0].pid
        outcomes: dict[str, object] = {}
        call = partial(predict_into, outcomes, sup)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "in_flight", b"sleep 0.5")
            await eventually(lambda: sup.describe("echo")[0].workers[0].state == "BUSY")
            nursery.start_soon(call, "queued", b"never served")
            await eventually(lambda: sup.describe("echo")[0].queue_depth == 1)
            await sup.unload("echo", grace=0)
        assert outcomes["in_flight"].ok
        assert isinstance(outcomes["queued"], ModelUnavailable)
        assert "unloaded" in outcomes["queued"].message
        assert sup.registry.names() == []
        assert gone(pid)


async def test_handler_exception_fails_the_batch_but_keeps_the_worker(handler_dir):
    async with open_supervisor() as sup:
        await sup.load_model(echo_model(handler_dir))
        pid = sup.describe("echo")[0].workers[0].pid
        reply = await sup.predict("echo", b"raise", content_type="text/plain")
        assert not reply.ok
        assert reply.status == 503
        assert "bad input on purpose" in reply.message
        assert tail_has(sup, "echo", "ValueError: bad input on purpose")  # traceback in the log
        reply = await sup.predict("echo", b"fine", content_type="text/plain")
        assert reply.ok
        worker = sup.describe("echo")[0].workers[0]
        assert (worker.pid, worker.incarnation) == (pid, 1)


async def test_scaling_past_max_workers_is_refused(handler_dir):
    async with open_supervisor() as sup:
        await sup.load_model(echo_model(handler_dir, max_workers=2))
        with pytest.raises(InvalidRequest):
            await sup.scale("echo", 3)


async def test_batches_fill_under_load(handler_dir):
    config = echo_model(handler_dir, batch_size=4, max_batch_delay=0.05, job_queue_size=64)
    async with open_supervisor() as sup:
        await sup.load_model(config)
        sizes: list[int] = []

        async def call(i: int) -> None:
            reply = await sup.predict("echo", b"sleep 0.05", content_type="text/plain")
            sizes.append(int(reply.body.split(b'"batch": ')[1].rstrip(b"}")))

        async with trio.open_nursery() as nursery:
            for i in range(16):
                nursery.start_soon(call, i)
        assert len(sizes) == 16
        assert max(sizes) == 4


async def test_worker_crash_at_inference_is_restarted(handler_dir):
    async with open_supervisor() as sup:
        await sup.load_model(echo_model(handler_dir))
        with pytest.raises(WorkerDied) as caught:
            await sup.predict("echo", b"crash", content_type="text/plain")
        assert caught.value.status == 500
        assert "exit code 3" in caught.value.message
        assert any("crashing on purpose" in line for line in caught.value.log_tail)
        reply = await sup.predict("echo", b"again", content_type="text/plain")
        assert reply.ok
        assert sup.describe("echo")[0].workers[0].incarnation == 2


def test_model_config_is_frozen():
    config = ModelConfig(name="m", handler="h")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.workers = 3  # type: ignore[misc]


async def test_a_warm_spare_takes_over_the_moment_a_worker_dies(handler_dir):
    config = echo_model(handler_dir, warm_spare=True)
    async with open_supervisor() as sup:
        await sup.load_model(config)
        await eventually(lambda: sup.describe("echo")[0].spare_pid is not None)
        spare = sup.describe("echo")[0].spare_pid
        first = sup.describe("echo")[0].workers[0].pid
        os.kill(first, signal.SIGKILL)
        killed_at = trio.current_time()
        while True:  # back to back, as a client would
            try:
                reply = await sup.predict("echo", b"hi", content_type="text/plain")
                break
            except WorkerDied:
                continue
        took = trio.current_time() - killed_at
        assert f'"pid": {spare}'.encode() in reply.body  # served by the spare, no new process
        assert took < 1.0
        worker = sup.describe("echo")[0].workers[0]
        assert (worker.pid, worker.incarnation) == (spare, 2)
        await eventually(lambda: sup.describe("echo")[0].spare_pid not in (None, spare))
    assert gone(spare)
