"""Drain, checked switches and rolled-back updates, with fake workers in virtual time."""

from __future__ import annotations

from functools import partial

import pytest
import trio
from trio.testing import MockClock

from handlers.protocol import InferItem, ReplyItem
from supervisor.config import ModelConfig
from supervisor.errors import (
    CanaryFailed,
    ModelUnavailable,
    ModelVersionNotFound,
    WorkerStartFailed,
)
from supervisor.models.canary import Canary
from supervisor.policy import RestartPolicy
from supervisor.supervision.batching import Job
from supervisor.supervision.core import open_supervisor
from supervisor.supervision.pool import ModelState
from tests.fakeworker import Behaviour, FakeLauncher, sleep_then_echo

SAYS_PING = Canary(body=b"ping", content_type="text/plain", expect_contains="ping")
SAYS_PONG = Canary(body=b"ping", content_type="text/plain", expect_contains="pong", name="pong")


def request(n: int) -> InferItem:
    return InferItem(f"r{n}", {}, {"body": ("text/plain", f"body {n}".encode())})


def model(version: str = "1.0", **settings: object) -> ModelConfig:
    return ModelConfig(name="m", version=version, handler="fake", **settings)  # type: ignore[arg-type]


async def answers(jobs: list[Job]) -> list[ReplyItem | Exception]:
    """Every job's answer: its reply or its error."""
    out: list[ReplyItem | Exception] = []
    for job in jobs:
        try:
            out.append(await job.wait())
        except ModelUnavailable as exc:
            out.append(exc)
    return out


async def test_unload_drains_queued_and_in_flight_requests(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    launcher = FakeLauncher(nursery, default=Behaviour(infer=sleep_then_echo(10)))
    async with open_supervisor(launcher=launcher) as sup:
        await sup.load_model(model(job_queue_size=10))
        pool = sup.pool("m")
        jobs = [pool.submit(request(n)) for n in range(3)]
        start = trio.current_time()
        async with trio.open_nursery() as unloading:
            unloading.start_soon(partial(sup.unload, "m", grace=60))
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(ModelUnavailable, match="stopping"):
                pool.submit(request(9))  # no new work while draining
            replies = await answers(jobs)
        assert [r.body for r in replies if isinstance(r, ReplyItem)] == [
            b"body 0",
            b"body 1",
            b"body 2",
        ]
        assert trio.current_time() == pytest.approx(start + 30)  # three batches, then stopped
        assert pool.state is ModelState.STOPPED
        assert launcher.processes[0].returncode == 0


async def test_the_grace_period_bounds_the_drain(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    launcher = FakeLauncher(nursery, default=Behaviour(infer=sleep_then_echo(10)))
    async with open_supervisor(launcher=launcher) as sup:
        await sup.load_model(model(job_queue_size=10))
        jobs = [sup.pool("m").submit(request(n)) for n in range(3)]
        start = trio.current_time()
        await sup.unload("m", grace=15)
        first, second, third = await answers(jobs)
        assert isinstance(first, ReplyItem)  # done at 10 s
        assert isinstance(second, ReplyItem)  # in flight when the grace ended: it finished
        assert isinstance(third, ModelUnavailable)  # still queued at 15 s
        assert "unloaded" in third.message
        assert trio.current_time() == pytest.approx(start + 20)


async def test_promote_switches_atomically_and_retires_the_old_version(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    launcher = FakeLauncher(nursery, default=Behaviour(infer=sleep_then_echo(1)))
    async with open_supervisor(launcher=launcher) as sup:
        await sup.load_model(model("1.0", job_queue_size=10))
        await sup.load_model(model("2.0", job_queue_size=10), canaries=[SAYS_PING])
        old, new = sup.pool("m", "1.0"), sup.pool("m", "2.0")
        assert [r.passed for r in await sup.check("m", "2.0")] == [True]
        before = [sup.submit(request(n), "m") for n in range(3)]  # queued on 1.0
        result = await sup.promote("m", "2.0", retire_old=True)
        after = sup.submit(request(3), "m")
        assert (result.version, result.previous, result.retired) == ("2.0", "1.0", True)
        assert [r.canary for r in result.canaries] == [SAYS_PING]
        assert all(isinstance(r, ReplyItem) for r in await answers([*before, after]))
        assert old.state is ModelState.STOPPED
        assert sup.pool("m") is new
        v1, v2 = launcher.processes
        assert v1.batches == [["r0"], ["r1"], ["r2"]]  # all queued before the switch
        assert len(v2.batches) == 3  # two canaries (check, promote), then the request after
        assert v2.batches[2] == ["r3"]
        with pytest.raises(ModelVersionNotFound):
            sup.pool("m", "1.0")


async def test_a_failed_canary_keeps_the_default_and_reports_why(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    launcher = FakeLauncher(nursery)
    async with open_supervisor(launcher=launcher) as sup:
        await sup.load_model(model("1.0"))
        await sup.load_model(model("2.0"))
        with pytest.raises(CanaryFailed) as excinfo:
            await sup.promote("m", "2.0", canaries=[SAYS_PING, SAYS_PONG])
        error = excinfo.value
        assert error.status == 422
        assert error.message == (
            "Canary 2 of 2 (pong) failed on model m version 2.0: the answer does not contain "
            "'pong'; the default version stays 1.0"
        )
        assert error.canary["index"] == 2
        assert error.canary["body"] == "ping"
        assert any("loaded" in line for line in error.log_tail)
        assert error.to_json()["canary"] == error.canary
        assert sup.pool("m").config.version == "1.0"
        assert sup.pool("m", "2.0").state is ModelState.READY  # not loaded by promote: kept


async def test_update_rolls_back_a_version_that_fails_its_canaries(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    launcher = FakeLauncher(nursery)
    async with open_supervisor(launcher=launcher) as sup:
        await sup.load_model(model("1.0"))
        with pytest.raises(CanaryFailed, match=r"stays 1\.0; version 2\.0 was unregistered"):
            await sup.update(model("2.0"), canaries=[SAYS_PONG])
        assert [s.config.version for s in sup.describe("m", "all")] == ["1.0"]
        assert launcher.processes[1].returncode == 0  # the new worker was stopped politely
        result = await sup.update(model("3.0"), canaries=[SAYS_PING])
        assert (result.version, result.previous, result.retired) == ("3.0", "1.0", False)
        assert [s.config.version for s in sup.describe("m", "all")] == ["3.0", "1.0"]


async def test_update_rolls_back_a_version_whose_workers_fail(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    fail = Behaviour(load="fail")
    launcher = FakeLauncher(nursery, behaviours=[Behaviour(), fail, fail])
    no_restarts = RestartPolicy(max_restarts=0)
    async with open_supervisor(launcher=launcher) as sup:
        await sup.load_model(model("1.0"))
        with pytest.raises(WorkerStartFailed) as excinfo:
            await sup.update(model("2.0", restart=no_restarts), canaries=[SAYS_PING])
        assert any("No module named 'fake'" in line for line in excinfo.value.log_tail)
        assert [s.config.version for s in sup.describe("m", "all")] == ["1.0"]
        assert sup.pool("m").state is ModelState.READY
