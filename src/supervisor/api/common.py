"""What the three apps share: JSON bodies, the error table, app construction."""

from __future__ import annotations

from typing import Any

import orjson
from quart import Response
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from supervisor.errors import SupervisorError

__all__ = ["error_response", "json_response", "make_app"]

_HTTP_TYPES = {
    400: "BadRequestException",
    404: "ResourceNotFoundException",
    405: "MethodNotAllowedException",
    413: "RequestEntityTooLargeException",
}
_HTTP_MESSAGES = {
    404: "Requested resource is not found, please refer to API document.",
    405: "Requested method is not allowed, please refer to API document.",
}


def json_response(body: Any, status: int = 200) -> Response:
    """A JSON response, indented like TorchServe's, with a trailing newline."""
    data = orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n"
    return Response(data, status=status, content_type="application/json")


def error_response(error: SupervisorError) -> Response:
    """The JSON error body and status for a supervisor error."""
    return json_response(error.to_json(), error.status)


def make_app(name: str) -> QuartTrio:
    """A Quart-Trio app whose every error, ours or the framework's, is JSON."""
    app = QuartTrio(name)
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False

    @app.errorhandler(SupervisorError)
    async def _supervisor_error(error: SupervisorError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        code = error.code or 500
        message = _HTTP_MESSAGES.get(code, error.description or error.name)
        body = {"code": code, "type": _HTTP_TYPES.get(code, "HttpException"), "message": message}
        return json_response(body, code)

    @app.errorhandler(Exception)
    async def _unexpected(error: Exception) -> Response:
        app.logger.exception("unexpected error", exc_info=error)
        body = {
            "code": 500,
            "type": "InternalServerException",
            "message": f"internal error: {error!r}",
        }
        return json_response(body, 500)

    return app
