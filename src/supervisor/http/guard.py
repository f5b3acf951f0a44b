"""An ASGI guard in front of the Quart apps that Hypercorn serves.

The lean front end (``supervisor.http.lean``) enforces its limits itself; on the
Hypercorn ports (management, metrics, and inference with ``lean_http = false``)
this middleware does what Hypercorn and Quart do not:

- a request line or head over 64 KiB gets 414 or 431, as on the lean port;
- a declared ``Content-Length`` over ``max_request_size`` gets 413 before the
  body is read and before the app sees the request (Quart only refuses a body
  when a route reads it, so a route acting on its query alone went ahead);
- a request with both ``Content-Length`` and ``Transfer-Encoding`` gets 400 and
  the connection is closed (RFC 9112 section 6.3: the two parsers on a path may
  disagree about where the body ends);
- at most ``max_requests`` requests are in progress (503 beyond);
- once ``draining`` is set (the server is about to stop), every answer carries
  ``Connection: close``, so that no client or proxy reuses the connection;
- an early answer is followed by a bounded lingering drain of the body, so a
  client that sends its whole body before reading (urllib) gets the answer;
- the app does not hear of the client's disconnect while its last answer is
  still being written. Quart-Trio cancels the request on that message, and the
  cancellation caught Hypercorn closing the connection, which stayed open for
  as long as the client kept trickling bytes (found by tests/test_hardening_http.py).

``patch_hypercorn`` makes Hypercorn's own answers to malformed requests (a
missing Host, an oversized head) JSON like every other error, and gives its
writes a timeout (``write_timeout`` on its config): Hypercorn shields every
write from cancellation, so a client that never reads its answers held the
connection, and its request's task, for as long as it stayed connected.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import h11
import trio
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio.tcp_server import TCPServer

from supervisor.http import access
from supervisor.http.framing import MAX_HEAD
from supervisor.http.replies import http_error_body

__all__ = ["Guard", "GuardLimits", "patch_hypercorn"]

ASGIApp = Callable[..., Awaitable[None]]
Message = dict[str, Any]


@attrs.frozen
class GuardLimits:
    """What the guard enforces.

    Attributes:
        max_request_size: the largest declared body accepted (413 beyond).
        max_requests: requests in progress at most (503 beyond).
        linger_timeout: seconds an early answer waits, discarding the body.
        linger_size: bytes discarded in that time, at most.
    """

    max_request_size: int = 6553500
    max_requests: int = 1000
    linger_timeout: float = 2.0
    linger_size: int = 16 * 1024 * 1024


def refusal(scope: Message, limits: GuardLimits) -> tuple[int, str] | None:
    """The status and message to refuse a request with, from its head; None to let it in.

    h11 bounds only a head that has not yet arrived whole, so a head of up to
    twice its limit that arrives in one read passes it: the size is checked here.
    """
    headers: list[tuple[bytes, bytes]] = list(scope["headers"])
    target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + 1
    if target > MAX_HEAD:
        return 414, f"the request line is longer than {MAX_HEAD} bytes"
    if target + sum(len(name) + len(value) + 4 for name, value in headers) > MAX_HEAD:
        return 431, f"the request head is longer than {MAX_HEAD} bytes"
    lengths = [value for name, value in headers if name.lower() == b"content-length"]
    if lengths and any(name.lower() == b"transfer-encoding" for name, _ in headers):
        return 400, "both Content-Length and Transfer-Encoding"
    for value in lengths:
        if value.strip().isdigit() and int(value) > limits.max_request_size:
            return 413, f"the request body is larger than {limits.max_request_size} bytes"
    return None


class Guard:
    """The middleware; see the module docstring.

    Args:
        app: the ASGI app behind the guard.
        limits: what is enforced.
        draining: once set, answers close their connections.
    """

    def __init__(
        self, app: ASGIApp, limits: GuardLimits, draining: trio.Event | None = None
    ) -> None:
        self.app = app
        self.limits = limits
        self.in_progress = 0
        self.draining = draining if draining is not None else trio.Event()

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        """Run one ASGI connection scope through the guard."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with access.open_entry(scope.get("client"), scope["method"], _path(scope), _http10(scope)):
            await self._guarded(scope, receive, send)

    async def _guarded(self, scope: Message, receive: Any, send: Any) -> None:
        refused = refusal(scope, self.limits)
        if refused is None and self.in_progress >= self.limits.max_requests:
            refused = 503, f"too many requests in progress (max {self.limits.max_requests})"
        if refused is not None:
            await self._refuse(receive, send, *refused)
            return
        self.in_progress += 1
        try:
            exchange = _Exchange(receive, send, self.draining)
            await self.app(scope, exchange.receive, exchange.send)
        finally:
            self.in_progress -= 1

    async def _refuse(self, receive: Any, send: Any, status: int, message: str) -> None:
        """Answer with a JSON error and ``connection: close``, then drain the body a while."""
        body = http_error_body(status, message)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        if status == 503:
            headers.append((b"retry-after", b"1"))
        access.note_status(status)
        # Hypercorn closes the connection itself when bytes follow a "connection:
        # close" answer (a pipelined request), which can break a send under way
        with contextlib.suppress(trio.BusyResourceError, trio.BrokenResourceError):
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": True})
            await _drain(receive, self.limits)
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def _path(scope: Message) -> str:
    """The request path as sent (percent-encoded), for the access log."""
    raw: bytes | None = scope.get("raw_path")
    return raw.decode("latin-1") if raw else str(scope["path"])


def _http10(scope: Message) -> bool:
    return scope.get("http_version") == "1.0"


async def _drain(receive: Any, limits: GuardLimits) -> None:
    """Receive and discard the request body, within ``linger_timeout`` and ``linger_size``."""
    left = limits.linger_size
    with trio.move_on_after(limits.linger_timeout):
        while left > 0:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            left -= len(message.get("body", b""))


class _Exchange:
    """``receive`` and ``send`` for one request: no disconnect while a send is under way."""

    def __init__(self, receive: Any, send: Any, draining: trio.Event) -> None:
        self._receive = receive
        self._send = send
        self._sending = trio.Lock()
        self._draining = draining

    async def receive(self) -> Message:
        message: Message = await self._receive()
        if message["type"] == "http.disconnect":
            async with self._sending:  # let the send that caused it finish first
                pass
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            access.note_status(int(message["status"]))
            if self._draining.is_set():  # h11 then closes the connection after the answer
                message = {**message, "headers": [*message.get("headers", []), _CLOSE]}
        async with self._sending:
            await self._send(message)


_CLOSE = (b"connection", b"close")

_PROTOCOL_MESSAGES = {
    400: "malformed request (HTTP/1.1 framing, or not exactly one Host header)",
    431: "the request head is too large",
}


async def _json_error_response(self: H11Protocol, status_code: int) -> None:
    body = http_error_body(status_code, _PROTOCOL_MESSAGES.get(status_code, "malformed request"))
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"connection", b"close"),
        *self.config.response_headers("h11"),
    ]
    await self._send_h11_event(h11.Response(status_code=status_code, headers=headers))
    await self._send_h11_event(h11.Data(data=body))
    await self._send_h11_event(h11.EndOfMessage())


_hypercorn_send = TCPServer.protocol_send


async def _send_with_timeout(self: TCPServer, event: Event) -> None:
    """Hypercorn's write, still shielded, but given up after ``config.write_timeout``."""
    if not isinstance(event, RawData):
        await _hypercorn_send(self, event)
        return
    timeout: float = getattr(self.config, "write_timeout", math.inf)
    async with self.send_lock:
        with trio.CancelScope(shield=True, deadline=trio.current_time() + timeout) as scope:
            try:
                await self.stream.send_all(event.data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self.protocol.handle(Closed())
                return
        if scope.cancelled_caught:  # the client does not read: drop it
            await self.stream.aclose()
            await self.protocol.handle(Closed())


def patch_hypercorn() -> None:
    """JSON answers to requests h11 cannot parse; a write timeout (idempotent)."""
    H11Protocol._send_error_response = _json_error_response  # type: ignore[method-assign]
    TCPServer.protocol_send = _send_with_timeout  # type: ignore[method-assign]
