"""An in-process fake worker that speaks the real protocol, for pool tests.

``FakeLauncher.launch`` returns a ``FakeProcess``: the supervisor's end of a
``memory_stream_pair``, a memory log stream, and a fake worker task that runs
in the nursery the test handed to the launcher. The task decodes frames with
``handlers.protocol`` and answers them the way ``handlers.runtime`` does: PINGs
at once (even during a batch), batches one at a time, SHUTDOWN after the batch
in flight. What each incarnation does is scripted by a ``Behaviour``; the
launcher consumes one per launch. Nothing here touches the OS, so the tests
run under ``autojump_clock`` in virtual time.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Awaitable, Callable, Iterable
from typing import Literal

import attrs
import trio
import trio.testing

from handlers.protocol import (
    Decoder,
    InferItem,
    Kind,
    Message,
    ReplyItem,
    decode_infer,
    encode,
    encode_part,
    encode_reply,
)

__all__ = [
    "Behaviour",
    "FakeLauncher",
    "FakeProcess",
    "crash",
    "echo",
    "echo_replies",
    "hang",
    "sleep_then_echo",
]

Infer = Callable[["FakeProcess", list[InferItem]], Awaitable[list[ReplyItem]]]


def echo_replies(items: list[InferItem]) -> list[ReplyItem]:
    """One ``ok`` reply per item whose body is the item's ``body`` parameter."""
    return [ReplyItem(it.request_id, ok=True, body=it.params["body"][1]) for it in items]


async def echo(proc: FakeProcess, items: list[InferItem]) -> list[ReplyItem]:
    """Answer at once with the request bodies."""
    await trio.lowlevel.checkpoint()
    return echo_replies(items)


def sleep_then_echo(seconds: float) -> Infer:
    """A batch that takes ``seconds`` of (virtual) time, then echoes."""

    async def infer(proc: FakeProcess, items: list[InferItem]) -> list[ReplyItem]:
        await trio.sleep(seconds)
        return echo_replies(items)

    return infer


async def hang(proc: FakeProcess, items: list[InferItem]) -> list[ReplyItem]:
    """Never answer the batch (the process itself stays alive and answers PINGs)."""
    await trio.sleep_forever()
    raise AssertionError("unreachable")


async def crash(proc: FakeProcess, items: list[InferItem]) -> list[ReplyItem]:
    """Die by SIGKILL mid-batch, as the OOM killer would, after one last log line."""
    proc.log(f"fake[{proc.pid}]: CUDA out of memory in batch of {len(items)}")
    proc.exit(-signal.SIGKILL)
    await trio.sleep_forever()
    raise AssertionError("unreachable")


@attrs.frozen
class Behaviour:
    """What one incarnation of the fake does.

    Attributes:
        load: answer LOAD with READY, with LOAD_FAILED (then exit 1 at once), or never.
        infer: turns each batch into its replies.
        pong: answer PINGs; false plays a stopped (SIGSTOPped) process.
        lifetime: die by SIGKILL this many seconds after launch, whatever it is doing.
        term_delay: seconds a SIGTERM takes to end the process (SIGKILL is instant).
        spawn_error: ``launch`` raises this instead of starting a process.
    """

    load: Literal["ready", "fail", "hang"] = "ready"
    infer: Infer = echo
    pong: bool = True
    lifetime: float | None = None
    term_delay: float = 0.0
    spawn_error: OSError | None = None


class FakeProcess:
    """One fake worker process; it has the ``WorkerProcess`` shape.

    Args:
        pid: a made-up process id.
        behaviour: what this incarnation does.
        on_change: called whenever something a test may wait for happened.
    """

    def __init__(self, pid: int, behaviour: Behaviour, on_change: Callable[[], None]) -> None:
        self.pid = pid
        self.behaviour = behaviour
        supervisor_end, self._end = trio.testing.memory_stream_pair()
        self.stream: trio.abc.Stream = supervisor_end
        self._log = trio.testing.MemoryReceiveStream()
        self.logs: trio.abc.ReceiveStream | None = self._log
        self.returncode: int | None = None
        self.started_at = trio.current_time()
        self.ended_at: float | None = None
        self.received: list[Kind] = []
        self.batches: list[list[str]] = []
        self.signals: list[int] = []
        self._on_change = on_change
        self._exited = trio.Event()
        self._scope = trio.CancelScope()
        self._send_lock = trio.Lock()
        self._stopping = False
        self._tasks: trio.Nursery | None = None
        self._batch_id: int | None = None

    async def wait(self) -> int:
        """Wait until the fake process ended; its return code."""
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def poll(self) -> int | None:
        """The return code once ended, else None."""
        return self.returncode

    def signal_group(self, signum: int) -> None:
        """SIGKILL ends the process now, SIGTERM after ``term_delay``; others do nothing."""
        self.signals.append(signum)
        if self.returncode is not None or signum not in (signal.SIGTERM, signal.SIGKILL):
            return
        if signum == signal.SIGKILL or not self.behaviour.term_delay or self._tasks is None:
            self.exit(-signum)
        else:
            self._tasks.start_soon(self._exit_after, self.behaviour.term_delay, -signum)

    def log(self, line: str) -> None:
        """Write one line to the process's log (its merged stdout and stderr)."""
        if self.returncode is None:
            self._log.put_data(f"{line}\n".encode())

    def exit(self, returncode: int) -> None:
        """End the process: its streams close and ``wait`` returns ``returncode``."""
        if self.returncode is not None:
            return
        self.returncode = returncode
        self.ended_at = trio.current_time()
        self._scope.cancel()  # first: the fake's own tasks see Cancelled, not closed streams
        self._end.send_stream.close()  # the supervisor reads EOF
        self._end.receive_stream.close()  # and its sends fail from now on
        self._log.put_eof()
        self._exited.set()
        self._on_change()

    async def run(self) -> None:
        """The fake's main: read frames, run batches, until it ends."""
        try:
            with self._scope:
                async with trio.open_nursery() as self._tasks:
                    try:
                        await self._serve(self._tasks)
                    finally:
                        self._tasks = None  # closing: a SIGTERM now ends it at once
        finally:
            self.exit(-signal.SIGKILL)  # the test ended, or the supervisor hung up

    async def _serve(self, tasks: trio.Nursery) -> None:
        inbox_send, inbox = trio.open_memory_channel[Message | None](math.inf)
        tasks.start_soon(self._run_batches, inbox)
        if self.behaviour.lifetime is not None:
            tasks.start_soon(self._exit_after, self.behaviour.lifetime, -signal.SIGKILL)
        await self._read_frames(inbox_send)

    async def _read_frames(self, inbox: trio.MemorySendChannel[Message | None]) -> None:
        decoder = Decoder()
        while data := await self._end.receive_some():
            for message in decoder.feed(bytes(data)):
                self.received.append(message.kind)
                self._on_change()
                await self._on_message(message, inbox)
        if not self._stopping:
            self.exit(-signal.SIGKILL)  # like the runtime: EOF means the supervisor died
        await trio.sleep_forever()  # a polite stop: the batch in flight finishes first

    async def _on_message(
        self, message: Message, inbox: trio.MemorySendChannel[Message | None]
    ) -> None:
        if message.kind is Kind.LOAD:
            await self._load()
        elif message.kind is Kind.PING and self.behaviour.pong:
            await self._send(encode(Message(Kind.PONG, message.header)))
        elif message.kind is Kind.INFER:
            inbox.send_nowait(message)
        elif message.kind is Kind.SHUTDOWN:
            self._stopping = True
            inbox.send_nowait(None)

    async def _load(self) -> None:
        if self.behaviour.load == "ready":
            self.log(f"fake[{self.pid}]: loaded")
            await self._send(encode(Message(Kind.READY, {"pid": self.pid})))
        elif self.behaviour.load == "fail":
            self.log(f"fake[{self.pid}]: ModuleNotFoundError: No module named 'fake'")
            failure = {"message": "ModuleNotFoundError: No module named 'fake'"}
            await self._send(encode(Message(Kind.LOAD_FAILED, failure)))
            self.exit(1)  # at once: the reason must still be the LOAD_FAILED one

    async def _run_batches(self, inbox: trio.MemoryReceiveChannel[Message | None]) -> None:
        async for message in inbox:
            if message is None:
                self.exit(0)
                return
            batch_id, items = decode_infer(message)
            self._batch_id = batch_id
            self.batches.append([item.request_id for item in items])
            self._on_change()
            replies = await self.behaviour.infer(self, items)
            await self._send(encode_reply(batch_id, replies))

    async def send_parts(self, parts: list[ReplyItem]) -> None:
        """Send intermediate answers for the batch being run (a streamed answer)."""
        assert self._batch_id is not None
        await self._send(encode_part(self._batch_id, parts))

    async def _send(self, frame: bytes) -> None:
        try:
            async with self._send_lock:
                await self._end.send_all(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the supervisor hung up; the reader sees EOF and ends the process

    async def _exit_after(self, seconds: float, returncode: int) -> None:
        await trio.sleep(seconds)
        self.exit(returncode)


class FakeLauncher:
    """Launches fake workers; it has the ``Launcher`` shape.

    Args:
        nursery: where the fake processes run (it must outlive the pool).
        behaviours: one per launch, in order; then ``default`` for every later launch.
        default: the behaviour once ``behaviours`` is used up.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        behaviours: Iterable[Behaviour] = (),
        default: Behaviour | None = None,
    ) -> None:
        self.behaviours = list(behaviours)
        self.default = default or Behaviour()
        self.processes: list[FakeProcess] = []
        self._nursery = nursery
        self._changed = trio.Event()

    async def launch(self, env: dict[str, str]) -> FakeProcess:
        """Start the next scripted fake process."""
        await trio.lowlevel.checkpoint()
        behaviour = self.behaviours.pop(0) if self.behaviours else self.default
        if behaviour.spawn_error is not None:
            raise behaviour.spawn_error
        proc = FakeProcess(1000 + len(self.processes), behaviour, self._notify)
        self.processes.append(proc)
        self._nursery.start_soon(proc.run)
        self._notify()
        return proc

    def by_pid(self, pid: int | None) -> FakeProcess:
        """The fake process with that pid."""
        return next(p for p in self.processes if p.pid == pid)

    async def wait_for(self, predicate: Callable[[], object]) -> None:
        """Wait until ``predicate()`` is true, checked after each fake event."""
        while not predicate():
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
