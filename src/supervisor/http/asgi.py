"""The bridge from the lean server to an ASGI app (Quart), for every request it does not route.

``serve_asgi`` turns one ``Exchange`` into an ASGI ``http`` scope with
``receive`` and ``send``, so the routes below Quart keep one implementation;
``Lifespan`` runs the app's startup before serving and its shutdown after.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import trio

from supervisor.http import access
from supervisor.http import framing as http1
from supervisor.http.exchange import Exchange, Peer
from supervisor.http.replies import http_error_body

__all__ = ["ASGIApp", "Lifespan", "serve_asgi"]

log = logging.getLogger("supervisor.http")

ASGIApp = Callable[..., Awaitable[None]]
"""An ASGI application: ``await app(scope, receive, send)``."""


class Lifespan:
    """Runs the ASGI app's lifespan protocol: startup before serving, shutdown after."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._to_app, self._app_inbox = trio.open_memory_channel[dict[str, Any]](2)
        self._from_app, self._our_inbox = trio.open_memory_channel[dict[str, Any]](2)
        self._done = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[Lifespan]) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._app_task)
            await self._to_app.send({"type": "lifespan.startup"})
            reply = await self._our_inbox.receive()
            if reply["type"] != "lifespan.startup.complete":
                raise RuntimeError(f"the app failed to start: {reply.get('message', reply)}")
            task_status.started(self)

    async def _app_task(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
        try:
            await self.app(scope, self._app_inbox.receive, self._from_app.send)
        finally:
            self._done.set()

    async def stop(self) -> None:
        """Run the app's shutdown and wait for its lifespan to end."""
        with trio.move_on_after(5):
            await self._to_app.send({"type": "lifespan.shutdown"})
            await self._done.wait()


async def serve_asgi(
    app: ASGIApp, local: Peer, exchange: Exchange, *, scheme: str = "http"
) -> bool:
    """Hand one request to the ASGI app; whether the connection stays open.

    Args:
        app: the ASGI application.
        local: the server's own address (the scope's ``server``).
        exchange: the request, and the way to answer it.
        scheme: ``http``, or ``https`` on a TLS connection (the scope's ``scheme``).
    """
    head = exchange.head
    bridge = _Bridge(exchange)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.0" if head.http10 else "1.1",
        "method": head.method,
        "scheme": scheme,
        "path": _unquote(head.path),
        "raw_path": head.path.encode(),
        "query_string": head.query,
        "root_path": "",
        "headers": head.headers,
        "client": exchange.peer,
        "server": local,
        "state": {},
    }
    try:
        await app(scope, bridge.receive, bridge.send)
    except Exception as exc:
        if _connection_lost(exc):
            return False  # the client went away mid-answer: nothing to log
        log.exception("unexpected error in the app for %s %s", head.method, head.path)
        if bridge.started:
            return False
        body = http_error_body(500, "internal error")
        await bridge.send({"type": "http.response.start", "status": 500, "headers": []})
        await bridge.send({"type": "http.response.body", "body": body})
    if not bridge.complete:
        return False  # a response cut short: the client must see it incomplete
    return exchange.keep_alive


class _Bridge:
    """ASGI ``receive`` and ``send`` for one request over the lean connection."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.body_given = False
        self.started = False
        self.complete = False
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunked = False
        self.bodiless = False

    async def receive(self) -> dict[str, Any]:
        if not self.body_given:
            self.body_given = True
            return {"type": "http.request", "body": self.exchange.body, "more_body": False}
        if not self.complete:
            await self.exchange.until_disconnect()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            access.note_status(self.status)
            self.headers = [(bytes(k).lower(), bytes(v)) for k, v in message.get("headers", [])]
            return
        if message["type"] != "http.response.body" or self.complete:
            return
        data = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        if not self.started:
            await self._start(data, more)
        elif self.bodiless:
            pass
        elif self.chunked:
            await self.exchange.send_chunk(data)
        elif data:
            await self.exchange.send_raw(data)
        if not more:
            if self.chunked and not self.bodiless:
                await self.exchange.end_chunks()
            self.complete = True

    async def _start(self, data: bytes, more: bool) -> None:
        """Send the head, and the body's first part unless the request was HEAD.

        An answer to HEAD has no body (RFC 9110 section 9.3.2); its Content-Length
        is the GET answer's. A body sent anyway would be read by a keep-alive
        client as the start of its next answer.
        """
        self.started = True
        self.bodiless = self.exchange.head.method == "HEAD"
        length = next((int(v) for k, v in self.headers if k == b"content-length"), None)
        if not more and not (self.bodiless and length is not None):
            length = len(data)
        self.chunked = length is None
        head = http1.response_head(
            self.status, self.headers, content_length=length, keep_alive=self.exchange.keep_alive
        )
        if self.bodiless:
            await self.exchange.send_raw(head)
        else:
            await self.exchange.send_raw(head + (http1.chunk(data) if self.chunked else data))


def _connection_lost(error: BaseException) -> bool:
    """Whether ``error`` (or every error in its group) is the connection breaking."""
    if isinstance(error, BaseExceptionGroup):
        return all(_connection_lost(e) for e in error.exceptions)
    return isinstance(error, (trio.BrokenResourceError, trio.ClosedResourceError))


def _unquote(path: str) -> str:
    return unquote(path) if "%" in path else path
