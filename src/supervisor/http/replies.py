"""Complete answers as plain values: JSON bodies, the error table, the request id.

Both front ends of the inference port render these: the lean server writes an
``Answer`` as it is, the Quart apps wrap it in a ``Response``
(``supervisor.api.common.to_response``). Nothing here imports a web framework,
so the lean front end can use it without loading Quart or Werkzeug.
"""

from __future__ import annotations

import re
from typing import Any

import attrs
import orjson

from supervisor.errors import SupervisorError

__all__ = [
    "JSON",
    "TOKEN_FAILED",
    "WWW_AUTHENTICATE",
    "Answer",
    "error_answer",
    "error_field_answer",
    "http_error_body",
    "json_answer",
    "json_bytes",
    "request_id",
]

JSON = b"application/json"
WWW_AUTHENTICATE = 'Bearer realm="trio-supervisor"'
TOKEN_FAILED = (
    "Token Authorization failed. Token either incorrect, expired, or not provided correctly"
)

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
# what a client's own X-Request-Id may be to be kept: a uuid, a ULID, a trace id, base64
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


@attrs.frozen
class Answer:
    """A complete response: status, headers (lower-case bytes names) and body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


def json_bytes(body: Any) -> bytes:
    """A JSON body, indented like TorchServe's, with a trailing newline."""
    return orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n"


def json_answer(body: Any, status: int, request_id: bytes) -> Answer:
    """A JSON answer that carries ``x-request-id``."""
    headers = [(b"content-type", JSON), (b"x-request-id", request_id)]
    return Answer(status, headers, json_bytes(body))


def error_answer(error: SupervisorError, request_id: bytes) -> Answer:
    """The JSON error body, status and headers for a supervisor error.

    A 401 carries ``www-authenticate``, an error with a ``retry_after`` a
    ``retry-after``.
    """
    answer = json_answer(error.to_json(), error.status, request_id)
    if error.status == 401:
        answer.headers.append((b"www-authenticate", WWW_AUTHENTICATE.encode()))
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        answer.headers.append((b"retry-after", str(retry_after).encode()))
    return answer


def error_field_answer(
    status: int,
    message: str,
    request_id: bytes,
    *,
    retry_after: int | None = None,
    authenticate: bool = False,
    extra: dict[str, Any] | None = None,
) -> Answer:
    """An error in the shape of OIP and KServe: ``{"error": message}`` (compact JSON).

    Args:
        status: the status.
        message: the error's message.
        request_id: the answer's ``x-request-id``.
        retry_after: seconds for a ``retry-after`` header (a full queue).
        authenticate: add ``www-authenticate`` (a token failure).
        extra: fields that come before ``error`` in the body.
    """
    headers = [(b"content-type", JSON), (b"x-request-id", request_id)]
    if authenticate:
        headers.append((b"www-authenticate", WWW_AUTHENTICATE.encode()))
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    return Answer(status, headers, orjson.dumps({**(extra or {}), "error": message}))


def http_error_body(code: int, message: str) -> bytes:
    """The JSON body of an HTTP-level error (404, 405, 413, ...), as TorchServe words it."""
    body = {
        "code": code,
        "type": _HTTP_TYPES.get(code, "HttpException"),
        "message": _HTTP_MESSAGES.get(code, message),
    }
    return json_bytes(body)


def request_id(client: str | None, own: str) -> str:
    """A response's ``x-request-id``: the client's own, if it sent a usable one, else ``own``.

    Every response of the inference port follows this rule, on either front end.
    A usable id is 1 to 128 characters of letters, digits and ``._:/+=-``; any
    other is ignored (never echoed).

    Args:
        client: the request's ``X-Request-Id`` value, if any.
        own: the server's id for the request (a prediction's: the worker's request id).
    """
    if client is not None and _CLIENT_ID.fullmatch(client):
        return client
    return own
