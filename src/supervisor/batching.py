"""Jobs (one per request) and how a worker slot gathers them into batches.

A request that reaches an idle worker goes at once: the worker was already
waiting, so it takes the job and whatever else is queued right now, and never
waits out ``max_batch_delay``. A worker that comes back from a batch and finds
jobs waiting is under load: it takes what is queued and then waits up to
``max_batch_delay`` for the batch to fill to ``batch_size``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs
import trio

from handlers.protocol import InferItem, ReplyItem
from supervisor.errors import DeadlineExceeded, SupervisorError

__all__ = ["Job", "fill_batch", "live", "take_first"]


@attrs.define(eq=False)
class Job:
    """One request waiting for its answer; it is answered exactly once.

    Attributes:
        item: what the worker gets.
        enqueued_at: ``trio.current_time()`` when it was queued.
        deadline: ``trio.current_time()`` after which the answer is no longer wanted.
        reply: the worker's answer, once there is one.
        error: the failure, if it failed instead.
        dispatched_at: ``trio.current_time()`` when it went to a worker.
        gone: says whether the client has gone away (checked before dispatch);
            a job whose client is gone is dropped.
    """

    item: InferItem
    deadline: float = math.inf
    enqueued_at: float = attrs.field(factory=trio.current_time)
    reply: ReplyItem | None = None
    error: SupervisorError | None = None
    dispatched_at: float | None = None
    gone: Callable[[], bool] | None = None
    _done: trio.Event = attrs.field(factory=trio.Event)

    @property
    def answered(self) -> bool:
        """Whether the job has its answer (a reply or an error)."""
        return self._done.is_set()

    def resolve(self, reply: ReplyItem) -> None:
        """Answer with the worker's reply (ignored if already answered)."""
        if not self._done.is_set():
            self.reply = reply
            self._done.set()

    def fail(self, error: SupervisorError) -> None:
        """Answer with an error (ignored if already answered)."""
        if not self._done.is_set():
            self.error = error
            self._done.set()

    async def wait(self) -> ReplyItem:
        """Wait for the answer (until the deadline); return the reply or raise the error.

        If the caller is cancelled (its client went away), the job is given up:
        a worker that has not taken it yet never will.
        """
        try:
            if self.deadline == math.inf:
                await self._done.wait()
            else:
                with trio.move_on_at(self.deadline):
                    await self._done.wait()
        except BaseException:
            if not self.answered:
                self.fail(DeadlineExceeded("the client went away before the answer"))
            raise
        if not self.answered:
            self.fail(DeadlineExceeded("the request's deadline passed before it was answered"))
        if self.error is not None:
            raise self.error
        assert self.reply is not None
        return self.reply

    def expired(self, now: float) -> bool:
        """Whether the job should not go to a worker any more (answered or too late)."""
        if self.answered:
            return True
        if now >= self.deadline:
            self.fail(DeadlineExceeded("the request's deadline passed before a worker took it"))
        elif self.gone is not None and self.gone():
            self.fail(DeadlineExceeded("the client went away before a worker took it"))
        return self.answered


def live(batch: list[Job]) -> list[Job]:
    """The jobs of ``batch`` that still want an answer; late ones are answered 504."""
    now = trio.current_time()
    return [job for job in batch if not job.expired(now)]


async def take_first(receive: trio.MemoryReceiveChannel[Job]) -> tuple[Job, bool]:
    """Take the next job; also say whether it was already waiting (load).

    Cancel-safe: when cancelled, no job has been taken.
    """
    try:
        return receive.receive_nowait(), True
    except trio.WouldBlock:
        return await receive.receive(), False


async def fill_batch(
    receive: trio.MemoryReceiveChannel[Job],
    batch: list[Job],
    *,
    batch_size: int,
    max_delay: float,
    under_load: bool,
) -> None:
    """Add jobs to ``batch`` (in place, so none is lost on cancellation).

    Takes whatever is queued now; under load, also waits up to ``max_delay``
    for the batch to reach ``batch_size``.
    """
    try:
        while len(batch) < batch_size:
            batch.append(receive.receive_nowait())
    except (trio.WouldBlock, trio.EndOfChannel):
        pass
    if not under_load or max_delay <= 0:
        return
    with trio.move_on_after(max_delay):
        try:
            while len(batch) < batch_size:
                batch.append(await receive.receive())
        except trio.EndOfChannel:
            pass
