"""The management API (port 8081): list and describe models."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio

from supervisor.api.common import json_response, make_app
from supervisor.config import ModelConfig
from supervisor.core import Supervisor
from supervisor.stats import ExitStats, ModelStats, WorkerStats

__all__ = ["describe_model", "management_app"]


def management_app(sup: Supervisor) -> QuartTrio:
    """Build the management app over a running supervisor."""
    app = make_app("trio-supervisor-management")

    @app.route("/models", methods=["GET"])
    async def list_models() -> Response:
        limit = _int_arg("limit", 100)
        limit = 100 if limit <= 0 or limit > 100 else limit
        start = max(0, _int_arg("next_page_token", 0))
        names = sup.registry.names()
        page = names[start : start + limit]
        body: dict[str, Any] = {
            "models": [{"modelName": n, "modelUrl": _url(sup.pool(n).config)} for n in page]
        }
        if start + limit < len(names):
            body["nextPageToken"] = str(start + limit)
        return json_response(body)

    @app.route("/models/<name>", methods=["GET"])
    @app.route("/models/<name>/<version>", methods=["GET"])
    async def describe(name: str, version: str | None = None) -> Response:
        return json_response([describe_model(s) for s in sup.describe(name, version)])

    return app


def _int_arg(key: str, default: int) -> int:
    try:
        return int(request.args.get(key, default))
    except ValueError:
        return default


def _url(config: ModelConfig) -> str:
    return config.model_dir or config.handler


def _date(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def describe_model(stats: ModelStats) -> dict[str, Any]:
    """A model's describe entry: TorchServe's fields plus supervision state."""
    c = stats.config
    body: dict[str, Any] = {
        "modelName": c.name,
        "modelVersion": c.version,
        "modelUrl": _url(c),
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
        "restartPolicy": {
            "maxRestarts": c.restart.max_restarts,
            "window": c.restart.window,
            "backoffInitial": c.restart.backoff_initial,
            "backoffMax": c.restart.backoff_max,
            "healthyAfter": c.restart.healthy_after,
        },
        "restarts": stats.restarts,
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
        "gpu": False,
        "lastExit": _exit(w.last_exit) if w.last_exit else None,
        "logTail": list(w.log_tail),
    }


def _exit(e: ExitStats) -> dict[str, Any]:
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
