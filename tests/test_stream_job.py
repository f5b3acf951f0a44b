"""Streamed answers without processes: the Job's part buffer, and the pool against the
fake worker in virtual time (per-part response timeout, parts routed by request id)."""

from __future__ import annotations

import random
import signal

import pytest
import trio
from trio.testing import MockClock

from handlers.protocol import InferItem, ReplyItem
from supervisor.config import MIB, ModelConfig
from supervisor.errors import DeadlineExceeded, StreamFailed, WorkerDied, WorkerTimeout
from supervisor.supervision.batching import STREAM_MAX_BYTES, STREAM_MAX_PARTS, Job
from supervisor.supervision.pool import Pool
from tests.fakeworker import Behaviour, FakeLauncher, FakeProcess, crash, echo_replies

# --- the Job on its own


def job(n: int = 1) -> Job:
    return Job(InferItem(f"r{n}", {}, {"body": ("", b"")}))


def part(body: bytes, request_id: str = "r1", *, ok: bool = True, status: int = 200) -> ReplyItem:
    return ReplyItem(request_id, ok=ok, status=status, body=body, message="" if ok else "boom")


async def read_all(j: Job) -> list[bytes]:
    bodies = [(await j.wait()).body]
    while (p := await j.next_part()) is not None:
        bodies.append(p.body)
    return bodies


async def test_a_reply_alone_is_not_a_stream() -> None:
    j = job()
    j.resolve(part(b"whole"))
    assert (await j.wait()).body == b"whole"
    assert not j.streamed
    assert await j.next_part() is None
    assert j.answered


async def test_parts_then_the_reply_are_read_in_order_then_none() -> None:
    j = job()
    for body in (b"hello ", b"hello "):
        j.add_part(part(body))
    assert j.streamed
    assert not j.answered
    j.resolve(part(b"world "))
    assert j.answered
    assert await read_all(j) == [b"hello ", b"hello ", b"world "]
    assert await j.next_part() is None
    assert j.reply is not None
    assert j.reply.body == b"world "


async def test_the_reader_waits_for_each_part(nursery: trio.Nursery) -> None:
    j = job()
    got: list[bytes] = []
    done = trio.Event()

    async def reader() -> None:
        got.extend(await read_all(j))
        done.set()

    nursery.start_soon(reader)
    for n in range(3):
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        j.add_part(part(f"{n}".encode()))
    j.resolve(part(b"end"))
    await done.wait()
    assert got == [b"0", b"1", b"2", b"end"]


async def test_a_failed_first_part_is_the_whole_answer() -> None:
    j = job()
    j.add_part(part(b"", ok=False, status=503))
    j.add_part(part(b"late"))
    j.resolve(part(b"final"))
    reply = await j.wait()
    assert (reply.ok, reply.status, j.streamed) == (False, 503, False)
    assert await j.next_part() is None


@pytest.mark.parametrize("how", ["part", "reply"])
async def test_a_failed_later_part_fails_the_stream_with_its_status(how: str) -> None:
    j = job()
    j.add_part(part(b"first"))
    assert (await j.wait()).body == b"first"
    j.add_part(part(b"second"))
    failed = part(b"", ok=False, status=507)
    j.add_part(failed) if how == "part" else j.resolve(failed)
    with pytest.raises(StreamFailed) as caught:
        await j.next_part()
    assert caught.value.status == 507
    assert "boom" in caught.value.message
    with pytest.raises(StreamFailed):  # it stays failed
        await j.next_part()


async def test_a_worker_failure_midway_drops_the_waiting_parts() -> None:
    j = job()
    j.add_part(part(b"first"))
    await j.wait()
    j.add_part(part(b"lost"))
    j.fail(WorkerDied("gone"))
    j.resolve(part(b"too late"))
    with pytest.raises(WorkerDied):
        await j.next_part()


async def test_a_failure_before_the_first_read_is_raised_by_wait() -> None:
    j = job()
    j.add_part(part(b"first"))
    j.fail(WorkerTimeout("silent"))
    with pytest.raises(WorkerTimeout):
        await j.wait()


async def test_more_parts_than_the_bound_fail_the_stream() -> None:
    j = job()
    for _ in range(STREAM_MAX_PARTS):
        j.add_part(part(b"x"))
    assert not j.answered
    j.add_part(part(b"one too many"))
    assert j.answered
    with pytest.raises(StreamFailed, match=f"more than {STREAM_MAX_PARTS} parts"):
        await j.wait()


async def test_more_bytes_than_the_bound_fail_the_stream() -> None:
    j = job()
    big = b"x" * (STREAM_MAX_BYTES // 2)
    j.add_part(part(big))
    j.add_part(part(big))
    assert not j.answered
    j.add_part(part(b"y"))
    with pytest.raises(StreamFailed, match="16 MiB"):
        await j.wait()


async def test_one_part_larger_than_the_byte_bound_gets_through() -> None:
    j = job()
    j.add_part(part(b"x" * (20 * MIB)))
    assert len((await j.wait()).body) == 20 * MIB
    j.resolve(part(b"end"))
    assert (await j.next_part()) == part(b"end")


async def test_a_reader_that_keeps_up_never_hits_the_bound() -> None:
    j = job()
    j.add_part(part(b"0"))
    await j.wait()
    for n in range(1, 10 * STREAM_MAX_PARTS):
        j.add_part(part(b"p" * MIB))
        assert (await j.next_part()) is not None, n
    j.resolve(part(b"end"))
    assert (await j.next_part()) == part(b"end")


async def test_a_reader_that_leaves_drops_the_rest() -> None:
    j = job()
    j.add_part(part(b"first"))
    await j.wait()
    with trio.move_on_after(0.01):
        await j.next_part()
    assert j.answered
    assert isinstance(j.error, DeadlineExceeded)
    j.add_part(part(b"dropped"))
    j.resolve(part(b"dropped too"))
    assert j.reply is None


# --- the pool and a fake worker that streams, in virtual time


def model(**settings: object) -> ModelConfig:
    return ModelConfig(name="m", handler="fake", **settings)  # type: ignore[arg-type]


async def start_pool(nursery: trio.Nursery, launcher: FakeLauncher, config: ModelConfig) -> Pool:
    pool = Pool(config, launcher, random.Random(0))
    await nursery.start(pool.run)
    await pool.wait_ready()
    return pool


def request(n: int) -> InferItem:
    return InferItem(f"r{n}", {}, {"body": ("", f"body {n}".encode())})


def ticker(parts: int, every: float):
    """A batch that streams ``parts`` parts, ``every`` seconds apart, then echoes."""

    async def infer(proc: FakeProcess, items: list[InferItem]) -> list[ReplyItem]:
        for n in range(parts):
            await proc.send_parts([part(f"{n},".encode(), it.request_id) for it in items])
            await trio.sleep(every)
        return echo_replies(items)

    return infer


async def test_a_stream_longer_than_response_timeout_succeeds_if_parts_keep_coming(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    launcher = FakeLauncher(nursery, default=Behaviour(infer=ticker(5, every=4.0)))
    pool = await start_pool(nursery, launcher, model(response_timeout=5.0))
    start = trio.current_time()
    j = pool.submit(request(1))
    assert await read_all(j) == [b"0,", b"1,", b"2,", b"3,", b"4,", b"body 1"]
    assert trio.current_time() - start == pytest.approx(20.0)
    assert pool.slots[0].incarnation == 1


async def test_a_stream_that_goes_silent_gets_504_one_timeout_after_its_last_part(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    launcher = FakeLauncher(nursery, [Behaviour(infer=ticker(3, every=3600.0))])
    pool = await start_pool(nursery, launcher, model(response_timeout=5.0))
    j = pool.submit(request(1))
    assert (await j.wait()).body == b"0,"
    silent_since = trio.current_time()
    with pytest.raises(WorkerTimeout) as caught:
        await j.next_part()
    assert caught.value.status == 504
    assert trio.current_time() - silent_since == pytest.approx(5.0)
    await launcher.wait_for(lambda: len(launcher.processes) == 2)
    await pool.wait_ready()
    assert pool.slots[0].incarnation == 2
    assert launcher.processes[0].returncode == -signal.SIGTERM


async def test_a_worker_dying_midway_fails_the_stream(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    async def part_then_crash(proc: FakeProcess, items: list[InferItem]) -> list[ReplyItem]:
        await proc.send_parts([part(b"first", it.request_id) for it in items])
        await trio.sleep(1)
        return await crash(proc, items)

    launcher = FakeLauncher(nursery, [Behaviour(infer=part_then_crash)])
    pool = await start_pool(nursery, launcher, model())
    j = pool.submit(request(1))
    assert (await j.wait()).body == b"first"
    with pytest.raises(WorkerDied) as caught:
        await j.next_part()
    assert caught.value.status == 507


async def test_parts_of_a_batch_go_to_their_own_jobs(
    autojump_clock: MockClock, nursery: trio.Nursery
) -> None:
    async def per_request(proc: FakeProcess, items: list[InferItem]) -> list[ReplyItem]:
        await trio.sleep(1)  # let the second request join the batch
        for n in range(2):
            parts = [part(b"%s-%d " % (it.params["body"][1], n), it.request_id) for it in items]
            await proc.send_parts([*parts, part(b"nobody's", "unknown")])
        await proc.send_parts([part(b"only r2 ", "r2")])
        return echo_replies(items)

    launcher = FakeLauncher(nursery, default=Behaviour(infer=per_request))
    config = model(batch_size=2, max_batch_delay=0.5)
    pool = await start_pool(nursery, launcher, config)
    busy = pool.submit(request(0))
    await launcher.wait_for(lambda: launcher.processes[0].batches)
    jobs = [pool.submit(request(1)), pool.submit(request(2))]
    await read_all(busy)
    got = [await read_all(j) for j in jobs]
    assert launcher.processes[0].batches[1] == ["r1", "r2"]
    assert got[0] == [b"body 1-0 ", b"body 1-1 ", b"body 1"]
    assert got[1] == [b"body 2-0 ", b"body 2-1 ", b"only r2 ", b"body 2"]
