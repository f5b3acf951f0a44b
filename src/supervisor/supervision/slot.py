"""A place for one worker: the restart loop across its incarnations.

A ``Slot`` runs one ``Worker`` incarnation at a time (or adopts the warm spare),
pulls batches from its pool's job channel while the worker lives, and after an
exit asks the restart policy whether and when to start the next incarnation.
Only the batch in flight on a dead worker fails; a batch that never reached the
worker goes back to the queue.

The slot sees its pool only through ``SlotHost``, so this module does not import
the pool's (which imports it).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from functools import partial
from typing import Protocol

import trio

from handlers.protocol import ReplyItem
from supervisor.config import ModelConfig
from supervisor.errors import ModelUnavailable, WorkerDied, WorkerFailure, WorkerStartFailed
from supervisor.policy import Backoff, Intensity, decide
from supervisor.supervision.batching import Job, fill_batch, live, take_first
from supervisor.supervision.devices import Device
from supervisor.supervision.events import EventLog, exit_fields
from supervisor.supervision.factory import WorkerFactory
from supervisor.supervision.spare import Spare, SpareKeeper
from supervisor.supervision.stats import ExitRecord, WorkerStats
from supervisor.supervision.worker import NotDelivered, Worker, WorkerState

__all__ = ["Slot", "SlotHost"]

log = logging.getLogger("supervisor.pool")


class SlotHost(Protocol):
    """What a slot needs of its pool."""

    config: ModelConfig
    factory: WorkerFactory
    spares: SpareKeeper | None
    rng: random.Random
    intensity: Intensity
    on_batch: Callable[[int], None] | None
    events: EventLog

    @property
    def label(self) -> str:
        """``name/version`` for messages."""

    @property
    def receive(self) -> trio.MemoryReceiveChannel[Job]:
        """The job queue's receiving end."""

    def notify(self) -> None:
        """A slot's readiness changed."""

    def slot_ended(self, slot: Slot) -> None:
        """A slot's loop returned."""

    def fail(self, reason: str, record: ExitRecord) -> None:
        """Give up on the model (the restart policy said so)."""

    def requeue(self, jobs: list[Job]) -> None:
        """Put jobs that never reached a worker back in the queue."""


class Slot:
    """A place for one worker; restarts it across incarnations.

    Args:
        pool: the pool this slot belongs to (what the slot needs of it).
        slot_id: the slot's id, kept by every incarnation.
    """

    def __init__(self, pool: SlotHost, slot_id: str, device: Device | None = None) -> None:
        self.pool = pool
        self.id = slot_id
        self.device = device or Device(gpu_id=None)
        self.incarnation = 0
        self.restarts = 0
        self.worker: Worker | None = None
        self.last_exit: ExitRecord | None = None
        self._backoff = Backoff(pool.config.restart)
        self._stopping = False
        self._restart_asked = False
        self._wait_scope = trio.CancelScope()  # the wait that a stop or a death interrupts

    @property
    def stopping(self) -> bool:
        """Whether the slot was told to stop (it still finishes its batch)."""
        return self._stopping

    @property
    def ready(self) -> bool:
        """Whether the current incarnation can take batches."""
        return self.worker is not None and self.worker.state in (
            WorkerState.READY,
            WorkerState.BUSY,
        )

    def stop(self) -> None:
        """Stop after the batch in flight (a worker still loading stops at once)."""
        self._stopping = True
        self._wait_scope.cancel()
        if self.worker is not None and self.worker.state is WorkerState.STARTING:
            self.worker.stop()

    @property
    def label(self) -> str:
        """``w1#2``: the slot and its current incarnation, as errors name a worker."""
        return f"{self.id}#{self.incarnation}"

    def restart(self) -> None:
        """Replace the current incarnation by a new one, after its batch in flight.

        A restart asked for is not a failure: the restart policy does not count it.

        Raises:
            ModelUnavailable: the slot is stopping or its worker is not serving.
        """
        worker = self.worker
        if self._stopping or worker is None or not worker.serving:
            state = "stopping" if self._stopping else worker.state.value if worker else "STARTING"
            raise ModelUnavailable(
                f"worker {self.pool.label} {self.label} is {state}; only a serving worker "
                "can be restarted"
            )
        self._restart_asked = True
        worker.stop("restart requested")

    async def run(self) -> None:
        """The restart loop: one incarnation after another until stopped or given up."""
        try:
            while not self._stopping:
                record = await self._incarnate()
                if self._restart_asked and not self._stopping:
                    self._restart_asked = False
                    self.restarts += 1
                    continue
                delay = None if self._stopping else self._after_exit(record)
                if delay is None:
                    break
                await self._sleep(delay)
        finally:
            self.pool.slot_ended(self)

    def _after_exit(self, record: ExitRecord) -> float | None:
        """Apply the restart policy: the delay before the next start, or None to give up."""
        decision = decide(
            self._backoff,
            self.pool.intensity,
            now=trio.current_time(),
            uptime=record.uptime,
            rng=self.pool.rng,
        )
        if decision.give_up:
            self.pool.fail(decision.reason, record)
            return None
        log.warning(
            "worker %s %s#%d ended: %s; %s%s",
            self.pool.label,
            self.id,
            self.incarnation,
            record.summary(),
            decision.reason,
            "".join(f"\n    | {line}" for line in record.log_tail[-10:]),
        )
        self.restarts += 1
        return decision.delay

    async def _sleep(self, delay: float) -> None:
        with trio.CancelScope() as self._wait_scope:
            if not self._stopping:
                await trio.sleep(delay)

    async def _incarnate(self) -> ExitRecord:
        self.incarnation += 1
        spare = self.pool.spares.take() if self.pool.spares and self.incarnation > 1 else None
        if spare is not None:
            return await self._take_over(spare)
        worker = self.pool.factory.new_worker(self.id, self.incarnation, self.device)
        self.worker = worker
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(worker.run)
            except WorkerStartFailed as exc:
                log.warning("%s", exc.message)
            else:
                self.pool.notify()
                self._record_start(worker, "")
                log.info(
                    "worker %s %s#%d ready (pid %s)",
                    self.pool.label,
                    self.id,
                    self.incarnation,
                    worker.pid,
                )
                await self._serve(worker)
                worker.stop()
        return self._ended(worker)

    def _ended(self, worker: Worker) -> ExitRecord:
        """Record how the incarnation ended; the restart loop decides what follows."""
        assert worker.exit is not None
        self.last_exit = worker.exit
        self.pool.notify()
        self._record_exit(worker.exit)
        return worker.exit

    def _record_start(self, worker: Worker, how: str) -> None:
        c = self.pool.config
        kind = "worker.started" if self.incarnation == 1 else "worker.replaced"
        message = f"{self.label} ready{how} (pid {worker.pid})"
        self.pool.events.record(kind, c.name, c.version, message, worker=self.label, pid=worker.pid)

    def _record_exit(self, record: ExitRecord) -> None:
        c = self.pool.config
        # asked for, not a death (``record.requested`` is set after a death while serving too)
        asked = self._stopping or self._restart_asked
        kind = "worker.stopped" if asked else "worker.died"
        message = f"{self.label} ended: {record.summary()}"
        self.pool.events.record(
            kind, c.name, c.version, message, worker=self.label, **exit_fields(record)
        )

    async def _take_over(self, spare: Spare) -> ExitRecord:
        """Serve with the warm spare (already loaded) as this slot's next incarnation."""
        worker = spare.worker
        worker.adopt(self.id, self.incarnation)
        self.device = spare.device
        self.worker = worker
        self.pool.notify()
        self._record_start(worker, ": the warm spare took over")
        log.info(
            "warm spare (pid %s) took over %s %s#%d",
            worker.pid,
            self.pool.label,
            self.id,
            self.incarnation,
        )
        try:
            await self._serve(worker)
        finally:
            worker.stop()
            with trio.CancelScope(shield=True):
                await worker.dead.wait()
        return self._ended(worker)

    async def _serve(self, worker: Worker) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._cancel_when_ending, worker)
            while worker.serving and not self._stopping:
                await self._next_batch(worker)
            nursery.cancel_scope.cancel()

    async def _cancel_when_ending(self, worker: Worker) -> None:
        await worker.ending.wait()
        self._wait_scope.cancel()  # stop waiting for jobs this worker can no longer take

    async def _next_batch(self, worker: Worker) -> None:
        with trio.CancelScope() as self._wait_scope:
            if self._stopping or not worker.serving:
                return
            try:
                first, under_load = await take_first(self.pool.receive)
            except (trio.EndOfChannel, trio.ClosedResourceError):
                self._stopping = True
                return
        if self._wait_scope.cancelled_caught:
            return
        batch = [first]
        try:
            c = self.pool.config
            await fill_batch(
                self.pool.receive,
                batch,
                batch_size=c.batch_size,
                max_delay=c.max_batch_delay,
                under_load=under_load,
            )
            await self._dispatch(worker, batch)
        except BaseException:
            for job in batch:  # cancelled: nobody else will answer these
                job.fail(ModelUnavailable(f"Model {self.pool.label} is stopping"))
            raise

    async def _dispatch(self, worker: Worker, batch: list[Job]) -> None:
        batch = live(batch)  # drop jobs whose client left or whose deadline passed
        if not batch:
            return
        now = trio.current_time()
        for job in batch:
            job.dispatched_at = now
        if self.pool.on_batch is not None:
            self.pool.on_batch(len(batch))
        jobs = {job.item.request_id: job for job in batch}
        try:
            replies = await worker.infer([job.item for job in batch], partial(_route_parts, jobs))
        except NotDelivered:
            self.pool.requeue(batch)  # never reached the worker: another one takes it
            return
        except WorkerFailure as exc:
            for job in batch:
                job.fail(exc)
            return
        for reply in replies:
            answered = jobs.pop(reply.request_id, None)
            if answered is not None:
                answered.resolve(reply)
        for job in jobs.values():
            job.fail(WorkerDied(f"worker {worker.name} sent no answer for this request"))

    def statistics(self) -> WorkerStats:
        """A frozen snapshot of the slot and its current incarnation."""
        w = self.worker
        return WorkerStats(
            id=self.id,
            pid=w.pid if w else None,
            incarnation=self.incarnation,
            state=w.state.value if w else "STARTING",
            started_at=w.started_at if w else 0.0,
            restarts=self.restarts,
            batches=w.batches if w else 0,
            last_exit=self.last_exit,
            log_tail=w.log.lines(20) if w else (),
            gpu=self.device.physical,
        )


def _route_parts(jobs: dict[str, Job], parts: list[ReplyItem]) -> None:
    """Hand each part of a streamed answer to its job; parts for unknown ids are dropped."""
    for part in parts:
        job = jobs.get(part.request_id)
        if job is not None:
            job.add_part(part)
