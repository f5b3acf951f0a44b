"""One incarnation of one worker process, from spawn to reaped.

``Worker.run`` is started with ``nursery.start``: it spawns the process, sends
``LOAD`` and reports started only once the worker answered ``READY`` within
``startup_timeout``. A start that fails raises ``WorkerStartFailed`` out of
``start()``. After that the worker serves ``infer`` calls (one batch at a time,
each under ``response_timeout``) and a heartbeat task pings it; a missed
heartbeat, a protocol error, a timeout or the process's exit ends the
incarnation. Every end goes through one shielded teardown: polite ``SHUTDOWN``
(only for a requested stop), SIGTERM to the group, grace, SIGKILL to the group,
wait, sweep. Then ``exit`` holds the record of why it ended, the request in
flight (if any) fails with that record, and ``dead`` is set.
"""

from __future__ import annotations

import enum
import logging
import signal
import time
from collections.abc import Callable

import attrs
import trio

from handlers.protocol import (
    Decoder,
    InferItem,
    Kind,
    Message,
    ProtocolError,
    ReplyItem,
    decode_part,
    decode_reply,
    encode,
    encode_infer,
)
from handlers.runtime import LOG_LEVEL_ENV
from supervisor.config import ModelConfig
from supervisor.errors import SupervisorError, WorkerDied, WorkerStartFailed, WorkerTimeout
from supervisor.supervision.logtail import LogTail
from supervisor.supervision.memwatch import check_memory, watch_memory
from supervisor.supervision.process import Launcher, WorkerProcess
from supervisor.supervision.stats import ExitRecord

__all__ = ["MODEL_LOGGER", "NotDelivered", "Worker", "WorkerState"]

worker_log = logging.getLogger("supervisor.worker")
"""Every line a worker writes, at DEBUG (``--log-level DEBUG`` shows them)."""
MODEL_LOGGER = "supervisor.model"
"""Every line a worker writes, at INFO, for the model log (TorchServe's ``MODEL_LOG``)."""
model_log = logging.getLogger(MODEL_LOGGER)
_METRIC_LINE = "[METRICS]"  # a handler's metric, not a log line (kept out of tail and model log)


class WorkerState(enum.Enum):
    """Where an incarnation is in its life."""

    STARTING = "STARTING"
    READY = "READY"
    BUSY = "BUSY"
    STOPPING = "STOPPING"
    DEAD = "DEAD"


class NotDelivered(Exception):
    """A batch could not even be sent: the worker was already gone. Requeue it."""


PartHandler = Callable[[list[ReplyItem]], None]
"""Takes the intermediate answers of a running batch (a streamed answer's parts)."""


@attrs.define
class _Pending:
    batch_id: int
    on_part: PartHandler | None = None
    done: trio.Event = attrs.field(factory=trio.Event)
    items: list[ReplyItem] = attrs.field(factory=list)
    error: SupervisorError | None = None
    timer: trio.CancelScope = attrs.field(factory=trio.CancelScope)  # response_timeout
    parts: int = 0


class Worker:
    """One incarnation of one worker.

    Args:
        config: the model this worker serves.
        worker_id: the slot's id, stable across incarnations.
        incarnation: 1 for the first process of the slot, then 2, 3, ...
        launcher: starts the process.
        env: extra environment for the process (``CUDA_VISIBLE_DEVICES``).
        gpu_id: the GPU the handler should use (None on CPU).
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        worker_id: str,
        incarnation: int,
        launcher: Launcher,
        env: dict[str, str] | None = None,
        gpu_id: int | None = None,
    ) -> None:
        self.config = config
        self.id = worker_id
        self.incarnation = incarnation
        self.state = WorkerState.STARTING
        self.pid: int | None = None
        self.started_at = time.time()
        self.ready_at: float | None = None
        self.exit: ExitRecord | None = None
        self.log = LogTail(config.log_lines, config.log_bytes, ignore=(_METRIC_LINE,))
        self.dead = trio.Event()
        self.ending = trio.Event()
        self._launcher = launcher
        self._env = env or {}
        self.gpu_id = gpu_id
        self._proc: WorkerProcess | None = None
        self._t0 = trio.current_time()
        self._scope = trio.CancelScope()
        self._stop_reason: str | None = None
        self._stop_requested = False
        self._polite = False
        self._signalled = False  # we sent SIGTERM/SIGKILL ourselves
        self._ready = trio.Event()
        self._load_error: str | None = None
        self._send_lock = trio.Lock()
        self._pending: _Pending | None = None
        self._batches = 0
        self._pong = 0
        self._pong_event = trio.Event()
        self._logs_done = trio.Event()
        self._read_done = trio.Event()

    @property
    def name(self) -> str:
        """``model/version worker-id #incarnation`` for messages."""
        c = self.config
        return f"{c.name}/{c.version} {self.id}#{self.incarnation}"

    def adopt(self, worker_id: str, incarnation: int) -> None:
        """Take a slot's name: a warm spare becomes that slot's next incarnation."""
        self.id = worker_id
        self.incarnation = incarnation

    @property
    def batches(self) -> int:
        """How many batches this incarnation was given."""
        return self._batches

    def stop(self, reason: str = "stopped by the supervisor") -> None:
        """Ask for a polite stop; the current batch (if any) finishes first."""
        self._stop_requested = True
        self._polite = True
        self._end(reason)

    def kill(self, reason: str) -> None:
        """End the incarnation now (no polite shutdown): it is hung or broken."""
        self._end(reason)

    @property
    def serving(self) -> bool:
        """Whether the incarnation takes batches (ready and not ending)."""
        return self.state in (WorkerState.READY, WorkerState.BUSY)

    def _end(self, reason: str) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
        if self.state is not WorkerState.DEAD:
            self.state = WorkerState.STOPPING  # no new batch from now on
        self.ending.set()
        self._scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[Worker] = trio.TASK_STATUS_IGNORED) -> None:
        """Spawn, hand-shake, serve until the end, then tear down and reap."""
        try:
            self._proc = proc = await self._launcher.launch(self._launch_env())
        except OSError as exc:
            self.state = WorkerState.DEAD
            why = f"could not spawn the worker: {exc}"
            self.exit = ExitRecord(why, None, 0.0, time.time(), (), incarnation=self.incarnation)
            self.dead.set()
            raise WorkerStartFailed(f"worker {self.name} could not be spawned: {exc}") from None
        self.pid = proc.pid
        try:
            async with trio.open_nursery() as logs:
                logs.start_soon(self._pump_logs, proc)
                try:
                    await self._supervise(proc, task_status)
                finally:
                    with trio.CancelScope(shield=True):
                        await self._teardown(proc)
                        with trio.move_on_after(1.0):
                            await self._logs_done.wait()
                        logs.cancel_scope.cancel()
        finally:
            self._record_exit(proc)
        if self.ready_at is None:
            raise WorkerStartFailed(
                f"worker {self.name} failed to start: {self.exit.summary() if self.exit else '?'}",
                log_tail=self.log.lines(),
            )

    def _launch_env(self) -> dict[str, str]:
        """The worker's extra environment; its logging level is the server's."""
        level = logging.getLevelName(logging.getLogger("supervisor").getEffectiveLevel())
        return {LOG_LEVEL_ENV: str(level), **self._env}

    async def _supervise(self, proc: WorkerProcess, task_status: trio.TaskStatus[Worker]) -> None:
        with self._scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_exit, proc)
                nursery.start_soon(self._read_loop, proc.stream)
                if limit := self.config.memory_limit_mb:
                    nursery.start_soon(watch_memory, proc.pid, limit, self.kill)
                with trio.move_on_after(self.config.startup_timeout):
                    try:
                        await self._send(encode(Message(Kind.LOAD, self._load_header())))
                    except NotDelivered:
                        return
                    await self._ready.wait()
                if not self._ready.is_set():
                    self.kill(
                        f"no READY within startup_timeout ({self.config.startup_timeout:g} s)"
                    )
                    return
                if await self._over_memory(proc):
                    return
                self.state = WorkerState.READY
                self.ready_at = time.time()
                nursery.start_soon(self._heartbeat)
                task_status.started(self)

    async def _over_memory(self, proc: WorkerProcess) -> bool:
        """Whether the loaded worker is over ``memory_limit_mb`` (then it is ended)."""
        limit = self.config.memory_limit_mb
        why = await check_memory(proc.pid, limit) if limit else None
        if why is not None:
            self.kill(f"{why} (memory_limit_mb) right after loading the model")
        return why is not None

    def _load_header(self) -> dict[str, object]:
        c = self.config
        return {
            "model_name": c.name,
            "model_version": c.version,
            "handler": c.handler,
            "model_dir": c.model_dir,
            "batch_size": c.batch_size,
            "gpu_id": self.gpu_id,
            "config": dict(c.handler_config),
        }

    async def _watch_exit(self, proc: WorkerProcess) -> None:
        await proc.wait()
        with trio.move_on_after(0.5):  # read what it sent last: it may say why it ended
            await self._read_done.wait()
        self._end("the process exited")

    async def _read_loop(self, stream: trio.abc.Stream) -> None:
        decoder = Decoder()
        try:
            while data := await stream.receive_some():
                for message in decoder.feed(bytes(data)):
                    self._on_message(message)
        except ProtocolError as exc:
            self.kill(f"protocol error: {exc}")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._read_done.set()
        proc = self._proc
        assert proc is not None
        with trio.move_on_after(1.0):  # EOF usually means the process died
            await proc.wait()
        if proc.poll() is None:
            self.kill("the worker closed its protocol socket")
        else:
            self._end("the process exited")

    def _on_message(self, message: Message) -> None:
        if message.kind is Kind.READY:
            self._ready.set()
        elif message.kind is Kind.LOAD_FAILED:
            self._load_error = str(message.header.get("message", "unknown error"))
            self._polite = True  # the worker exits by itself after LOAD_FAILED
            self._end(f"the handler failed to load: {self._load_error}")
        elif message.kind is Kind.PONG:
            self._pong = int(message.header.get("seq", 0))
            self._pong_event.set()
        elif message.kind is Kind.REPLY:
            self._on_reply(message)
        elif message.kind is Kind.PART:
            self._on_part(message)
        else:
            self.kill(f"protocol error: unexpected {message.kind.name} from the worker")

    def _on_reply(self, message: Message) -> None:
        batch_id, items = decode_reply(message)
        pending = self._pending
        if pending is None or pending.batch_id != batch_id:
            self.kill(f"protocol error: a reply for batch {batch_id} that was not asked for")
            return
        pending.items = items
        pending.done.set()

    def _on_part(self, message: Message) -> None:
        batch_id, parts = decode_part(message)
        pending = self._pending
        if pending is None or pending.batch_id != batch_id:
            self.kill(f"protocol error: a part for batch {batch_id} that is not running")
            return
        pending.timer.deadline = trio.current_time() + self.config.response_timeout
        pending.parts += 1
        if pending.on_part is not None:
            pending.on_part(parts)

    async def _send(self, frame: bytes) -> None:
        assert self._proc is not None
        try:
            async with self._send_lock:
                await self._proc.stream.send_all(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.kill("the protocol socket is broken")
            raise NotDelivered(self.name) from None

    async def _heartbeat(self) -> None:
        c = self.config
        seq = 0
        while True:
            await trio.sleep(c.heartbeat_interval)
            seq += 1
            with trio.move_on_after(c.heartbeat_timeout):
                try:
                    await self._send(encode(Message(Kind.PING, {"seq": seq})))
                except NotDelivered:
                    return
                while self._pong < seq:
                    self._pong_event = trio.Event()
                    await self._pong_event.wait()
            if self._pong < seq:
                self.kill(f"no heartbeat answer within {c.heartbeat_timeout:g} s (hung or stopped)")
                return

    async def _pump_logs(self, proc: WorkerProcess) -> None:
        try:
            if proc.logs is None:
                return
            async for chunk in proc.logs:
                self._log_lines(self.log.feed(bytes(chunk)))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._log_lines(self.log.close())
            self._logs_done.set()

    def _log_lines(self, lines: list[str]) -> None:
        """Pass a worker's lines on: the server's log (DEBUG) and the model log."""
        to_model = model_log.isEnabledFor(logging.INFO)
        if not (lines and (to_model or worker_log.isEnabledFor(logging.DEBUG))):
            return
        c = self.config
        fields: dict[str, object] = {"model": c.name, "version": c.version, "worker": self.id}
        fields.update(incarnation=self.incarnation, pid=self.pid)
        for line in lines:
            worker_log.debug("[%s] %s", self.name, line, extra=fields)
            if to_model and not line.startswith(_METRIC_LINE):
                model_log.info(line, extra=fields)

    async def infer(
        self, items: list[InferItem], on_part: PartHandler | None = None
    ) -> list[ReplyItem]:
        """Run one batch on this worker and return one reply per item.

        Args:
            items: the batch.
            on_part: called (synchronously, from the read loop) with each
                intermediate answer the handler streams before its final reply.

        Raises:
            NotDelivered: the worker was gone before the batch was sent.
            WorkerTimeout: no reply within ``response_timeout`` (of the batch's start
                or of its latest part); the worker is killed.
            WorkerDied: the worker ended while it held the batch.
        """
        if self.state is not WorkerState.READY:
            raise NotDelivered(self.name)
        self._batches += 1
        pending = self._pending = _Pending(self._batches, on_part)
        self.state = WorkerState.BUSY
        try:
            await self._send(encode_infer(pending.batch_id, items))
            pending.timer.deadline = trio.current_time() + self.config.response_timeout
            with pending.timer:
                await pending.done.wait()
        finally:
            self._pending = None
            if self.state is WorkerState.BUSY:
                self.state = WorkerState.READY
        if pending.error is not None:
            raise pending.error
        if not pending.done.is_set():
            return self._timed_out(pending.parts)
        return pending.items

    def _timed_out(self, parts: int) -> list[ReplyItem]:
        timeout = self.config.response_timeout
        self.kill(f"response timeout: no reply within {timeout:g} s")
        silence = (
            f"sent nothing for {timeout:g} s after part {parts} of its answer (response_timeout)"
        )
        what = silence if parts else f"did not answer within response_timeout ({timeout:g} s)"
        raise WorkerTimeout(
            f"worker {self.name} (pid {self.pid}) {what}; it is being replaced",
            log_tail=self.log.lines(20),
        )

    async def _teardown(self, proc: WorkerProcess) -> None:
        self.state = WorkerState.STOPPING
        grace = self.config.stop_grace
        if self._polite and proc.poll() is None:
            with trio.move_on_after(grace):
                try:
                    await self._send(encode(Message(Kind.SHUTDOWN)))
                    await proc.wait()
                except NotDelivered:
                    pass
        if proc.poll() is None:
            self._signalled = True
            proc.signal_group(signal.SIGTERM)
            proc.signal_group(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            with trio.move_on_after(grace):
                await proc.wait()
        if proc.poll() is None:
            self._signalled = True
        proc.signal_group(signal.SIGKILL)  # the leader if still alive, and any stragglers
        await proc.wait()
        proc.signal_group(signal.SIGKILL)
        with trio.move_on_after(0.5):
            await proc.stream.aclose()

    def _record_exit(self, proc: WorkerProcess) -> None:
        self.state = WorkerState.DEAD
        reason = self._stop_reason or "ended"
        self.exit = ExitRecord(
            reason=reason,
            returncode=proc.poll(),
            uptime=trio.current_time() - self._t0,
            ended_at=time.time(),
            log_tail=self.log.lines(),
            requested=self._stop_requested,
            incarnation=self.incarnation,
            pid=self.pid,
        )
        pending = self._pending
        if pending is not None and not pending.done.is_set():
            pending.error = self._death_error(self.exit)
            pending.done.set()
        self.dead.set()

    def _death_error(self, record: ExitRecord) -> WorkerDied:
        return WorkerDied(
            f"worker {self.name} (pid {self.pid}) died while serving the request: "
            f"{record.summary()}",
            killed_by=None if self._signalled else record.signal,
            log_tail=record.log_tail[-20:],
        )
