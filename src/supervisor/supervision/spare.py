"""An opt-in warm spare: a standby worker that has already loaded the model.

When a slot's worker dies, the slot adopts the spare instead of starting a
process and loading the model again, so the next request is served in the
time it takes to notice the death. A new spare is then started in the
background. The spare answers heartbeats like any worker; a spare that dies
while waiting is replaced.
"""

from __future__ import annotations

import logging
import random

import attrs
import trio

from supervisor.errors import WorkerStartFailed
from supervisor.policy import Backoff
from supervisor.supervision.devices import Device
from supervisor.supervision.factory import WorkerFactory
from supervisor.supervision.worker import Worker

__all__ = ["Spare", "SpareKeeper"]

log = logging.getLogger("supervisor.pool")


@attrs.frozen
class Spare:
    """A ready standby worker and the device it was started on."""

    worker: Worker
    device: Device


class SpareKeeper:
    """Keeps one warm spare ready for a pool.

    Args:
        factory: makes the model's workers.
        label: ``name/version`` for log lines.
        rng: randomness for the backoff between failed starts.
    """

    def __init__(self, factory: WorkerFactory, label: str, rng: random.Random) -> None:
        self.factory = factory
        self.label = label
        self.rng = rng
        self.ready: Spare | None = None
        self.started = 0
        self._taken = trio.Event()
        self._stopping = False
        self._scope = trio.CancelScope()

    def take(self) -> Spare | None:
        """Hand the ready spare over (None if there is none right now)."""
        spare = self.ready
        if spare is None or not spare.worker.serving:
            return None
        self.ready = None
        self._taken.set()
        return spare

    def stop(self) -> None:
        """Stop keeping a spare, and stop the one that is waiting."""
        self._stopping = True
        self._scope.cancel()
        if self.ready is not None:
            self.ready.worker.stop("the model is stopping")
            self.ready = None

    async def run(self, nursery: trio.Nursery) -> None:
        """Start spares one after another, each in ``nursery``, until stopped."""
        backoff = Backoff(self.factory.config.restart)
        with self._scope:
            while not self._stopping:
                spare = await self._start(nursery)
                if spare is None:
                    await trio.sleep(max(0.5, backoff.next_delay(0.0, self.rng)))
                    continue
                backoff.failures = 0
                self.ready = spare
                await self._wait_taken_or_dead(spare.worker)
                if self.ready is spare:  # it died while waiting
                    self.ready = None

    async def _start(self, nursery: trio.Nursery) -> Spare | None:
        self.started += 1
        device = self.factory.device(self.started - 1)
        worker = self.factory.new_worker("spare", self.started, device)
        try:
            await nursery.start(worker.run)
        except WorkerStartFailed as exc:
            log.warning("warm spare for %s failed to start: %s", self.label, exc.message)
            return None
        log.info("warm spare for %s ready (pid %s)", self.label, worker.pid)
        return Spare(worker, device)

    async def _wait_taken_or_dead(self, worker: Worker) -> None:
        async with trio.open_nursery() as race:

            async def settle(event: trio.Event) -> None:
                await event.wait()
                race.cancel_scope.cancel()

            race.start_soon(settle, self._taken)
            race.start_soon(settle, worker.ending)
        self._taken = trio.Event()
