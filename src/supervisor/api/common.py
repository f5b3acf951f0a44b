"""What the three Quart apps share: rendering answers, the error handlers, tokens.

The bodies, the error table and the request-id rule are framework-free
(``supervisor.http.replies``); this module renders them as Quart responses.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.datastructures import Headers
from werkzeug.exceptions import HTTPException

from supervisor.auth import Tokens, bearer_matches
from supervisor.errors import SupervisorError, Unauthorized
from supervisor.http.replies import (
    TOKEN_FAILED,
    Answer,
    error_answer,
    http_error_body,
    json_bytes,
    request_id,
)

__all__ = [
    "RecordedResponse",
    "error_response",
    "json_response",
    "make_app",
    "quart_headers",
    "require_token",
    "routes_check_token",
    "to_response",
]

_OWN_TOKEN_CHECK = "supervisor.own_token_check"  # app.extensions key: endpoints that check


class RecordedResponse(Response):
    """A response whose metrics its route recorded already (a prediction's).

    ``make_app`` does not count it again in ``Requests2XX`` and kin.
    """


def to_response(answer: Answer, kind: type[Response] = Response) -> Response:
    """``answer`` as a Quart response (of class ``kind``)."""
    return kind(answer.body, answer.status, quart_headers(answer.headers))


def quart_headers(pairs: list[tuple[bytes, bytes]]) -> Headers:
    """Bytes header pairs as Werkzeug headers (repeated names stay repeated)."""
    return Headers([(k.decode("latin-1"), v.decode("latin-1")) for k, v in pairs])


def json_response(body: Any, status: int = 200) -> Response:
    """A JSON response, indented like TorchServe's, with a trailing newline."""
    return Response(json_bytes(body), status=status, content_type="application/json")


def error_response(error: SupervisorError) -> Response:
    """The JSON error body, status and headers for a supervisor error."""
    return to_response(error_answer(error, _request_id().encode()))


def _request_id() -> str:
    """The current request's ``x-request-id`` (``supervisor.http.replies.request_id``)."""
    return request_id(request.headers.get("X-Request-Id"), str(uuid.uuid4()))


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
        if "x-request-id" not in response.headers:
            response.headers["x-request-id"] = _request_id()
        if not await _body_received():
            response.headers["Connection"] = "close"
        if on_response is not None and not isinstance(response, RecordedResponse):
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

    Routes named with ``routes_check_token`` are let through: they check the
    token themselves (the prediction routes, in ``supervisor.api.predict``).

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
        if request.endpoint in app.extensions.get(_OWN_TOKEN_CHECK, ()):
            return None
        if bearer_matches(request.headers.get("Authorization"), tokens.key(kind)):
            return None
        return error_response(Unauthorized(TOKEN_FAILED))


def routes_check_token(app: QuartTrio, endpoints: Collection[str]) -> None:
    """Say that the routes ``endpoints`` check the token themselves (``require_token``)."""
    app.extensions.setdefault(_OWN_TOKEN_CHECK, set()).update(endpoints)
