"""Making a model's worker incarnations: device, thread share and environment.

The pool's slots and the warm-spare keeper both ask a ``WorkerFactory`` for new
workers, so neither reaches into the other (or into the pool) to make one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from supervisor.config import ModelConfig
from supervisor.supervision.devices import Device, device_for
from supervisor.supervision.process import Launcher
from supervisor.supervision.worker import Worker

__all__ = ["WorkerFactory", "threads_per_worker"]


def threads_per_worker(cpus: int, workers: int) -> int:
    """Each worker's share of the cores: the cores divided among the workers, at least 1.

    Oversubscribed torch threads thrash. (With the supervisor behind Hypercorn and
    Quart, leaving it a core was faster; since the lean front end, a lone batch-8
    MLP worker on 2 cores does about 12% more rows/s with both: docs/performance.md.)
    """
    return max(1, cpus // max(1, workers))


class WorkerFactory:
    """Makes worker incarnations of one model version (not started).

    Args:
        config: the model and its settings.
        launcher: starts worker processes.
        gpus: the GPUs this model may use, round-robin (empty: none).
        worker_count: how many workers the machine runs now (for the thread share).
    """

    def __init__(
        self,
        config: ModelConfig,
        launcher: Launcher,
        gpus: Sequence[str],
        worker_count: Callable[[], int],
    ) -> None:
        self.config = config
        self.launcher = launcher
        self.gpus = tuple(gpus)
        self._worker_count = worker_count

    def device(self, index: int) -> Device:
        """The device of the ``index``-th slot or spare started (round-robin over GPUs)."""
        return device_for(index, self.config.handler_config, self.gpus)

    def thread_env(self) -> dict[str, str]:
        """The thread settings for a new worker: its share of the cores, unless set."""
        if "OMP_NUM_THREADS" in os.environ and not self.config.torch_threads:
            return {}  # the operator chose
        threads = self.config.torch_threads or threads_per_worker(
            os.cpu_count() or 1, self._worker_count()
        )
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
