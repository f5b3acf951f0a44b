"""What the dashboard shows, as JSON-ready values, and the Server-Sent Events framing.

Pure functions of ``statistics()`` snapshots, events and request samples: the
hub (``supervisor.api.dashboard.hub``) sends what these return. Times are
seconds since the epoch; the page computes uptimes from them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import orjson

from supervisor.supervision.series import RequestSeries
from supervisor.supervision.stats import ExitRecord, ModelStats, WorkerStats

__all__ = ["exit_view", "model_view", "models_view", "sse_comment", "sse_message", "worker_view"]

Memory = Callable[[int | None], int | None]
"""The resident memory of a process by pid (None if unknown)."""


def sse_message(kind: str, data: Any) -> bytes:
    """One Server-Sent Event: ``event: kind`` and ``data`` as one line of JSON."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def sse_comment(text: str) -> bytes:
    """A comment line: keeps the stream alive, ignored by readers."""
    return b": " + text.encode() + b"\n\n"


def models_view(
    stats: Iterable[ModelStats], series: RequestSeries, memory: Memory
) -> list[dict[str, Any]]:
    """Every model version, sorted by name then version."""
    ordered = sorted(stats, key=lambda m: (m.config.name, m.config.version))
    return [model_view(m, series, memory) for m in ordered]


def model_view(stats: ModelStats, series: RequestSeries, memory: Memory) -> dict[str, Any]:
    """One model version: state, queue, settings, workers and its newest request sample."""
    c = stats.config
    latest = series.latest(c.name, c.version)
    return {
        "name": c.name,
        "version": c.version,
        "state": stats.state,
        "isDefault": stats.is_default,
        "failure": (
            {"reason": stats.failure, "logTail": list(stats.failure_log_tail)}
            if stats.failure
            else None
        ),
        "queue": {"depth": stats.queue_depth, "capacity": stats.queue_capacity},
        "minWorkers": c.workers,
        "maxWorkers": c.worker_limit,
        "restarts": stats.restarts,
        "requests": stats.requests,
        "workers": [worker_view(w, memory) for w in stats.workers],
        "sample": latest.to_json() if latest else None,
    }


def worker_view(w: WorkerStats, memory: Memory) -> dict[str, Any]:
    """One worker: its label as errors name it (``w1#2``), process and last exit."""
    return {
        "id": w.id,
        "label": f"{w.id}#{w.incarnation}",
        "incarnation": w.incarnation,
        "pid": w.pid,
        "state": w.state,
        "startedAt": round(w.started_at, 3),
        "restarts": w.restarts,
        "batches": w.batches,
        "memory": memory(w.pid) if w.pid is not None and w.state != "DEAD" else None,
        "gpu": w.gpu,
        "lastExit": exit_view(w.last_exit) if w.last_exit else None,
    }


def exit_view(e: ExitRecord) -> dict[str, Any]:
    """How an incarnation ended: its label's incarnation, code or signal, reason."""
    code = e.returncode if e.returncode is not None and e.returncode >= 0 else None
    return {
        "incarnation": e.incarnation,
        "pid": e.pid,
        "reason": e.reason,
        "exitCode": code,
        "signal": e.signal,
        "summary": e.summary(),
        "uptime": round(e.uptime, 3),
        "time": round(e.ended_at, 3),
    }
