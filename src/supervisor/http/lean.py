"""The lean HTTP/1.1 front end of the inference port.

Hypercorn and Quart cost about 0.6 ms of CPU per request before any model work
(docs/performance.md), more than the whole budget of a fast model. This server
reads requests off trio sockets itself, answers the routes its router takes
(the prediction routes, ``supervisor.api.fastpath``) with no framework and no
task per request, and hands every other request to the Quart app over ASGI
(``supervisor.http.asgi``), so the rest of the API keeps one implementation.

::

    serve_lean
    ├── the Quart app's lifespan (startup, shutdown)
    ├── accept loop per listener
    └── connection tasks: read a request -> FastRoutes or the ASGI bridge -> write

Limits: request heads of at most 64 KiB (414, 431), bodies of at most
``max_request_size`` (413 before reading), ``read_timeout`` for a request to
arrive once started (heads: the connection is closed; bodies: 408),
``keep_alive_timeout`` between requests, ``write_timeout`` for each part of a
response to be taken by the client (then the connection is dropped), at most
``read_ahead`` bytes read past the request being answered (a client that
pipelines without reading its answers is not read further), and at most
``max_connections`` connections (more get 503). An error answered before the
request was read is followed by a lingering close: the write side is shut and
what the client still sends is discarded for a bounded time, so a client that
sends its whole body before reading (urllib) gets the answer, not a reset.

With a TLS context the port is https: each connection is a ``trio.SSLStream``
whose handshake must end within ``read_timeout``. A failed handshake (an old
TLS version, a client that rejects the certificate) is logged at debug level
and closed; a client that sent plain HTTP gets a JSON 400, in plain HTTP,
saying to use https. Under TLS the lingering close shuts nothing (TLS has no
half-close) and ``client_gone`` asks the kernel whether the peer hung up
instead of peeking, since a TLS alert is bytes too.
"""

from __future__ import annotations

import contextlib
import logging
import math
import select
import socket
import ssl
from collections.abc import Awaitable, Callable

import attrs
import trio

from supervisor.http import access
from supervisor.http import framing as http1
from supervisor.http.asgi import ASGIApp, Lifespan, serve_asgi
from supervisor.http.exchange import CloseConnection, Exchange, Peer, Router
from supervisor.http.framing import RequestHead, RequestRefused
from supervisor.http.replies import http_error_body

__all__ = ["LeanLimits", "serve_lean"]

log = logging.getLogger("supervisor.http")


@attrs.frozen
class LeanLimits:
    """How long and how much a client may take.

    Attributes:
        max_request_size: the largest body accepted (413 beyond, before reading).
        read_timeout: seconds a started request may take to arrive.
        keep_alive_timeout: seconds an idle connection is kept open.
        graceful_timeout: seconds connections get to finish on shutdown.
        write_timeout: seconds a client may take to take each part of a response.
        max_connections: open connections at most; more get 503 and are closed.
        read_ahead: bytes read past the request being answered, at most.
        linger_timeout: seconds an early error waits, discarding, for the client
            to finish sending before the connection is closed.
        linger_size: bytes discarded in that time, at most.
    """

    max_request_size: int = 6553500
    read_timeout: float = 30.0
    keep_alive_timeout: float = 5.0
    graceful_timeout: float = 11.0
    write_timeout: float = 30.0
    max_connections: int = 1000
    read_ahead: int = 64 * 1024
    linger_timeout: float = 2.0
    linger_size: int = 16 * 1024 * 1024


class _Server:
    def __init__(
        self,
        app: ASGIApp,
        router: Router,
        limits: LeanLimits,
        local: Peer,
        tls: ssl.SSLContext | None,
        draining: trio.Event | None = None,
    ) -> None:
        self.app = app
        self.draining = draining if draining is not None else trio.Event()
        self.router = router
        self.limits = limits
        self.local = local
        self.tls = tls
        self.closing = False
        self.connections: set[_Connection] = set()
        self.all_closed = trio.Event()
        self.refusing = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = _Connection(self, stream)
        try:
            if len(self.connections) >= self.limits.max_connections:
                await self._refuse(conn)
                return
            self.connections.add(conn)
            await conn.serve()
        finally:
            conn.peeker.close()
            await trio.aclose_forcefully(stream)
            self.connections.discard(conn)
            if self.closing and not self.connections:
                self.all_closed.set()

    async def _refuse(self, conn: _Connection) -> None:
        """503 to a connection over ``max_connections``; refusals in progress are bounded too."""
        if self.refusing >= self.limits.max_connections:
            return
        self.refusing += 1
        try:
            limit = self.limits.max_connections
            message = f"too many connections (max_connections = {limit}); try again later"
            if await conn.handshake():
                await conn.fail(503, message, [(b"retry-after", b"1")])
        finally:
            self.refusing -= 1

    def close(self) -> None:
        self.closing = True
        for conn in self.connections:
            if conn.phase == _IDLE:
                conn.scope.cancel()
        if not self.connections:
            self.all_closed.set()


_IDLE, _HEAD, _BODY, _BUSY, _WRITING = range(5)


class _Connection:
    """One client connection: requests one after the other, under one cancel scope.

    The scope's deadline follows what the connection waits for: the keep-alive
    timeout between requests, the read timeout while a request arrives or a
    response is taken, none while the request is being answered.
    """

    def __init__(self, server: _Server, stream: trio.SocketStream) -> None:
        self.server = server
        self.stream: trio.abc.Stream = stream
        if server.tls is not None:
            self.stream = trio.SSLStream(
                stream, server.tls, server_side=True, https_compatible=True
            )
        self.raw = stream
        self.buffer = bytearray()
        self.limits = server.limits
        self.scope = trio.CancelScope()
        self.phase = _IDLE
        sock = stream.socket
        self.peeker = socket.fromfd(sock.fileno(), sock.family, sock.type)
        try:
            peer = sock.getpeername()
            self.peer: Peer = (str(peer[0]), int(peer[1]))
        except OSError:
            self.peer = ("", 0)

    @property
    def closing(self) -> bool:
        """Whether the server is draining or shutting down (no keep-alive then)."""
        return self.server.closing or self.server.draining.is_set()

    def _enter(self, phase: int, timeout: float) -> None:
        self.phase = phase
        self.scope.deadline = trio.current_time() + timeout if timeout < math.inf else math.inf

    async def handshake(self) -> bool:
        """Complete the TLS handshake, if the port is https; whether the connection goes on.

        A failure is logged at debug level (it is the client's); a client that
        spoke plain HTTP is answered 400 in plain HTTP.
        """
        if not isinstance(self.stream, trio.SSLStream):
            return True
        why: BaseException | None = None
        with trio.move_on_after(self.limits.read_timeout):
            try:
                await self.stream.do_handshake()
                return True
            except trio.BrokenResourceError as exc:
                why = exc.__cause__ or exc
        log.debug("TLS handshake with %s:%d failed: %s", *self.peer, why or "timed out")
        if isinstance(why, ssl.SSLError) and why.reason == "HTTP_REQUEST":
            self.stream = self.raw  # what OpenSSL saw was a plain HTTP request
            await self.fail(400, f"this port serves https: use {self._https_url()}")
        return False

    def _https_url(self) -> str:
        """``https://`` and the address this client connected to."""
        name = self.raw.socket.getsockname()
        host = str(name[0])
        return f"https://[{host}]:{name[1]}/" if ":" in host else f"https://{host}:{name[1]}/"

    async def serve(self) -> None:
        try:
            with self.scope:
                if not await self.handshake():  # phase _IDLE: a shutdown closes it
                    return
                await self._requests()
            if self.scope.cancelled_caught and self.phase == _BODY:
                await self.fail(408, "the request body did not arrive in time")
        except RequestRefused as exc:
            await self.fail(exc.status, exc.message)
        except (trio.BrokenResourceError, trio.ClosedResourceError, CloseConnection):
            pass

    async def _requests(self) -> None:
        limits = self.limits
        while not self.server.closing:
            if not self.buffer:
                self._enter(_IDLE, limits.keep_alive_timeout)
                if not await self._receive():
                    return
            self._enter(_HEAD, limits.read_timeout)
            head = await self._head()
            if head is None:
                return
            self._enter(_BODY, limits.read_timeout)
            body = await self._body(head)
            if body is None:
                return
            self._enter(_BUSY, math.inf)
            if not await self._respond(head, body):
                return

    async def _head(self) -> RequestHead | None:
        """The next request's head; None if the client closed first."""
        end = http1.find_head(self.buffer)
        while end < 0:
            if not await self._receive():
                return None
            end = http1.find_head(self.buffer)
        data = bytes(self.buffer[:end])
        del self.buffer[: end + 4]
        return http1.parse_head(data)

    async def _receive(self, most: int = 65536) -> bool:
        data = await self.stream.receive_some(most)
        self.buffer += data
        return bool(data)

    async def _body(self, head: RequestHead) -> bytes | None:
        """The whole body; None if the client closed first."""
        limit = self.limits.max_request_size
        if head.content_length is not None and head.content_length > limit:
            raise RequestRefused(413, f"the request body is larger than {limit} bytes")
        if not head.has_body:
            return b""
        if head.expect_continue and not self.buffer:
            await self.stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
        if head.chunked:
            return await self._chunked_body(limit)
        return await self._sized_body(head.content_length or 0)

    async def _sized_body(self, size: int) -> bytes | None:
        while len(self.buffer) < size:
            if not await self._receive():
                return None
        body = bytes(self.buffer[:size])
        del self.buffer[:size]
        return body

    async def _chunked_body(self, limit: int) -> bytes | None:
        decoder = http1.ChunkedBody(limit)
        decoder.feed(self.buffer)
        while not decoder.done:
            if not await self._receive():
                return None
            decoder.feed(self.buffer)
        return bytes(decoder.body)

    async def _respond(self, head: RequestHead, body: bytes) -> bool:
        """Answer one request (and write its access line); whether the connection stays open."""
        with access.open_entry(self.peer, head.method, head.path, head.http10):
            return await self._answer(head, body)

    async def _answer(self, head: RequestHead, body: bytes) -> bool:
        handler = self.server.router(head)
        exchange = Exchange(self, head, body)
        if handler is None:
            scheme = "http" if self.server.tls is None else "https"
            return await serve_asgi(self.server.app, self.server.local, exchange, scheme=scheme)
        answer = await handler(exchange)
        keep = exchange.keep_alive
        if answer is None:
            return keep
        access.note_status(answer.status)
        self._enter(_WRITING, self.limits.write_timeout)
        await self.stream.send_all(
            http1.response_head(
                answer.status, answer.headers, content_length=len(answer.body), keep_alive=keep
            )
            + answer.body
        )
        return keep

    async def write(self, data: bytes) -> None:
        """Send part of a response; a client that does not take it in time is dropped."""
        self._enter(_WRITING, self.limits.write_timeout)
        await self.stream.send_all(data)
        self._enter(_BUSY, math.inf)

    def client_gone(self) -> bool:
        """Whether the client has closed the connection (a peek, without blocking).

        Under TLS a peek cannot tell a close_notify alert from a pipelined request
        (both are encrypted bytes), so the kernel is asked whether the peer hung up.
        """
        if self.server.tls is not None:
            return _hung_up(self.peeker)
        try:
            return self.peeker.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    async def until_eof(self) -> None:
        """Read (keeping the bytes) until the client closes or the connection breaks.

        At most ``read_ahead`` bytes are kept: past that, a client pipelining
        requests (and perhaps not reading the answers) is not read further, and
        its closing goes unnoticed until the answer is written.
        """
        room = self.limits.read_ahead
        try:
            while len(self.buffer) < room:
                if not await self._receive(room - len(self.buffer)):
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        await trio.sleep_forever()

    async def fail(
        self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        """Answer with a JSON error, then close lingering: see ``_linger``."""
        body = http_error_body(status, message)
        headers = [(b"content-type", b"application/json"), *(headers or [])]
        data = http1.response_head(status, headers, content_length=len(body), keep_alive=False)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            with trio.move_on_after(self.limits.write_timeout) as sending:
                await self.stream.send_all(data + body)
            if not sending.cancelled_caught:
                await self._linger()

    async def _linger(self) -> None:
        """Shut the write side, then discard what the client still sends, within bounds.

        Closing a socket with unread bytes makes the kernel reset the connection,
        and a reset can destroy the answer before the client reads it: a client
        that sends its whole body before reading (urllib) would see "connection
        reset" instead of the 413. So the close waits until the client has sent
        all (or ``linger_size`` bytes, or ``linger_timeout`` seconds are over).
        """
        if isinstance(self.stream, trio.abc.HalfCloseableStream):
            await self.stream.send_eof()  # TLS has no half-close: the client reads to the end
        left = self.limits.linger_size
        with trio.move_on_after(self.limits.linger_timeout):
            while left > 0:
                data = await self.stream.receive_some(min(left, 65536))
                if not data:
                    return
                left -= len(data)


_RDHUP = getattr(select, "POLLRDHUP", 0x2000)  # Linux: the peer shut its write side


def _hung_up(sock: socket.socket) -> bool:
    """Whether the peer of ``sock`` closed (or reset) the connection, without blocking."""
    poller = select.poll()
    poller.register(sock.fileno(), _RDHUP)  # POLLHUP and POLLERR are always reported
    return bool(poller.poll(0))


async def serve_lean(
    app: ASGIApp,
    router: Router,
    address: str,
    limits: LeanLimits,
    shutdown: trio.Event,
    *,
    tls: ssl.SSLContext | None = None,
    draining: trio.Event | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` (and ``router``'s fast routes) on ``address`` until ``shutdown``.

    Args:
        app: the ASGI app for every request the router does not take.
        router: picks a fast handler for a request head, or None.
        address: ``host:port`` (port 0 picks a free one).
        limits: sizes and timeouts.
        shutdown: when set, stop accepting, let requests in flight finish (within
            ``limits.graceful_timeout``), close idle connections.
        tls: serve https with this server context (see ``supervisor.http.tls``).
        draining: once set, every answer carries ``Connection: close`` and ends
            its connection (the server still accepts until ``shutdown``).
        task_status: receives ``http://host:port`` (``https://`` with ``tls``) once
            listening.

    Raises:
        OSError: the address cannot be listened on.
    """
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    listeners = await trio.open_tcp_listeners(int(port), host=host or None)
    sockname = listeners[0].socket.getsockname()
    ip = str(sockname[0])
    bound = f"[{ip}]:{sockname[1]}" if ":" in ip else f"{ip}:{sockname[1]}"
    server = _Server(app, router, limits, (str(sockname[0]), int(sockname[1])), tls, draining)
    scheme = "http" if tls is None else "https"
    async with trio.open_nursery() as outer:
        lifespan = await outer.start(Lifespan(app).run)
        try:
            async with trio.open_nursery() as connections:
                async with trio.open_nursery() as accepting:
                    accepting.start_soon(_accept(listeners, server.handle, connections))
                    task_status.started(f"{scheme}://{bound}")
                    await shutdown.wait()
                    accepting.cancel_scope.cancel()
                server.close()
                with trio.move_on_after(limits.graceful_timeout):
                    await server.all_closed.wait()
                connections.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await lifespan.stop()


def _accept(
    listeners: list[trio.SocketListener],
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    nursery: trio.Nursery,
) -> Callable[[], Awaitable[None]]:
    """The accept loop: every new connection runs ``handler`` in ``nursery``."""

    async def accept() -> None:
        await trio.serve_listeners(handler, listeners, handler_nursery=nursery)

    return accept
