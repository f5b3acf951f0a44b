"""Describe output: a model's settings, state and workers as JSON-ready dicts.

``minWorkers`` and ``maxWorkers`` are the model's current ones: a scale call
sets both, as in TorchServe.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from supervisor.config import ModelConfig
from supervisor.supervision.hostmetrics import process_rss
from supervisor.supervision.stats import ExitRecord, ModelStats, WorkerStats

__all__ = ["describe_model", "model_url"]


def model_url(config: ModelConfig) -> str:
    """The ``modelUrl`` shown for a model: its url, else its directory, else its handler."""
    return config.url or config.model_dir or config.handler


def _date(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def describe_model(stats: ModelStats) -> dict[str, Any]:
    """A model's describe entry: TorchServe's fields plus supervision state."""
    c = stats.config
    body: dict[str, Any] = {
        "modelName": c.name,
        "modelVersion": c.version,
        "modelUrl": model_url(c),
        "modelDir": c.model_dir,
        "handler": c.handler,
        "runtime": "python",
        "state": stats.state,
        "isDefault": stats.is_default,
        "minWorkers": c.workers,
        "maxWorkers": c.worker_limit,
        "batchSize": c.batch_size,
        "maxBatchDelay": round(c.max_batch_delay * 1000),
        "responseTimeout": c.response_timeout,
        "startupTimeout": c.startup_timeout,
        "memoryLimitMb": c.memory_limit_mb,
        "restartPolicy": {
            "maxRestarts": c.restart.max_restarts,
            "window": c.restart.window,
            "backoffInitial": c.restart.backoff_initial,
            "backoffMax": c.restart.backoff_max,
            "healthyAfter": c.restart.healthy_after,
        },
        "restarts": stats.restarts,
        "warmSpare": {"enabled": c.warm_spare, "pid": stats.spare_pid},
        "workers": [_worker(w) for w in stats.workers],
        "jobQueueStatus": {
            "remainingCapacity": stats.queue_capacity - stats.queue_depth,
            "pendingRequests": stats.queue_depth,
        },
    }
    if stats.failure:
        body["failure"] = {"reason": stats.failure, "logTail": list(stats.failure_log_tail)}
    return body


def _worker(w: WorkerStats) -> dict[str, Any]:
    return {
        "id": w.id,
        "pid": w.pid,
        "incarnation": w.incarnation,
        "state": w.state,
        "status": "READY" if w.state in ("READY", "BUSY") else "UNLOADING",
        "startTime": _date(w.started_at),
        "restarts": w.restarts,
        "batches": w.batches,
        "gpu": w.gpu is not None,
        "gpuId": w.gpu,
        "memoryUsage": process_rss(w.pid),
        "lastExit": _exit(w.last_exit) if w.last_exit else None,
        "logTail": list(w.log_tail),
    }


def _exit(e: ExitRecord) -> dict[str, Any]:
    return {
        "incarnation": e.incarnation,
        "pid": e.pid,
        "reason": e.reason,
        "exitCode": e.returncode if e.returncode is not None and e.returncode >= 0 else None,
        "signal": e.signal,
        "uptime": round(e.uptime, 3),
        "time": _date(e.ended_at),
        "logTail": list(e.log_tail[-20:]),
    }
