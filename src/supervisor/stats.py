"""Frozen snapshots of the supervisor's state, for describe output and metrics.

Everything that reports on the supervisor (``GET /models/{name}``, ``/metrics``,
``statistics()``) renders from these values instead of touching live objects.
"""

from __future__ import annotations

import attrs

from supervisor.config import ModelConfig

__all__ = ["ExitStats", "ModelStats", "WorkerStats"]


@attrs.frozen
class ExitStats:
    """How a worker incarnation ended."""

    incarnation: int
    pid: int | None
    reason: str
    returncode: int | None
    signal: int | None
    uptime: float
    ended_at: float
    log_tail: tuple[str, ...]


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
    last_exit: ExitStats | None
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
