"""A model version's workers: a bounded job queue and N restarting slots.

Requests become ``Job``s on a bounded memory channel (a full channel is an
immediate 503). Each ``Slot`` (``supervision.slot``) is a restart loop over
the channel; the pool's ``WorkerFactory`` makes the workers of its slots and of
its warm spare, if it keeps one. Jobs still queued are untouched by a worker's death; only the
batch in flight on the dead worker fails. When the policy gives up, the whole
model becomes FAILED: its slots stop and every waiting job gets a 503 carrying
the reason and the last log lines.
"""

from __future__ import annotations

import enum
import logging
import math
import random
import time
import weakref
from collections.abc import Callable, Sequence

import trio

from handlers.protocol import InferItem
from supervisor import limits
from supervisor.config import ModelConfig
from supervisor.errors import InvalidRequest, ModelNotFound, ModelUnavailable, WorkerStartFailed
from supervisor.policy import Intensity
from supervisor.supervision.batching import Job
from supervisor.supervision.events import EventLog
from supervisor.supervision.factory import WorkerFactory
from supervisor.supervision.process import Launcher
from supervisor.supervision.slot import Slot
from supervisor.supervision.spare import SpareKeeper
from supervisor.supervision.stats import ExitRecord, ModelStats

__all__ = ["ModelState", "Pool"]

log = logging.getLogger("supervisor.pool")


class ModelState(enum.Enum):
    """The life of a model version."""

    LOADING = "LOADING"
    READY = "READY"
    FAILED = "FAILED"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"


class Pool:
    """The workers of one model version.

    Args:
        config: the model and its settings.
        launcher: starts worker processes.
        rng: randomness for backoff jitter (seed it in tests).
    """

    def __init__(
        self,
        config: ModelConfig,
        launcher: Launcher,
        rng: random.Random | None = None,
        gpus: Sequence[str] = (),
        machine_workers: Callable[[], int] | None = None,
        max_workers_total: int = limits.DEFAULT_MAX_WORKERS_TOTAL,
        events: EventLog | None = None,
    ) -> None:
        self.config = config
        self.events = events or EventLog()
        self._machine_workers = machine_workers
        self._max_workers_total = max_workers_total
        self.rng = rng or random.Random()
        self.factory = WorkerFactory(config, launcher, gpus, self._worker_count)
        self.spares = SpareKeeper(self.factory, self.label, self.rng) if config.warm_spare else None
        self.state = ModelState.LOADING
        self.failure: str | None = None
        self.failure_log_tail: tuple[str, ...] = ()
        self.loaded_at = time.time()
        self.requests = 0
        self._jobs: weakref.WeakSet[Job] = weakref.WeakSet()  # in flight, or answered
        self.intensity = Intensity(config.restart)
        self.slots: list[Slot] = []
        self._send, self._receive = trio.open_memory_channel[Job](config.job_queue_size)
        self._nursery: trio.Nursery | None = None
        self._changed = trio.Event()
        self._unloaded = trio.Event()
        self._finished = trio.Event()
        self._slot_count = 0
        self.on_batch: Callable[[int], None] | None = None

    @property
    def label(self) -> str:
        """``name/version`` for messages."""
        return f"{self.config.name}/{self.config.version}"

    async def run(self, *, task_status: trio.TaskStatus[Pool] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the slots until stopped; every job still queued at the end is answered."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for _ in range(self.config.workers):
                    self._add_slot()
                if self.spares is not None:
                    nursery.start_soon(self.spares.run, nursery)
                self.notify()
                task_status.started(self)
                await self._unloaded.wait()
        finally:
            self._nursery = None
            if self.state is not ModelState.FAILED:
                self._set_state(ModelState.STOPPED)
            self._fail_queued(ModelUnavailable(f"Model {self.label} is stopped"))
            self._finished.set()

    async def wait_stopped(self) -> None:
        """Wait until every slot has ended and the pool's task has returned."""
        await self._finished.wait()

    def submit(self, item: InferItem, deadline: float = math.inf) -> Job:
        """Queue one request; the returned job is answered exactly once.

        Raises:
            ModelUnavailable: the model is FAILED or stopping, has no workers, or
                its queue is full.
        """
        self._check_available()
        if self.config.client_timeout:
            deadline = min(deadline, trio.current_time() + self.config.client_timeout)
        job = Job(item, deadline)
        try:
            self._send.send_nowait(job)
        except trio.WouldBlock:
            raise ModelUnavailable(
                f"Model {self.label} has {self.config.job_queue_size} requests waiting, its "
                "queue is full; retry later or add workers",
                retry_after=1,
            ) from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ModelUnavailable(f"Model {self.label} is stopping") from None
        self.requests += 1
        self._jobs.add(job)
        return job

    def _check_available(self) -> None:
        if self.state is ModelState.FAILED:
            raise ModelUnavailable(
                f"Model {self.label} is FAILED: {self.failure}", log_tail=self.failure_log_tail
            )
        if self.state in (ModelState.STOPPING, ModelState.STOPPED):
            raise ModelUnavailable(f"Model {self.label} is stopping")
        if not self.active_slots():
            raise ModelUnavailable(self._no_worker_message())

    def _no_worker_message(self) -> str:
        return (
            f'Model "{self.config.name}" has no worker to serve inference request. '
            "Please use scale workers API to add workers."
        )

    def check_scale(self, workers: int, key: str = "workers") -> None:
        """Refuse ``workers`` (asked for by parameter ``key``) beyond the limits.

        Raises:
            InvalidRequest: below 0, above ``max_workers_per_model``, or more than
                ``max_workers_total`` with the other models' workers.
        """
        others = self._machine_workers() - len(self.active_slots()) if self._machine_workers else 0
        why = limits.check_workers(key, workers) or limits.check_total(
            key, workers, others, self._max_workers_total
        )
        if why is not None:
            raise InvalidRequest(f"Model {self.label}: {why}")

    def scale(self, workers: int, key: str = "workers") -> None:
        """Run ``workers`` slots: start new ones or stop the newest (after their batch)."""
        if self.state in (ModelState.FAILED, ModelState.STOPPING, ModelState.STOPPED):
            raise ModelUnavailable(f"Model {self.label} is {self.state.value}; it cannot be scaled")
        self.check_scale(workers, key)
        limit = self.config.max_workers
        if limit and workers > limit:
            raise InvalidRequest(
                f"Model {self.label}: cannot scale to {workers} workers (max_workers is {limit})"
            )
        active = self.active_slots()
        for _ in range(len(active), workers):
            self._add_slot()
        for slot in active[workers:]:
            slot.stop()
        if workers == 0:
            self._fail_queued(ModelUnavailable(self._no_worker_message()))
        self.notify()

    def restart_worker(self, worker_id: str) -> str:
        """Replace worker ``worker_id``'s process (after its batch); its label now.

        Raises:
            ModelNotFound: the model has no such worker.
            ModelUnavailable: that worker is not serving (starting, stopping).
        """
        slot = next((s for s in self.active_slots() if s.id == worker_id), None)
        if slot is None:
            raise ModelNotFound(f"Model {self.label} has no worker {worker_id}")
        slot.restart()
        return slot.label

    def _worker_count(self) -> int:
        """Workers on the machine (all models), or this pool's when it stands alone."""
        return self._machine_workers() if self._machine_workers else len(self.active_slots())

    def active_slots(self) -> list[Slot]:
        """The slots that take work (not stopping after a scale-down)."""
        return [s for s in self.slots if not s.stopping]

    def stop(self, reason: str = "was unloaded") -> None:
        """Stop taking requests, answer the queued ones (503 saying ``reason``), stop every slot."""
        if self.state is not ModelState.FAILED:
            self._set_state(ModelState.STOPPING)
        self._send.close()
        self._unloaded.set()
        if self.spares is not None:
            self.spares.stop()
        self._fail_queued(ModelUnavailable(f"Model {self.label} {reason}"))
        for slot in self.slots:
            slot.stop()

    def close_intake(self) -> None:
        """Take no new requests (503 "is stopping"); the slots still serve the queued ones.

        Each slot ends once the queue is empty and its batch is answered; ``stop()``
        then ends the pool. This is the first half of a drain.
        """
        if self.state is not ModelState.FAILED:
            self._set_state(ModelState.STOPPING)
        self._send.close()

    async def wait_drained(self) -> None:
        """Wait until every slot has ended after ``close_intake()`` (nothing left to serve)."""
        while self.slots and self.state is not ModelState.FAILED:
            await self._changed.wait()

    async def wait_ready(self, workers: int | None = None) -> None:
        """Wait until ``workers`` (default: the configured number) are ready.

        Raises:
            WorkerStartFailed: the model became FAILED (or stopped) instead.
        """
        wanted = self.config.workers if workers is None else workers
        while self.ready_count() < wanted:
            if self.state in (ModelState.FAILED, ModelState.STOPPED, ModelState.STOPPING):
                why = self.failure or self.state.value
                raise WorkerStartFailed(
                    f"Failed to start workers for model {self.config.name} "
                    f"version: {self.config.version}: {why}",
                    log_tail=self.failure_log_tail,
                )
            await self._changed.wait()

    def ready_count(self) -> int:
        """How many workers can take a batch now."""
        return sum(1 for s in self.slots if s.ready and not s.stopping)

    def statistics(self, *, is_default: bool = False) -> ModelStats:
        """A frozen snapshot of the model and its workers."""
        return ModelStats(
            config=self.config,
            state=self.state.value,
            is_default=is_default,
            failure=self.failure,
            failure_log_tail=self.failure_log_tail,
            workers=tuple(s.statistics() for s in self.slots),
            restarts=sum(s.restarts for s in self.slots),
            queue_depth=self._send.statistics().current_buffer_used,
            queue_capacity=self.config.job_queue_size,
            requests=self.requests,
            loaded_at=self.loaded_at,
            spare_pid=self.spares.ready.worker.pid if self.spares and self.spares.ready else None,
            in_flight=sum(not job.answered for job in list(self._jobs)),
        )

    def _add_slot(self) -> None:
        assert self._nursery is not None
        device = self.factory.device(self._slot_count)
        self._slot_count += 1
        slot = Slot(self, f"w{self._slot_count}", device)
        self.slots.append(slot)
        self._nursery.start_soon(slot.run)

    def slot_ended(self, slot: Slot) -> None:
        """A slot's loop returned; a FAILED model keeps its slots for describe."""
        if self.state is not ModelState.FAILED and slot in self.slots:
            self.slots.remove(slot)
        self.notify()

    def notify(self) -> None:
        """Recompute READY from the slots and wake whoever waits on a change."""
        if self.state is ModelState.LOADING and self.ready_count() >= min(
            self.config.workers, len(self.active_slots())
        ):
            self.state = ModelState.READY
        self._changed.set()
        self._changed = trio.Event()

    def _set_state(self, state: ModelState) -> None:
        self.state = state
        self.notify()

    def fail(self, reason: str, record: ExitRecord) -> None:
        """Give up on the model: FAILED, slots stopped, waiting jobs answered 503."""
        if self.state is ModelState.FAILED:
            return
        self.failure = f"{reason}; last exit: {record.summary()}"
        self.failure_log_tail = record.log_tail
        log.error("model %s FAILED: %s", self.label, self.failure)
        self.events.record(
            "model.failed", self.config.name, self.config.version, f"FAILED: {self.failure}"
        )
        self._set_state(ModelState.FAILED)
        self._fail_queued(
            ModelUnavailable(
                f"Model {self.label} is FAILED: {self.failure}", log_tail=record.log_tail
            )
        )
        if self.spares is not None:
            self.spares.stop()
        for slot in self.slots:
            slot.stop()

    def requeue(self, jobs: list[Job]) -> None:
        """Put undelivered jobs back in the queue, or answer 503 if none can serve them."""
        for job in jobs:
            try:
                if self.state is ModelState.FAILED or not self.active_slots():
                    raise trio.ClosedResourceError
                self._send.send_nowait(job)
            except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                job.fail(
                    ModelUnavailable(
                        f"Model {self.label}: its worker stopped before serving this request",
                        log_tail=self.failure_log_tail,
                    )
                )

    def _fail_queued(self, error: ModelUnavailable) -> None:
        while True:
            try:
                self._receive.receive_nowait().fail(error)
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return

    @property
    def receive(self) -> trio.MemoryReceiveChannel[Job]:
        """The job queue's receiving end (used by the slots)."""
        return self._receive
