"""The access log: one line per answered request, in TorchServe's format.

A line reads ``/127.0.0.1:53478 "POST /predictions/x HTTP/1.1" 200 12``: the
client, the request line (the path without its query string, which may carry a
signed URL), the status and the latency in milliseconds. The lines go to the
``supervisor.access`` logger; ``supervisor.logsetup`` gives it a file, or leaves
it off (the default), and then each request costs one ``isEnabledFor`` check.

Each front end opens an ``AccessEntry`` for a request it is about to answer
(``open_entry``: the lean server per request, the guard on the Hypercorn ports)
and notes the status it sends (``note_status``). The prediction pipeline writes
its own line at the one place it records an outcome (``record``, with the
model's name); every other request's line is written when its entry closes.
An entry lives in a context variable, so the ASGI app's tasks reach it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Iterator

__all__ = [
    "ACCESS_LOGGER",
    "AccessEntry",
    "access_line",
    "note_status",
    "open_entry",
    "record",
]

ACCESS_LOGGER = "supervisor.access"
"""The logger that access lines are written to (TorchServe's ``ACCESS_LOG``)."""

_log = logging.getLogger(ACCESS_LOGGER)
_current: contextvars.ContextVar[AccessEntry | None] = contextvars.ContextVar(
    "access_entry", default=None
)


class AccessEntry:
    """One request on its way to an access line.

    Attributes:
        client: the client's address as ``/host:port``.
        request: the request line, ``METHOD /path HTTP/1.x``.
        started: ``time.perf_counter()`` when the request was taken up.
        status: the status sent (0 until one is).
        written: whether the line was written.
    """

    __slots__ = ("client", "request", "started", "status", "written")

    def __init__(self, client: str, request: str) -> None:
        self.client = client
        self.request = request
        self.started = time.perf_counter()
        self.status = 0
        self.written = False

    def write(self, status: int, model: str | None = None) -> None:
        """Write the line (once: later calls do nothing)."""
        if self.written:
            return
        self.written = True
        millis = (time.perf_counter() - self.started) * 1000
        fields = {"client": self.client, "request": self.request, "status": status}
        fields["latency_ms"] = round(millis, 3)
        if model is not None:
            fields["model"] = model
        line = access_line(self.client, self.request, status, millis)
        # made directly: Logger.info would look up the caller's frame, a third of the cost
        record = _log.makeRecord(ACCESS_LOGGER, logging.INFO, "", 0, line, (), None, None, fields)
        _log.handle(record)


def access_line(client: str, request: str, status: int, millis: float) -> str:
    """TorchServe's access line: ``client "request" status latency-ms``."""
    return f'{client} "{request}" {status} {int(millis)}'


@contextlib.contextmanager
def open_entry(
    peer: tuple[str, int] | None, method: str, path: str, http10: bool
) -> Iterator[AccessEntry | None]:
    """Follow one request: its line is written on exit unless already written.

    Yields None (and costs nothing more) while the access log is off. A request
    that ends without a status (the client left first) gets no line.

    Args:
        peer: the client's host and port, if known.
        method: the request method.
        path: the request path (its query string is left out of the log).
        http10: whether the request is HTTP/1.0.
    """
    if not _log.isEnabledFor(logging.INFO):
        yield None
        return
    client = f"/{peer[0]}:{peer[1]}" if peer else "/-"
    protocol = "HTTP/1.0" if http10 else "HTTP/1.1"
    entry = AccessEntry(client, f"{method} {path} {protocol}")
    token = _current.set(entry)
    try:
        yield entry
    finally:
        _current.reset(token)
        if entry.status:
            entry.write(entry.status)


def note_status(status: int) -> None:
    """The current request is being answered with ``status`` (its line comes later)."""
    entry = _current.get()
    if entry is not None:
        entry.status = status


def record(status: int, model: str | None) -> None:
    """Write the current request's line now, with the model it was for."""
    entry = _current.get()
    if entry is not None:
        entry.write(status, model)
