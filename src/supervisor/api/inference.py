"""The inference API (port 8080): ``/ping`` and ``/predictions``."""

from __future__ import annotations

import uuid

from quart import Response, request
from quart_trio import QuartTrio

from handlers.protocol import InferItem
from supervisor.api.common import json_response, make_app
from supervisor.core import Supervisor

__all__ = ["inference_app"]

_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def inference_app(sup: Supervisor) -> QuartTrio:
    """Build the inference app over a running supervisor."""
    app = make_app("trio-supervisor-inference")

    @app.route("/ping", methods=["GET", "POST"])
    async def ping() -> Response:
        failed = sup.unhealthy_models()
        if failed:
            return json_response({"status": "Unhealthy", "failedModels": failed}, 500)
        return json_response({"status": "Healthy"})

    @app.route("/predictions/<model>", methods=["POST", "PUT"])
    @app.route("/predictions/<model>/<version>", methods=["POST", "PUT"])
    async def predict(model: str, version: str | None = None) -> Response:
        item = await _item()
        job = sup.submit(item, model, version)
        reply = await job.wait()
        if not reply.ok:
            body = {
                "code": reply.status,
                "type": "InternalServerException",
                "message": reply.message,
            }
            return json_response(body, reply.status)
        response = Response(
            reply.body, status=reply.status, content_type=reply.content_type or None
        )
        for key, value in reply.headers.items():
            response.headers[key] = value
        return response

    return app


async def _item() -> InferItem:
    """The request as the worker sees it: headers, and a body or form fields."""
    headers = {k: v for k, v in request.headers.items()}
    content_type = request.headers.get("Content-Type", "")
    if content_type.split(";", 1)[0].strip().lower() in _FORM_TYPES:
        form = await request.form
        files = await request.files
        params = {name: ("text/plain", value.encode()) for name, value in form.items()}
        for name, upload in files.items():
            params[name] = (upload.content_type or "application/octet-stream", upload.read())
    else:
        params = {"body": (content_type, await request.get_data())}
    return InferItem(uuid.uuid4().hex, headers, params)
