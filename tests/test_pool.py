"""The worker pool against an in-process fake worker, in virtual time.

Every test runs under ``autojump_clock`` with ``tests.fakeworker``: no
subprocess, no socket, so timeouts, heartbeats and backoff delays are exact
and cost no real time.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import random
import signal
from collections import Counter
from functools import partial

import pytest
import trio
from trio.testing import MockClock

from handlers.protocol import InferItem, Kind, ReplyItem
from supervisor.config import ModelConfig
from supervisor.errors import (
    ModelNotFound,
    ModelUnavailable,
    SupervisorError,
    WorkerDied,
    WorkerStartFailed,
    WorkerTimeout,
)
from supervisor.policy import RestartPolicy
from supervisor.supervision.batching import Job
from supervisor.supervision.core import open_supervisor
from supervisor.supervision.pool import ModelState, Pool
from supervisor.supervision.slot import Slot
from tests.fakeworker import (
    Behaviour,
    FakeLauncher,
    FakeProcess,
    crash,
    echo_replies,
    hang,
    sleep_then_echo,
)


def request(n: int) -> InferItem:
    """Request ``n``: id ``r<n>``, body ``body <n>``."""
    return InferItem(f"r{n}", {}, {"body": ("application/octet-stream", f"body {n}".encode())})


def model(**settings: object) -> ModelConfig:
    """A model config for the fake worker."""
    return ModelConfig(name="m", handler="fake", **settings)  # type: ignore[arg-type]


async def start_pool(nursery: trio.Nursery, launcher: FakeLauncher, config: ModelConfig) -> Pool:
    """Run a pool in ``nursery`` and wait until its workers are ready."""
    pool = Pool(config, launcher, random.Random(0))
    await nursery.start(pool.run)
    await pool.wait_ready()
    return pool


def fake_of(launcher: FakeLauncher, slot: Slot) -> FakeProcess:
    """The fake process of a slot's current incarnation."""
    assert slot.worker is not None
    return launcher.by_pid(slot.worker.pid)


def non_ping(proc: FakeProcess) -> list[Kind]:
    """What the fake received, heartbeats left out."""
    return [kind for kind in proc.received if kind is not Kind.PING]


async def test_lone_request_to_idle_worker_is_dispatched_at_once(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    launcher = FakeLauncher(nursery)
    pool = await start_pool(nursery, launcher, model(batch_size=8, max_batch_delay=5.0))
    start = trio.current_time()

    reply = await pool.submit(request(1)).wait()

    assert reply.body == b"body 1"
    assert trio.current_time() - start < 0.001  # not max_batch_delay (5 s)
    assert launcher.processes[0].batches == [["r1"]]


async def test_batches_fill_under_load(autojump_clock: MockClock, nursery: trio.Nursery) -> None:
    async def slow_first(proc: FakeProcess, items: list[InferItem]) -> list[ReplyItem]:
        if len(proc.batches) == 1:
            await trio.sleep(10)
        return echo_replies(items)

    launcher = FakeLauncher(nursery, default=Behaviour(infer=slow_first))
    config = model(batch_size=8, max_batch_delay=0.5, job_queue_size=50)
    pool = await start_pool(nursery, launcher, config)
    fake = launcher.processes[0]
    start = trio.current_time()
    jobs = [pool.submit(request(0))]
    await launcher.wait_for(lambda: fake.batches)
    jobs += [pool.submit(request(n)) for n in range(1, 21)]

    replies = [await job.wait() for job in jobs]

    assert [r.body for r in replies] == [f"body {n}".encode() for n in range(21)]
    assert [len(batch) for batch in fake.batches] == [1, 8, 8, 4]
    # The last batch waited max_batch_delay for more jobs; the full ones did not.
    assert trio.current_time() - start == pytest.approx(10.5)


async def test_full_queue_rejects_at_once(autojump_clock: MockClock, nursery: trio.Nursery) -> None:
    launcher = FakeLauncher(nursery, default=Behaviour(infer=hang))
    pool = await start_pool(nursery, launcher, model(job_queue_size=2))
    in_flight = pool.submit(request(0))
    await launcher.wait_for(lambda: launcher.processes[0].batches)
    queued = [pool.submit(request(1)), pool.submit(request(2))]
    start = trio.current_time()

    with pytest.raises(ModelUnavailable, match="queue is full") as excinfo:
        pool.submit(request(3))

    assert excinfo.value.status == 503
    assert trio.current_time() == start
    assert pool.statistics().queue_depth == 2
    assert pool.requests == 3
    assert not in_flight.answered
    assert not any(job.answered for job in queued)


async def test_a_reply_missing_an_item_fails_only_that_job(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    async def drop_last(proc: FakeProcess, items: list[InferItem]) -> list[ReplyItem]:
        return echo_replies(items)[:-1]

    launcher = FakeLauncher(nursery, default=Behaviour(infer=drop_last))
    pool = await start_pool(nursery, launcher, model(batch_size=3, max_batch_delay=0))
    jobs = [pool.submit(request(n)) for n in range(3)]

    assert [(await job.wait()).body for job in jobs[:2]] == [b"body 0", b"body 1"]
    with pytest.raises(WorkerDied, match="sent no answer for this request"):
        await jobs[2].wait()
    assert launcher.processes[0].batches == [["r0", "r1", "r2"]]


async def test_crash_mid_batch_fails_only_the_batch_in_flight(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    launcher = FakeLauncher(nursery, [Behaviour(infer=crash)])
    pool = await start_pool(nursery, launcher, model(batch_size=2, max_batch_delay=0))
    # The idle worker takes r1 and r2 at once; r3 and r4 stay queued.
    jobs = [pool.submit(request(n)) for n in (1, 2, 3, 4)]

    for job in jobs[:2]:
        with pytest.raises(WorkerDied) as excinfo:
            await job.wait()
        error = excinfo.value
        assert "m/1.0 w1#1" in error.message
        assert "killed by signal 9" in error.message
        assert error.status == 507  # SIGKILL: TorchServe's out-of-resources answer
        assert error.log_tail[-1] == "fake[1000]: CUDA out of memory in batch of 2"
    replies = [await job.wait() for job in jobs[2:]]

    assert [r.body for r in replies] == [b"body 3", b"body 4"]
    slot = pool.slots[0]
    assert (slot.incarnation, slot.restarts) == (2, 1)
    assert launcher.processes[0].batches == [["r1", "r2"]]
    assert launcher.processes[1].batches == [["r3", "r4"]]
    last_exit = pool.statistics().workers[0].last_exit
    assert last_exit is not None
    assert (last_exit.incarnation, last_exit.signal) == (1, signal.SIGKILL)


async def test_response_timeout_answers_504_and_replaces_the_worker(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    launcher = FakeLauncher(nursery, [Behaviour(infer=hang)])
    pool = await start_pool(nursery, launcher, model(response_timeout=5.0))
    start = trio.current_time()

    with pytest.raises(WorkerTimeout) as excinfo:
        await pool.submit(request(1)).wait()

    assert excinfo.value.status == 504
    assert "m/1.0 w1#1" in excinfo.value.message
    assert trio.current_time() - start == pytest.approx(5.0)
    await launcher.wait_for(lambda: len(launcher.processes) == 2)
    await pool.wait_ready()
    assert pool.slots[0].incarnation == 2
    assert launcher.processes[0].returncode == -signal.SIGTERM
    assert (await pool.submit(request(2)).wait()).body == b"body 2"


async def test_job_queued_during_a_response_timeout_goes_to_the_next_incarnation(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    # Like a real process, the hung worker needs a moment to act on SIGTERM.
    launcher = FakeLauncher(nursery, [Behaviour(infer=hang, term_delay=0.5)])
    pool = await start_pool(nursery, launcher, model(response_timeout=5.0))
    timed_out = pool.submit(request(1))
    await launcher.wait_for(lambda: launcher.processes[0].batches)
    queued = pool.submit(request(2))

    with pytest.raises(WorkerTimeout):
        await timed_out.wait()

    assert (await queued.wait()).body == b"body 2"
    assert [p.batches for p in launcher.processes] == [[["r1"]], [["r2"]]]


async def test_missed_heartbeat_kills_and_replaces_an_idle_worker(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    launcher = FakeLauncher(nursery, [Behaviour(pong=False)])
    config = model(heartbeat_interval=1.0, heartbeat_timeout=3.0)
    pool = await start_pool(nursery, launcher, config)
    start = trio.current_time()

    await launcher.wait_for(lambda: len(launcher.processes) == 2)

    stopped, replacement = launcher.processes
    assert replacement.started_at - start == pytest.approx(4.0)  # one interval + the timeout
    assert stopped.received == [Kind.LOAD, Kind.PING]
    assert stopped.signals[:2] == [signal.SIGTERM, signal.SIGCONT]
    await pool.wait_ready()
    slot = pool.slots[0]
    assert slot.incarnation == 2
    assert slot.last_exit is not None
    assert "no heartbeat answer within 3 s" in slot.last_exit.reason
    assert (await pool.submit(request(1)).wait()).body == b"body 1"


async def test_jobs_arriving_while_a_killed_worker_exits_are_not_lost(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    # A stopped worker that takes a while to act on SIGTERM (within stop_grace).
    dying = Behaviour(pong=False, term_delay=1.0)
    launcher = FakeLauncher(nursery, [dying])
    config = model(heartbeat_interval=1.0, heartbeat_timeout=3.0, stop_grace=2.0)
    pool = await start_pool(nursery, launcher, config)
    await launcher.wait_for(lambda: signal.SIGTERM in launcher.processes[0].signals)

    jobs = [pool.submit(request(n)) for n in range(3)]

    with trio.fail_after(60):
        replies = [await job.wait() for job in jobs]
    assert [r.body for r in replies] == [b"body 0", b"body 1", b"body 2"]
    assert launcher.processes[0].batches == []


async def test_startup_timeout_counts_as_a_failed_start(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    launcher = FakeLauncher(nursery, [Behaviour(load="hang")])
    pool = Pool(model(startup_timeout=30.0), launcher, random.Random(0))
    start = trio.current_time()
    await nursery.start(pool.run)

    await pool.wait_ready()

    assert trio.current_time() - start == pytest.approx(30.0)
    hung = launcher.processes[0]
    assert hung.returncode == -signal.SIGTERM
    last_exit = pool.slots[0].last_exit
    assert last_exit is not None
    assert "no READY within startup_timeout (30 s)" in last_exit.reason


async def test_a_launch_error_counts_as_a_failed_start(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    no_fds = OSError(errno.EMFILE, "Too many open files")
    launcher = FakeLauncher(nursery, [Behaviour(spawn_error=no_fds)])
    pool = Pool(model(), launcher, random.Random(0))

    async with trio.open_nursery() as pools:
        await pools.start(pool.run)
        await pool.wait_ready()
        slot = pool.slots[0]
        assert (slot.incarnation, slot.restarts) == (2, 1)
        assert slot.last_exit is not None
        assert "Too many open files" in slot.last_exit.reason
        assert (await pool.submit(request(1)).wait()).body == b"body 1"
        pools.cancel_scope.cancel()


async def test_load_failing_every_time_fails_the_model(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    launcher = FakeLauncher(nursery, default=Behaviour(load="fail"))
    policy = RestartPolicy(max_restarts=2, window=60, backoff_initial=1, jitter=0)
    async with open_supervisor(launcher=launcher) as sup:
        await sup.load_model(model(restart=policy), wait=False)
        pool = sup.pool("m")
        queued = [pool.submit(request(n)) for n in range(3)]

        with pytest.raises(WorkerStartFailed):
            await pool.wait_ready()

        assert pool.state is ModelState.FAILED
        assert pool.failure is not None
        assert "more than 2 restarts in 60 s" in pool.failure
        assert len(launcher.processes) == 3
        log_line = "fake[1002]: ModuleNotFoundError: No module named 'fake'"
        for job in queued:
            with pytest.raises(ModelUnavailable) as excinfo:
                await job.wait()
            assert excinfo.value.status == 503
            assert excinfo.value.log_tail[-1] == log_line
        with pytest.raises(ModelUnavailable, match="is FAILED") as excinfo:
            sup.submit(request(9), "m")
        assert excinfo.value.log_tail[-1] == log_line
        [stats] = sup.describe("m")
        assert stats.state == "FAILED"
        assert stats.failure == pool.failure
        assert "last exit: the handler failed to load: ModuleNotFoundError" in pool.failure
        assert stats.failure_log_tail[-1] == log_line
        assert stats.restarts == 2
        [worker] = stats.workers  # a FAILED model keeps its slots for describe
        assert worker.last_exit is not None
        assert (worker.last_exit.incarnation, worker.last_exit.returncode) == (3, 1)
        assert worker.last_exit.log_tail[-1] == log_line
        assert sup.unhealthy_models() == ["m/1.0"]
        await sup.unload("m")  # a FAILED model can still be unloaded
        with pytest.raises(ModelNotFound):
            sup.pool("m")


async def test_consecutive_failures_back_off(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    failures = [Behaviour(load="fail")] * 6 + [Behaviour(lifetime=20.0)]
    launcher = FakeLauncher(nursery, failures)
    policy = RestartPolicy(
        max_restarts=100, backoff_initial=1, backoff_factor=2, backoff_max=4, jitter=0
    )
    pool = Pool(model(restart=policy), launcher, random.Random(0))
    await nursery.start(pool.run)

    await launcher.wait_for(lambda: len(launcher.processes) == 8)

    procs = launcher.processes
    gaps = [after.started_at - before.ended_at for before, after in itertools.pairwise(procs)]  # type: ignore[operator]
    # First restart at once, then doubling up to the cap; a healthy run (20 s,
    # more than healthy_after) resets the backoff: the next restart is at once.
    assert gaps == pytest.approx([0, 1, 2, 4, 4, 4, 0])
    assert pool.slots[0].restarts == 7


async def test_scale_up_then_down_stops_the_newest_after_its_batch(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    launcher = FakeLauncher(nursery, default=Behaviour(infer=sleep_then_echo(10)))
    pool = await start_pool(nursery, launcher, model())

    pool.scale(3)
    await pool.wait_ready(3)

    assert [s.id for s in pool.slots] == ["w1", "w2", "w3"]
    assert pool.ready_count() == 3
    newest = pool.slots[2]
    jobs = [pool.submit(request(n)) for n in range(3)]  # one per idle worker
    await launcher.wait_for(lambda: all(p.batches for p in launcher.processes))
    start = trio.current_time()

    pool.scale(2)

    replies = [await job.wait() for job in jobs]
    assert [r.body for r in replies] == [b"body 0", b"body 1", b"body 2"]
    stopped = fake_of(launcher, newest)
    assert await stopped.wait() == 0  # a polite stop
    assert non_ping(stopped) == [Kind.LOAD, Kind.INFER, Kind.SHUTDOWN]
    assert stopped.ended_at == pytest.approx(start + 10)  # only after its batch
    await trio.sleep(1)  # the stopped slot winds down
    assert [s.id for s in pool.slots] == ["w1", "w2"]
    assert all(p.returncode is None for p in launcher.processes if p is not stopped)
    assert newest.restarts == 0


async def test_scale_up_while_a_slot_is_stopping(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    launcher = FakeLauncher(nursery, default=Behaviour(infer=sleep_then_echo(10)))
    pool = await start_pool(nursery, launcher, model(workers=2))
    jobs = [pool.submit(request(n)) for n in range(2)]
    await launcher.wait_for(lambda: all(p.batches for p in launcher.processes))
    stopping = fake_of(launcher, pool.slots[1])

    pool.scale(1)
    pool.scale(2)

    for job in jobs:
        await job.wait()
    assert await stopping.wait() == 0
    await trio.sleep(1)  # time for a replacement to start and load
    assert len(pool.slots) == 2
    assert pool.ready_count() == 2


async def test_scale_down_hands_an_undelivered_batch_back_to_the_pool(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    busy = Behaviour(infer=sleep_then_echo(30))
    stopped = Behaviour(pong=False, term_delay=1.0)
    launcher = FakeLauncher(nursery, [busy, stopped])
    pool = await start_pool(nursery, launcher, model(heartbeat_interval=1, heartbeat_timeout=3))
    first = pool.submit(request(0))
    await launcher.wait_for(lambda: launcher.processes[0].batches)
    pool.scale(2)
    await pool.wait_ready(2)
    await launcher.wait_for(lambda: signal.SIGTERM in launcher.processes[1].signals)
    # w1 is busy, so w2 takes the job, but its worker is dying: it cannot deliver it.
    carried = pool.submit(request(1))
    await trio.sleep(0.5)

    pool.scale(1)

    assert (await first.wait()).body == b"body 0"
    with trio.fail_after(60):
        assert (await carried.wait()).body == b"body 1"
    assert launcher.processes[0].batches == [["r0"], ["r1"]]


async def test_scale_to_zero_answers_the_queued_jobs(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    launcher = FakeLauncher(nursery, default=Behaviour(infer=sleep_then_echo(10)))
    pool = await start_pool(nursery, launcher, model())
    in_flight = pool.submit(request(0))
    await launcher.wait_for(lambda: launcher.processes[0].batches)
    queued = [pool.submit(request(n)) for n in (1, 2)]

    pool.scale(0)

    with trio.fail_after(60):
        for job in queued:
            with pytest.raises(ModelUnavailable, match="no worker"):
                await job.wait()
    with pytest.raises(ModelUnavailable, match="no worker"):
        pool.submit(request(3))
    assert (await in_flight.wait()).body == b"body 0"


async def test_unload_without_grace_answers_queued_503_and_finishes_the_batch_in_flight(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    launcher = FakeLauncher(nursery, default=Behaviour(infer=sleep_then_echo(10)))
    async with open_supervisor(launcher=launcher) as sup:
        await sup.load_model(model(job_queue_size=10))
        pool = sup.pool("m")
        in_flight = pool.submit(request(0))
        fake = launcher.processes[0]
        await launcher.wait_for(lambda: fake.batches)
        queued = [pool.submit(request(n)) for n in (1, 2)]
        start = trio.current_time()

        async with trio.open_nursery() as unloading:
            unloading.start_soon(partial(sup.unload, "m", grace=0))
            for job in queued:
                with pytest.raises(ModelUnavailable, match="unloaded") as excinfo:
                    await job.wait()
                assert excinfo.value.status == 503
            assert trio.current_time() == start
            with pytest.raises(ModelUnavailable):
                pool.submit(request(3))
            assert (await in_flight.wait()).body == b"body 0"
            assert trio.current_time() == pytest.approx(start + 10)
            await pool.wait_stopped()

        assert pool.state is ModelState.STOPPED
        assert fake.returncode == 0
        assert non_ping(fake)[-1] is Kind.SHUTDOWN
        assert fake.batches == [["r0"]]
        with pytest.raises(ModelNotFound):
            sup.pool("m")


async def test_cancelling_the_pool_answers_every_job_and_ends_every_worker(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    launcher = FakeLauncher(nursery, default=Behaviour(infer=sleep_then_echo(10)))
    async with trio.open_nursery() as pools:
        pool = await start_pool(pools, launcher, model(workers=2, job_queue_size=10))
        jobs = [pool.submit(request(n)) for n in range(6)]
        await launcher.wait_for(lambda: all(p.batches for p in launcher.processes))
        pools.cancel_scope.cancel()

    for job in jobs:
        with pytest.raises(ModelUnavailable):
            await job.wait()
    assert pool.state is ModelState.STOPPED
    assert [p.returncode for p in launcher.processes] == [-signal.SIGTERM] * 2


async def test_supervisor_predicts_through_a_fake_worker(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    launcher = FakeLauncher(nursery)
    async with open_supervisor(launcher=launcher) as sup:
        stats = await sup.load_model(model(workers=2))

        reply = await sup.predict("m", b"[1, 2]")

        assert stats.state == "READY"
        assert [w.state for w in stats.workers] == ["READY", "READY"]
        assert reply.ok
        assert reply.body == b"[1, 2]"
    assert [p.returncode for p in launcher.processes] == [0, 0]


def _answer_counter(monkeypatch: pytest.MonkeyPatch) -> Counter[int]:
    """Count every resolve() and fail() call per job, including ignored repeats."""
    calls: Counter[int] = Counter()
    resolve, fail = Job.resolve, Job.fail

    def counted_resolve(job: Job, reply: ReplyItem) -> None:
        calls[id(job)] += 1
        resolve(job, reply)

    def counted_fail(job: Job, error: SupervisorError) -> None:
        calls[id(job)] += 1
        fail(job, error)

    monkeypatch.setattr(Job, "resolve", counted_resolve)
    monkeypatch.setattr(Job, "fail", counted_fail)
    return calls


def _random_behaviour(rng: random.Random) -> Behaviour:
    """An incarnation that may die at any moment and whose batches may crash or hang."""
    crash_rate, hang_rate = rng.uniform(0, 0.2), rng.uniform(0, 0.05)

    async def infer(proc: FakeProcess, items: list[InferItem]) -> list[ReplyItem]:
        roll = rng.random()
        if roll < crash_rate:
            return await crash(proc, items)
        if roll < crash_rate + hang_rate:
            return await hang(proc, items)
        await trio.sleep(rng.uniform(0, 0.3))
        return echo_replies(items)

    return Behaviour(
        load="fail" if rng.random() < 0.1 else "ready",
        infer=infer,
        pong=rng.random() < 0.95,
        lifetime=rng.uniform(0.1, 8) if rng.random() < 0.5 else None,
        term_delay=rng.choice([0, 0, 0.5, 3]),
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_every_accepted_request_is_answered_exactly_once(
    autojump_clock: MockClock, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    rng = random.Random(seed)
    calls = _answer_counter(monkeypatch)
    launcher = FakeLauncher(nursery, [_random_behaviour(rng) for _ in range(200)])
    policy = RestartPolicy(max_restarts=10_000, window=1, backoff_initial=0.05, backoff_max=0.5)
    config = model(
        workers=3, batch_size=4, max_batch_delay=0.02, job_queue_size=20, response_timeout=2,
        heartbeat_interval=0.5, heartbeat_timeout=1, stop_grace=1, restart=policy,
    )  # fmt: skip
    pool = Pool(config, launcher, random.Random(seed))
    await nursery.start(pool.run)
    accepted: list[Job] = []
    for n in range(400):
        if rng.random() < 0.3:
            await trio.sleep(rng.uniform(0, 0.2))
        with contextlib.suppress(ModelUnavailable):  # a full queue refuses: not accepted
            accepted.append(pool.submit(request(n)))
        if rng.random() < 0.02:
            pool.scale(rng.randint(1, 3))

    with trio.fail_after(600):
        for job in accepted:
            try:
                reply = await job.wait()
            except SupervisorError:
                assert job.reply is None
            else:
                assert job.error is None
                assert (reply.request_id, reply.ok) == (job.item.request_id, True)
                assert reply.body == job.item.params["body"][1]

    assert len(accepted) > 100
    assert all(job.answered for job in accepted)
    assert [calls[id(job)] for job in accepted] == [1] * len(accepted)
    assert sum(job.reply is not None for job in accepted) > len(accepted) // 2
    assert len(launcher.processes) > 5  # it really restarted workers
    assert pool.state is not ModelState.FAILED


async def test_a_job_taken_by_a_dying_worker_goes_to_an_idle_one(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    stopped = Behaviour(pong=False, term_delay=1.0)  # w2, killed by the heartbeat
    slow_to_load = Behaviour(load="hang")  # w2's next incarnation
    launcher = FakeLauncher(nursery, [Behaviour(), stopped, slow_to_load])
    config = model(heartbeat_interval=1, heartbeat_timeout=3, startup_timeout=30)
    pool = await start_pool(nursery, launcher, config)
    pool.scale(2)
    await pool.wait_ready(2)
    await pool.submit(request(0)).wait()  # w1 serves it; w2 now waits first in line
    await launcher.wait_for(lambda: signal.SIGTERM in launcher.processes[1].signals)

    job = pool.submit(request(1))

    with trio.fail_after(1):
        assert (await job.wait()).body == b"body 1"
    assert launcher.processes[0].batches == [["r0"], ["r1"]]
