"""Upper bounds on every count, size and duration a request, an archive or a config gives.

One call must never freeze the server: ``minWorkers: 100000`` in an archive, or
``PUT /models/x?min_worker=999999999999999999999999``, would start workers (or
slots) until the machine gives out. ``ModelConfig`` checks its fields against
these bounds when it is built, so every source (a request, ``model-config.yaml``,
TOML, ``config.properties``) is held to them; a value out of bounds is a
``ValueError`` whose message names the field, the value and the limit.

The bounds are fixed, far above any sane setting; the number of workers on the
whole machine is the one limit an operator sets (``max_workers_total``), since
what is sane there depends on the machine. Pure values: no trio here.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = [
    "DEFAULT_MAX_WORKERS_TOTAL",
    "MAX_BATCH_DELAY",
    "MAX_BATCH_SIZE",
    "MAX_DURATION",
    "MAX_JOB_QUEUE_SIZE",
    "MAX_LOG_BYTES",
    "MAX_LOG_LINES",
    "MAX_MEMORY_LIMIT_MB",
    "MAX_STOP_GRACE",
    "MAX_TORCH_THREADS",
    "MAX_WORKERS_PER_MODEL",
    "MAX_WORKERS_TOTAL",
    "bounded",
    "check_total",
    "check_workers",
]

MAX_WORKERS_PER_MODEL = 64
"""The most workers (``workers``, ``max_workers``) one model version may run."""

DEFAULT_MAX_WORKERS_TOTAL = 64
"""The default of ``max_workers_total``: the most workers on the machine, all models."""

MAX_BATCH_SIZE = 1024
"""The largest ``batch_size``."""

MAX_BATCH_DELAY = 60.0
"""The longest ``max_batch_delay``, in seconds."""

MAX_JOB_QUEUE_SIZE = 1_000_000
"""The largest ``job_queue_size``."""

MAX_DURATION = 24 * 3600.0
"""The longest timeout, interval or grace (``response_timeout``, ``startup_timeout``, ...)."""

MAX_WORKERS_TOTAL = 4096
"""The largest ``max_workers_total`` an operator may set."""

MAX_STOP_GRACE = 600.0
"""The longest ``stop_grace`` (and ``shutdown_grace``), in seconds."""

MAX_TORCH_THREADS = 1024
"""The most torch threads per worker."""

MAX_MEMORY_LIMIT_MB = 16 * 1024 * 1024
"""The largest ``memory_limit_mb`` (16 TiB)."""

MAX_LOG_LINES = 100_000
"""The most log lines kept per worker."""

MAX_LOG_BYTES = 64 * 1024 * 1024
"""The most log bytes kept per worker."""


def bounded(limit: float, what: str = "") -> Any:
    """An attrs validator: the value is a finite number no larger than ``limit``.

    Args:
        limit: the largest value allowed.
        what: how the limit reads in the message ("workers per model").
    """

    shown = f"{limit:g}" if isinstance(limit, float) else str(limit)
    unit = f" {what}" if what else ""

    def check(_instance: Any, attribute: Any, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{attribute.name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{attribute.name} must be a finite number, got {value!r}")
        if value > limit:
            raise ValueError(f"{attribute.name}={value!r} exceeds the limit of {shown}{unit}")

    return check


def check_workers(key: str, count: int) -> str | None:
    """Why ``count`` workers for one model (from parameter ``key``) is refused, or None."""
    if count < 0:
        return f"{key}={count} must be 0 or more"
    if count > MAX_WORKERS_PER_MODEL:
        return (
            f"{key}={count} exceeds the limit of {MAX_WORKERS_PER_MODEL} workers per model "
            "(max_workers_per_model)"
        )
    return None


def check_total(key: str, count: int, others: int, limit: int) -> str | None:
    """Why ``count`` more workers beside ``others`` running ones is refused, or None.

    Args:
        key: the parameter that asked for them (for the message).
        count: the workers the model would run.
        others: the workers the other models (and versions) run.
        limit: ``max_workers_total``.
    """
    if count + others <= limit:
        return None
    plural = "" if others == 1 else "s"
    beside = f" with {others} worker{plural} of other models" if others else ""
    return (
        f"{key}={count}{beside} exceeds the limit of {limit} workers on this server "
        "(max_workers_total)"
    )
