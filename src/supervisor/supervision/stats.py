"""Frozen snapshots of the supervisor's state, for describe output and metrics.

Everything that reports on the supervisor (``GET /models/{name}``, ``/metrics``,
``statistics()``) renders from these values instead of touching live objects.
"""

from __future__ import annotations

import attrs

from supervisor.config import ModelConfig
from supervisor.supervision.exits import describe_returncode

__all__ = ["ExitRecord", "ModelStats", "WorkerStats"]


@attrs.frozen
class ExitRecord:
    """Why and how a worker incarnation ended (the worker writes it; describe shows it).

    Attributes:
        reason: what ended it ("exited", "response timeout after 2 s", ...).
        returncode: the process's return code (negative: the signal), if reaped.
        uptime: seconds from spawn to exit.
        ended_at: wall-clock time of the end (seconds since the epoch).
        log_tail: the last lines the worker wrote.
        requested: true when the supervisor asked it to stop (scale down, unload).
        incarnation: which incarnation of its slot it was.
        pid: its process id, if it was spawned.
    """

    reason: str
    returncode: int | None
    uptime: float
    ended_at: float
    log_tail: tuple[str, ...]
    requested: bool = False
    incarnation: int = 0
    pid: int | None = None

    @property
    def signal(self) -> int | None:
        """The signal that killed the process, if one did."""
        return -self.returncode if self.returncode is not None and self.returncode < 0 else None

    def summary(self) -> str:
        """One line: the reason and how the process ended."""
        how = "not reaped" if self.returncode is None else describe_returncode(self.returncode)
        return f"{self.reason} ({how})"


@attrs.frozen
class WorkerStats:
    """One worker slot and its current incarnation."""

    id: str
    pid: int | None
    incarnation: int
    state: str
    started_at: float
    restarts: int
    batches: int
    last_exit: ExitRecord | None
    log_tail: tuple[str, ...]
    gpu: str | None = None
    """The GPU the worker has (as ``CUDA_VISIBLE_DEVICES`` names it), if any."""


@attrs.frozen
class ModelStats:
    """One model version: its settings, state and workers."""

    config: ModelConfig
    state: str
    is_default: bool
    failure: str | None
    failure_log_tail: tuple[str, ...]
    workers: tuple[WorkerStats, ...]
    restarts: int
    queue_depth: int
    queue_capacity: int
    requests: int
    loaded_at: float
    spare_pid: int | None = None
    """The pid of the ready warm spare, if the model keeps one and it is ready."""
    in_flight: int = 0
    """Requests taken and not yet answered: queued, or on a worker."""
