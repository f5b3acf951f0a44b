"""The inference API (port 8080): ``/ping``, ``/predictions`` and ``/explanations``."""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable, Callable

import trio
from quart import Response, request
from quart_trio import QuartTrio

from handlers.protocol import InferItem, ReplyItem
from supervisor.api.common import error_response, json_response
from supervisor.api.streaming import quiet_aborted_streams, streamed_response
from supervisor.batching import Job
from supervisor.core import Supervisor
from supervisor.errors import (
    InvalidRequest,
    ModelNotFound,
    ModelVersionNotFound,
    SupervisorError,
)

__all__ = [
    "DEADLINE_HEADER",
    "FORM_TYPES",
    "RESERVED_HEADERS",
    "RequestObserver",
    "add_inference_routes",
    "failed_reply_body",
    "job_version",
    "parse_deadline",
    "queue_time",
]

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
"""Bodies whose fields become parameters of their own."""
RESERVED_HEADERS = frozenset({"url_path", "explain", "describe"})
"""Header names the server sets for the worker, never taken from clients (lower case)."""

RequestObserver = Callable[[str, str, int, float, float | None], None]
"""Called once per answered request: model, version, status, latency s, queue s."""


def add_inference_routes(app: QuartTrio, sup: Supervisor, observe: RequestObserver | None) -> None:
    """Add ``/ping``, ``/predictions/...`` and ``/explanations/...`` to ``app``.

    A streamed answer is sent as a chunked body, one chunk per part
    (``supervisor.api.streaming``).
    """
    quiet_aborted_streams()

    @app.route("/ping", methods=["GET", "POST"])
    async def ping() -> Response:
        failed = sup.unhealthy_models()
        if failed:
            return json_response({"status": "Unhealthy", "failedModels": failed}, 500)
        return json_response({"status": "Healthy"})

    async def infer(model: str, version: str | None, extra: str, explain: bool) -> Response:
        started = trio.current_time()
        job: Job | None = None

        def record(status: int) -> None:
            if observe is not None:
                latency = trio.current_time() - started
                served_by = job_version(sup, model, version)
                observe(model, served_by, status, latency, queue_time(job))

        try:
            deadline = parse_deadline(request.headers.get(DEADLINE_HEADER), started)
            item = await _item(extra, explain)
            job = sup.submit(item, model, version, deadline)
            reply = await job.wait()
            if job.streamed:
                return streamed_response(job, reply, record)  # records at the stream's end
            response = _response(reply)
        except (ModelNotFound, ModelVersionNotFound) as exc:
            return error_response(exc)  # no metric series for made-up names
        except SupervisorError as exc:
            response = error_response(exc)
        record(response.status_code)
        return response

    for prefix, explain in (("predictions", False), ("explanations", True)):
        _add_routes(app, prefix, explain, infer)


Infer = Callable[[str, str | None, str, bool], Awaitable[Response]]


def _add_routes(app: QuartTrio, prefix: str, explain: bool, infer: Infer) -> None:
    methods = ["POST", "PUT"]

    async def route(model: str, version: str | None = None, extra: str = "") -> Response:
        return await infer(model, version, extra, explain)

    route.__name__ = f"{prefix}_route"
    app.add_url_rule(f"/{prefix}/<model>", view_func=route, methods=methods)
    app.add_url_rule(f"/{prefix}/<model>/<version>", view_func=route, methods=methods)
    app.add_url_rule(f"/{prefix}/<model>/<version>/<path:extra>", view_func=route, methods=methods)


DEADLINE_HEADER = "X-Client-Timeout-Ms"
"""A request header: milliseconds the client will wait for the answer."""


def parse_deadline(raw: str | None, started: float) -> float:
    """The deadline a ``X-Client-Timeout-Ms`` value sets (``math.inf`` without one).

    Raises:
        InvalidRequest: the value is not a positive number of milliseconds.
    """
    if raw is None:
        return math.inf
    try:
        millis = float(raw)
    except ValueError:
        millis = -1.0
    if not millis > 0:
        raise InvalidRequest(f"{DEADLINE_HEADER} must be a positive number of milliseconds")
    return started + millis / 1000


def queue_time(job: Job | None) -> float | None:
    """Seconds the job waited before a worker took it (None if none did)."""
    if job is None or job.dispatched_at is None:
        return None
    return job.dispatched_at - job.enqueued_at


def job_version(sup: Supervisor, model: str, version: str | None) -> str:
    """The version that served (or would serve) a request, for metric labels."""
    try:
        return sup.pool(model, version).config.version
    except SupervisorError:
        return version or ""


def failed_reply_body(reply: ReplyItem) -> dict[str, object]:
    """The JSON error body of a worker's failed reply."""
    return {"code": reply.status, "type": "InternalServerException", "message": reply.message}


def _response(reply: ReplyItem) -> Response:
    if not reply.ok:
        return json_response(failed_reply_body(reply), reply.status)
    response = Response(reply.body, status=reply.status, content_type=reply.content_type or None)
    for key, value in reply.headers.items():
        response.headers[key] = value
    return response


async def _item(extra: str, explain: bool) -> InferItem:
    """The request as the worker sees it: headers, and a body or form fields."""
    headers = {k: v for k, v in request.headers.items() if k.lower() not in RESERVED_HEADERS}
    headers["url_path"] = extra
    if explain:
        headers["explain"] = "True"
    if request.mimetype in FORM_TYPES:
        form = await request.form
        files = await request.files
        params = {name: ("text/plain", value.encode()) for name, value in form.items()}
        for name, upload in files.items():
            params[name] = (upload.content_type or "application/octet-stream", upload.read())
    else:
        params = {"body": (request.headers.get("Content-Type", ""), await request.get_data())}
    return InferItem(uuid.uuid4().hex, headers, params)
