"""What the three apps share: JSON bodies, the error table, app construction."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection
from typing import Any

import orjson
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from supervisor.auth import Tokens, bearer_matches
from supervisor.errors import SupervisorError

__all__ = [
    "error_headers",
    "error_response",
    "http_error_body",
    "json_bytes",
    "json_response",
    "make_app",
    "require_token",
]

_HTTP_TYPES = {
    400: "BadRequestException",
    404: "ResourceNotFoundException",
    405: "MethodNotAllowedException",
    408: "RequestTimeoutException",
    413: "RequestEntityTooLargeException",
}
_HTTP_MESSAGES = {
    404: "Requested resource is not found, please refer to API document.",
    405: "Requested method is not allowed, please refer to API document.",
}


def json_bytes(body: Any) -> bytes:
    """A JSON body, indented like TorchServe's, with a trailing newline."""
    return orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n"


def json_response(body: Any, status: int = 200) -> Response:
    """A JSON response, indented like TorchServe's, with a trailing newline."""
    return Response(json_bytes(body), status=status, content_type="application/json")


def error_response(error: SupervisorError) -> Response:
    """The JSON error body, status and headers for a supervisor error."""
    response = json_response(error.to_json(), error.status)
    for name, value in error_headers(error):
        response.headers[name] = value
    return response


def error_headers(error: SupervisorError) -> list[tuple[str, str]]:
    """The headers that go with a supervisor error (``WWW-Authenticate``, ``Retry-After``)."""
    headers = []
    if error.status == 401:
        headers.append(("WWW-Authenticate", WWW_AUTHENTICATE))
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        headers.append(("Retry-After", str(retry_after)))
    return headers


def http_error_body(code: int, message: str) -> bytes:
    """The JSON body of an HTTP-level error (404, 405, 413, ...), as TorchServe words it."""
    body = {
        "code": code,
        "type": _HTTP_TYPES.get(code, "HttpException"),
        "message": _HTTP_MESSAGES.get(code, message),
    }
    return json_bytes(body)


WWW_AUTHENTICATE = 'Bearer realm="trio-supervisor"'
TOKEN_FAILED = (
    "Token Authorization failed. Token either incorrect, expired, or not provided correctly"
)


def make_app(
    name: str,
    *,
    max_request_size: int = 6553500,
    read_timeout: float = 30.0,
    on_response: Callable[[int], None] | None = None,
) -> QuartTrio:
    """A Quart-Trio app whose every error, ours or the framework's, is JSON.

    Args:
        name: the app's name.
        max_request_size: bodies larger than this get 413 before they are read.
        read_timeout: a body that takes longer than this to arrive gets 408.
        on_response: called with the status of every response (for metrics).
    """
    app = QuartTrio(name)
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.config["MAX_CONTENT_LENGTH"] = max_request_size
    app.config["BODY_TIMEOUT"] = read_timeout

    @app.after_request
    async def _finish(response: Response) -> Response:
        response.headers.setdefault("x-request-id", str(uuid.uuid4()))  # as TorchServe does
        if not await _body_received():
            response.headers["Connection"] = "close"
        if on_response is not None:
            on_response(response.status_code)
        return response

    @app.errorhandler(SupervisorError)
    async def _supervisor_error(error: SupervisorError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    async def _http_error(error: HTTPException) -> Response:
        code = error.code or 500
        message = error.description or error.name
        return Response(http_error_body(code, message), code, content_type="application/json")

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


async def _body_received() -> bool:
    """Receive what is left of the request body; False if it is too large or too slow.

    A response sent before its request's body has arrived leaves Hypercorn's
    HTTP/1.1 connection unable to take the next request: it is closed, or it
    hangs until ``read_timeout``, under a client that reuses it (found by
    tests/test_attacks.py). So an answer given without reading the body (401,
    404, a GET with a body) first receives it, within ``max_request_size`` and
    ``read_timeout``; a body that cannot be received closes the connection.
    """
    try:
        await request.get_data()  # cached: no cost once a route has read the body
    except HTTPException:
        return False
    return True


def require_token(app: QuartTrio, tokens: Tokens, kind: str, open_paths: Collection[str]) -> None:
    """Refuse requests without ``Authorization: Bearer <the kind key>`` (401, JSON).

    Args:
        app: the app to protect.
        tokens: the current keys (read at each request, so rotation takes effect).
        kind: which key this app wants (``inference`` or ``management``).
        open_paths: paths that need no token (health checks, the API description).
    """

    @app.before_request
    async def _check_token() -> Response | None:
        if request.path in open_paths or request.method == "OPTIONS":
            return None
        if bearer_matches(request.headers.get("Authorization"), tokens.key(kind)):
            return None
        body = {"code": 401, "type": "InvalidKeyException", "message": TOKEN_FAILED}
        response = json_response(body, 401)
        response.headers["WWW-Authenticate"] = WWW_AUTHENTICATE
        return response
