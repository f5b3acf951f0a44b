"""Jobs (one per request) and how a worker slot gathers them into batches.

A request that reaches an idle worker goes at once: the worker was already
waiting, so it takes the job and whatever else is queued right now, and never
waits out ``max_batch_delay``. A worker that comes back from a batch and finds
jobs waiting is under load: it takes what is queued and then waits up to
``max_batch_delay`` for the batch to fill to ``batch_size``.

A job's answer is one reply, or a stream: intermediate parts, then the final
reply as the last part. ``Job.wait`` returns the reply or the first part;
``Job.next_part`` the parts after it. Parts wait for their reader in a bounded
buffer (``STREAM_MAX_PARTS``, ``STREAM_MAX_BYTES``), so a slow reader never
blocks the worker's read loop: past the bound the stream fails and the rest of
it is dropped.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable

import attrs
import trio

from handlers.protocol import InferItem, ReplyItem
from supervisor.config import MIB
from supervisor.errors import DeadlineExceeded, StreamFailed, SupervisorError

__all__ = ["STREAM_MAX_BYTES", "STREAM_MAX_PARTS", "Job", "fill_batch", "live", "take_first"]

STREAM_MAX_PARTS = 64
"""Parts of one streamed answer that may wait for their reader; one more fails the stream."""

STREAM_MAX_BYTES = 16 * MIB
"""Bytes of parts that may wait for their reader; a part that would pass it fails the
stream, unless nothing else is waiting (one large part always gets through)."""


class _Parts:
    """The parts of a streamed answer waiting for their (single) reader, bounded."""

    def __init__(self) -> None:
        self._queue: collections.deque[ReplyItem] = collections.deque()
        self._bytes = 0
        self._arrived = trio.Event()

    def put(self, part: ReplyItem) -> bool:
        """Queue ``part`` and wake the reader; False (nothing queued) past the bound."""
        size = len(part.body)
        if self._queue and (
            len(self._queue) >= STREAM_MAX_PARTS or self._bytes + size > STREAM_MAX_BYTES
        ):
            return False
        self._queue.append(part)
        self._bytes += size
        self._arrived.set()
        return True

    def take(self) -> ReplyItem | None:
        """The oldest part waiting, or None."""
        if not self._queue:
            return None
        part = self._queue.popleft()
        self._bytes -= len(part.body)
        return part

    def drop(self) -> None:
        """Forget every part waiting and wake the reader (the stream ended early)."""
        self._queue.clear()
        self._bytes = 0
        self._arrived.set()

    def wake(self) -> None:
        """Wake the reader (the stream is complete)."""
        self._arrived.set()

    async def wait_arrival(self) -> None:
        """Wait for the next ``put``, ``drop`` or ``wake``."""
        self._arrived = trio.Event()
        await self._arrived.wait()


@attrs.define(eq=False)
class Job:
    """One request waiting for its answer; it is answered exactly once.

    Attributes:
        item: what the worker gets.
        enqueued_at: ``trio.current_time()`` when it was queued.
        deadline: ``trio.current_time()`` after which the first answer is no longer wanted.
        reply: the worker's final reply (a stream's last part), once there is one.
        error: the failure, if it failed instead.
        streamed: True once the first answer was an intermediate part.
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
    streamed: bool = False
    _first: trio.Event = attrs.field(factory=trio.Event)  # a part, the reply or an error came
    _finished: bool = False  # the reply or an error came: nothing more will
    _parts: _Parts | None = None  # only for a streamed answer

    @property
    def answered(self) -> bool:
        """Whether the job has its whole answer (the final reply or an error)."""
        return self._finished

    def add_part(self, part: ReplyItem) -> None:
        """An intermediate answer arrived (ignored once the job is answered).

        A failed first part is the whole answer; a failed later part fails the stream.
        """
        if self._finished:
            return
        if self._parts is None:
            if not part.ok:
                self._finish(reply=part)
                return
            self.streamed = True
            self._parts = _Parts()
        self._queue(part)
        self._first.set()

    def resolve(self, reply: ReplyItem) -> None:
        """Answer with the worker's final reply (ignored if already answered)."""
        if self._finished:
            return
        if self._parts is not None:
            self._queue(reply)  # the last part of the stream
            if self._finished:
                return  # it failed the stream instead
        self._finish(reply=reply)

    def fail(self, error: SupervisorError) -> None:
        """Answer with an error (ignored if answered); a stream's waiting parts are dropped."""
        if not self._finished:
            self._finish(error=error)

    def _queue(self, part: ReplyItem) -> None:
        assert self._parts is not None
        if not part.ok:
            failure = f"the handler failed after streaming part of the answer: {part.message}"
            self._finish(error=StreamFailed(failure, status=part.status))
        elif not self._parts.put(part):
            self._finish(
                error=StreamFailed(
                    f"the streamed answer's reader fell behind: more than {STREAM_MAX_PARTS} "
                    f"parts or {STREAM_MAX_BYTES // MIB} MiB were waiting; the rest was dropped"
                )
            )

    def _finish(
        self, *, reply: ReplyItem | None = None, error: SupervisorError | None = None
    ) -> None:
        self.reply, self.error = reply, error
        self._finished = True
        if self._parts is not None:
            if error is None:
                self._parts.wake()
            else:
                self._parts.drop()
        self._first.set()

    async def wait(self) -> ReplyItem:
        """Wait for the answer (until the deadline): the reply, or a stream's first part.

        If the caller is cancelled (its client went away), the job is given up:
        a worker that has not taken it yet never will.

        Raises:
            SupervisorError: the job failed (a stream that failed before this call
                raises its failure too).
        """
        try:
            if self.deadline == math.inf:
                await self._first.wait()
            else:
                with trio.move_on_at(self.deadline):
                    await self._first.wait()
        except BaseException:
            if not self.answered:
                self.fail(DeadlineExceeded("the client went away before the answer"))
            raise
        if not self._first.is_set():
            self.fail(DeadlineExceeded("the request's deadline passed before it was answered"))
        if self.streamed:
            first = self._take()
            assert first is not None
            return first
        if self.error is not None:
            raise self.error
        assert self.reply is not None
        return self.reply

    async def next_part(self) -> ReplyItem | None:
        """The next part of a streamed answer, after ``wait`` returned its first one.

        The last part is the handler's final reply; after it, None. A job whose
        answer is not streamed has no next part: None. Each part arrives within
        ``response_timeout`` of the one before, or the worker is replaced and the
        stream fails. If the caller is cancelled, the rest of the stream is dropped.

        Raises:
            SupervisorError: the stream failed midway (``WorkerDied``,
                ``WorkerTimeout``, or ``StreamFailed``: the handler failed, or the
                reader fell behind).
        """
        parts = self._parts
        if parts is None:
            return None
        while (part := self._take()) is None and not self._finished:
            try:
                await parts.wait_arrival()
            except BaseException:
                self.fail(DeadlineExceeded("the client went away during the streamed answer"))
                raise
        return part

    def _take(self) -> ReplyItem | None:
        assert self._parts is not None
        part = self._parts.take()
        if part is None and self.error is not None:
            raise self.error
        return part

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
