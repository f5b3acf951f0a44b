"""One request on a lean connection, as a route handler or the ASGI bridge sees it.

``Exchange`` gives the parsed head, the whole body and the ways to answer
(a response with a known length, or a chunked one); ``CloseConnection`` ends
the connection at once. The connection itself is the lean server's; this
module names only what an exchange needs of it (``Connection``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from supervisor.http import framing as http1
from supervisor.http.framing import RequestHead
from supervisor.http.replies import Answer

__all__ = ["CloseConnection", "Connection", "Exchange", "FastHandler", "Peer", "Router"]

Peer = tuple[str, int]
"""A socket address: host and port."""


class Connection(Protocol):
    """What an exchange needs of the connection it arrived on."""

    peer: Peer

    @property
    def closing(self) -> bool:
        """Whether the server is shutting down (no keep-alive then)."""

    def client_gone(self) -> bool:
        """Whether the client has closed its side (without blocking)."""

    async def until_eof(self) -> None:
        """Return when the client closes its side."""

    async def write(self, data: bytes) -> None:
        """Send bytes to the client (bounded by ``write_timeout``)."""


class CloseConnection(Exception):
    """Raised by a handler to end the connection at once (e.g. a stream cut short)."""


class Exchange:
    """What a route handler gets for one request.

    Attributes:
        head: the parsed request head.
        body: the complete request body.
        peer: the client's address.
    """

    def __init__(self, conn: Connection, head: RequestHead, body: bytes) -> None:
        self._conn = conn
        self.head = head
        self.body = body
        self.peer = conn.peer

    def client_gone(self) -> bool:
        """Whether the client has closed its side (checked without blocking)."""
        return self._conn.client_gone()

    async def until_disconnect(self) -> None:
        """Return when the client closes its side of the connection.

        Bytes that arrive meanwhile (a pipelined next request) are kept.
        """
        await self._conn.until_eof()

    async def send_head(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Start a chunked response."""
        await self._conn.write(
            http1.response_head(status, headers, content_length=None, keep_alive=self.keep_alive)
        )

    async def send_raw(self, data: bytes) -> None:
        """Send bytes of a response as they are (a head, or a body with a known length)."""
        await self._conn.write(data)

    async def send_chunk(self, data: bytes) -> None:
        """Send one chunk of a chunked response started with ``send_head``."""
        if data:
            await self._conn.write(http1.chunk(data))

    async def end_chunks(self) -> None:
        """End a chunked response."""
        await self._conn.write(http1.LAST_CHUNK)

    @property
    def keep_alive(self) -> bool:
        """Whether the connection stays open after this response."""
        return self.head.keep_alive and not self._conn.closing


FastHandler = Callable[[Exchange], Awaitable["Answer | None"]]
"""Answers a request it takes (an Answer, or None once it streamed its own), or is not called."""
Router = Callable[[RequestHead], "FastHandler | None"]
"""Picks the fast handler for a request, or None to hand it to the ASGI app."""
