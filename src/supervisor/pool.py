"""A model version's workers: a bounded job queue and N restarting slots.

Requests become ``Job``s on a bounded memory channel (a full channel is an
immediate 503). Each ``Slot`` is a restart loop: it runs one ``Worker``
incarnation at a time, pulls batches from the channel while the worker lives,
and after an exit asks the restart policy whether and when to start the next
incarnation. Jobs still queued are untouched by a worker's death; only the
batch in flight on the dead worker fails. When the policy gives up, the whole
model becomes FAILED: its slots stop and every waiting job gets a 503 carrying
the reason and the last log lines.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from functools import partial

import trio

from handlers.protocol import InferItem, ReplyItem
from supervisor import limits
from supervisor.batching import Job, fill_batch, live, take_first
from supervisor.config import ModelConfig
from supervisor.devices import Device, device_for
from supervisor.errors import (
    InvalidRequest,
    ModelUnavailable,
    WorkerDied,
    WorkerFailure,
    WorkerStartFailed,
)
from supervisor.policy import Backoff, Intensity, decide
from supervisor.process import Launcher
from supervisor.spare import Spare, SpareKeeper
from supervisor.stats import ExitStats, ModelStats, WorkerStats
from supervisor.worker import ExitRecord, NotDelivered, Worker, WorkerState

__all__ = ["ModelState", "Pool", "Slot"]

log = logging.getLogger("supervisor.pool")


def threads_per_worker(cpus: int, workers: int) -> int:
    """Each worker's share of the cores: the cores divided among the workers, at least 1.

    Oversubscribed torch threads thrash. (With the supervisor behind Hypercorn and
    Quart, leaving it a core was faster; since the lean front end, a lone batch-8
    MLP worker on 2 cores does about 12% more rows/s with both: docs/performance.md.)
    """
    return max(1, cpus // max(1, workers))


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
    ) -> None:
        self.config = config
        self.gpus = tuple(gpus)
        self._machine_workers = machine_workers
        self._max_workers_total = max_workers_total
        self.spares = SpareKeeper(self) if config.warm_spare else None
        self.state = ModelState.LOADING
        self.failure: str | None = None
        self.failure_log_tail: tuple[str, ...] = ()
        self.loaded_at = time.time()
        self.requests = 0
        self.launcher = launcher
        self.rng = rng or random.Random()
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
                self._notify()
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
        self._notify()

    def thread_env(self) -> dict[str, str]:
        """The thread settings for a new worker: its share of the cores, unless set."""
        if "OMP_NUM_THREADS" in os.environ and not self.config.torch_threads:
            return {}  # the operator chose
        workers = self._machine_workers() if self._machine_workers else len(self.active_slots())
        threads = self.config.torch_threads or threads_per_worker(os.cpu_count() or 1, workers)
        return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}

    def new_worker(self, worker_id: str, incarnation: int, device: Device) -> Worker:
        """A worker incarnation for this model on ``device`` (not started yet)."""
        return Worker(
            self.config,
            worker_id=worker_id,
            incarnation=incarnation,
            launcher=self.launcher,
            env={**device.env, **self.thread_env()},
            gpu_id=device.gpu_id,
        )

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
        )

    def _add_slot(self) -> None:
        assert self._nursery is not None
        device = device_for(self._slot_count, self.config.handler_config, self.gpus)
        self._slot_count += 1
        slot = Slot(self, f"w{self._slot_count}", device)
        self.slots.append(slot)
        self._nursery.start_soon(slot.run)

    def _slot_ended(self, slot: Slot) -> None:
        """A slot's loop returned; a FAILED model keeps its slots for describe."""
        if self.state is not ModelState.FAILED and slot in self.slots:
            self.slots.remove(slot)
        self._notify()

    def _notify(self) -> None:
        if self.state is ModelState.LOADING and self.ready_count() >= min(
            self.config.workers, len(self.active_slots())
        ):
            self.state = ModelState.READY
        self._changed.set()
        self._changed = trio.Event()

    def _set_state(self, state: ModelState) -> None:
        self.state = state
        self._notify()

    def fail(self, reason: str, record: ExitRecord) -> None:
        """Give up on the model: FAILED, slots stopped, waiting jobs answered 503."""
        if self.state is ModelState.FAILED:
            return
        self.failure = f"{reason}; last exit: {record.summary()}"
        self.failure_log_tail = record.log_tail
        log.error("model %s FAILED: %s", self.label, self.failure)
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


class Slot:
    """A place for one worker; restarts it across incarnations.

    Args:
        pool: the pool this slot belongs to.
        slot_id: the slot's id, kept by every incarnation.
    """

    def __init__(self, pool: Pool, slot_id: str, device: Device | None = None) -> None:
        self.pool = pool
        self.id = slot_id
        self.device = device or Device(gpu_id=None)
        self.incarnation = 0
        self.restarts = 0
        self.worker: Worker | None = None
        self.last_exit: ExitStats | None = None
        self._backoff = Backoff(pool.config.restart)
        self._stopping = False
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

    async def run(self) -> None:
        """The restart loop: one incarnation after another until stopped or given up."""
        try:
            while not self._stopping:
                record = await self._incarnate()
                delay = None if self._stopping else self._after_exit(record)
                if delay is None:
                    break
                await self._sleep(delay)
        finally:
            self.pool._slot_ended(self)

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
        worker = self.pool.new_worker(self.id, self.incarnation, self.device)
        self.worker = worker
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(worker.run)
            except WorkerStartFailed as exc:
                log.warning("%s", exc.message)
            else:
                self.pool._notify()
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
        self.last_exit = _exit_stats(worker)
        self.pool._notify()
        return worker.exit

    async def _take_over(self, spare: Spare) -> ExitRecord:
        """Serve with the warm spare (already loaded) as this slot's next incarnation."""
        worker = spare.worker
        worker.adopt(self.id, self.incarnation)
        self.device = spare.device
        self.worker = worker
        self.pool._notify()
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


def _exit_stats(worker: Worker) -> ExitStats:
    record = worker.exit
    assert record is not None
    return ExitStats(
        incarnation=worker.incarnation,
        pid=worker.pid,
        reason=record.reason,
        returncode=record.returncode,
        signal=record.signal,
        uptime=record.uptime,
        ended_at=record.ended_at,
        log_tail=record.log_tail,
    )
