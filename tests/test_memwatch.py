"""Per-worker memory limits: the pure decision, the measurement, real leaking workers."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import psutil
import pytest
import trio

from supervisor import (
    ModelConfig,
    SupervisorError,
    WorkerDied,
    WorkerStartFailed,
    open_supervisor,
)
from supervisor.api.describe import describe_model
from supervisor.config import MIB
from supervisor.supervision.memwatch import over_limit, tree_rss
from tests.helpers import ECHO_HANDLER, FAST_RESTARTS, eventually, gone

# Allocates on request and keeps the memory (bytes objects are written, so resident).
LEAKY_HANDLER = """
import os, subprocess, sys, time

class Leaky:
    def initialize(self, context):
        self.hoard = []
        if context.model_yaml_config.get("leak_at_load"):
            print("loading leaks on purpose", flush=True)
            self.hoard.append(b"x" * (300 << 20))
            time.sleep(60)
        print("leaky ready", flush=True)

    def handle(self, batch, context):
        body = batch[0]["body"]
        body = body.decode() if isinstance(body, (bytes, bytearray)) else str(body)
        if body.startswith("leak "):
            print(f"leaking {body.split()[1]} MB on purpose", flush=True)
            self.hoard.append(b"x" * (int(body.split()[1]) << 20))
            time.sleep(60)
        if body.startswith("child "):
            code = f"x = b'x' * ({int(body.split()[1])} << 20); import time; time.sleep(60)"
            child = subprocess.Popen([sys.executable, "-c", code])
            print(f"child {child.pid} leaks on purpose", flush=True)
            time.sleep(60)
        return [{"pid": os.getpid(), "body": body}]
"""


# --- the decision and the measurement ----------------------------------------------------


@pytest.mark.parametrize(
    ("rss", "limit", "expected"),
    [
        (612 * MIB, 500 * MIB, "memory limit exceeded: RSS 612 MB > 500 MB"),
        (500 * MIB + 1, 500 * MIB, "memory limit exceeded: RSS 500 MB > 500 MB"),
        (500 * MIB, 500 * MIB, None),  # at the limit is within it
        (1, 500 * MIB, None),
        (10**12, 0, None),  # 0: no limit
    ],
)
def test_over_limit_names_both_sizes(rss, limit, expected):
    assert over_limit(rss, limit) == expected


def test_tree_rss_sums_the_children_and_none_once_gone():
    code = "x = b'x' * (64 << 20); print('ok', flush=True); input()"
    command = [sys.executable, "-c", code]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as child:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ok\n"  # its 64 MB are written
        own = psutil.Process().memory_info().rss
        total = tree_rss(os.getpid())
        child.kill()
    assert total is not None
    assert total >= own + 64 * MIB
    assert tree_rss(child.pid) is None


# --- real workers -----------------------------------------------------------------------


def leaky_model(handler_dir, **settings) -> ModelConfig:
    model_dir = handler_dir("leaky_handler", LEAKY_HANDLER)
    return ModelConfig(
        name="leaky",
        handler="leaky_handler",
        model_dir=str(model_dir),
        memory_limit_mb=100,
        stop_grace=0.5,
        **settings,
    )


def echo_model(handler_dir) -> ModelConfig:
    model_dir = handler_dir("echo_handler", ECHO_HANDLER)
    return ModelConfig(name="echo", handler="echo_handler", model_dir=str(model_dir))


async def leak(sup, body: bytes) -> SupervisorError:
    """Send ``body`` to the leaky model; the error it must end with."""
    with trio.fail_after(30), pytest.raises(SupervisorError) as caught:
        await sup.predict("leaky", body, content_type="text/plain")
    return caught.value


def serving(sup, name: str, incarnation: int) -> bool:
    worker = sup.describe(name)[0].workers[0]
    return worker.incarnation == incarnation and worker.state == "READY"


@pytest.mark.slow
async def test_a_worker_over_its_limit_is_replaced_and_its_request_says_why(handler_dir):
    async with open_supervisor() as sup:
        await sup.load_model(leaky_model(handler_dir))
        await sup.load_model(echo_model(handler_dir))
        first = sup.describe("leaky")[0].workers[0].pid
        echo_pid = sup.describe("echo")[0].workers[0].pid
        assert describe_model(sup.describe("leaky")[0])["memoryLimitMb"] == 100

        error = await leak(sup, b"leak 200")
        assert isinstance(error, WorkerDied)
        assert error.status == 500
        assert "leaky/1.0 w1#1" in error.message
        assert re.search(r"memory limit exceeded: RSS \d+ MB > 100 MB", error.message)
        assert any("leaking 200 MB on purpose" in line for line in error.log_tail)

        await eventually(lambda: serving(sup, "leaky", 2))
        last_exit = sup.describe("leaky")[0].workers[0].last_exit
        assert last_exit is not None
        assert last_exit.reason.startswith("memory limit exceeded: RSS ")
        assert gone(first)
        reply = await sup.predict("leaky", b"small", content_type="text/plain")
        assert reply.ok
        # the other model did not notice
        [echo] = sup.describe("echo")[0].workers
        assert (echo.incarnation, echo.pid) == (1, echo_pid)
        assert (await sup.predict("echo", b"hi", content_type="text/plain")).ok


@pytest.mark.slow
async def test_the_memory_of_a_workers_children_counts_and_they_go_with_it(handler_dir):
    async with open_supervisor() as sup:
        await sup.load_model(leaky_model(handler_dir))
        error = await leak(sup, b"child 200")
        assert isinstance(error, WorkerDied)
        assert "memory limit exceeded" in error.message
        [line] = [line for line in error.log_tail if "leaks on purpose" in line]
        child = int(line.split()[1])
        await eventually(lambda: gone(child), within=5)
        await eventually(lambda: serving(sup, "leaky", 2))


@pytest.mark.slow
async def test_a_model_over_its_limit_at_load_fails_with_the_reason(handler_dir):
    config = leaky_model(handler_dir, handler_config={"leak_at_load": True}, restart=FAST_RESTARTS)
    async with open_supervisor() as sup:
        with trio.fail_after(60), pytest.raises(WorkerStartFailed):
            await sup.load_model(config)
        stats = sup.describe("leaky")[0]
        assert stats.state == "FAILED"
        assert "memory limit exceeded" in (stats.failure or "")
        assert any("loading leaks on purpose" in line for line in stats.failure_log_tail)
        assert all(w.last_exit and "memory limit" in w.last_exit.reason for w in stats.workers)
