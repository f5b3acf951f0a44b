"""HTTP statuses as gRPC status codes, by TorchServe's table, and the metadata checks.

Every failure the pipeline knows has an HTTP status (``supervisor.errors``);
a gRPC call ends with the code TorchServe's ``GRPCUtils.getGRPCStatusCode``
gives that status: 400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 403
PERMISSION_DENIED, 404 NOT_FOUND, 409 ABORTED, 413 and 429 RESOURCE_EXHAUSTED,
503 UNAVAILABLE, 504 DEADLINE_EXCEEDED, any other 4xx FAILED_PRECONDITION and
any other 5xx (a worker's death: 500, 507) INTERNAL. The message is the
HTTP answer's, so it names the worker and its incarnation alike, and carries the
worker's last log lines (REST's ``logTail``).
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from supervisor.auth import Tokens, bearer_matches
from supervisor.errors import SupervisorError

__all__ = ["LOG_LINES", "code_for", "failure_message", "metadata_headers", "token_accepted"]

LOG_LINES = 20
"""The worker's last log lines a failure's message carries (REST has them as ``logTail``)."""

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.PERMISSION_DENIED,  # the model API is off: TorchServe's answer
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    416: grpc.StatusCode.OUT_OF_RANGE,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def code_for(status: int) -> grpc.StatusCode:
    """The gRPC code of an HTTP status (TorchServe's mapping; 405 as its model-API-off)."""
    if status in _CODES:
        return _CODES[status]
    if 200 <= status < 300:
        return grpc.StatusCode.OK
    if 400 <= status < 500:
        return grpc.StatusCode.FAILED_PRECONDITION
    if 500 <= status < 600:
        return grpc.StatusCode.INTERNAL
    return grpc.StatusCode.UNKNOWN


def failure_message(error: SupervisorError | None, message: str) -> str:
    """A failure's message, with the worker's last log lines when ``error`` has them."""
    tail = error.log_tail[-LOG_LINES:] if error is not None else ()
    if not tail:
        return message
    return message + "; the worker's last log lines:\n" + "\n".join(tail)


def metadata_headers(
    metadata: Iterable[tuple[str, str | bytes]] | None,
) -> list[tuple[bytes, bytes]]:
    """A call's metadata as request headers, for ``worker_fields``.

    Binary (``-bin``) values and gRPC's own (``grpc-*``, pseudo-headers) are left out.
    """
    headers = []
    for key, value in metadata or ():
        name = key.lower()
        if isinstance(value, bytes) or name.startswith((":", "grpc-")) or name.endswith("-bin"):
            continue
        headers.append((name.encode("latin-1"), value.encode("latin-1", "replace")))
    return headers


def token_accepted(
    metadata: Iterable[tuple[str, str | bytes]] | None, tokens: Tokens | None, kind: str
) -> bool:
    """Whether the call's ``authorization`` metadata carries the ``kind`` key (or none is on)."""
    if tokens is None:
        return True
    header = next(
        (v for k, v in metadata or () if k.lower() == "authorization" and isinstance(v, str)), None
    )
    return bearer_matches(header, tokens.key(kind))
