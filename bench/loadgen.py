"""An HTTP/1.1 load generator for 127.0.0.1 only: N keep-alive clients, bounded.

Run: python bench/loadgen.py URL [--concurrency N] [--duration S] [--max-requests N]
                                 [--body JSON] [--header 'K: V']... [--cacert PEM]
     python bench/loadgen.py --ceiling [-c N]   # the generator's own ceiling

Each client is a trio task that owns one keep-alive connection and sends the
same pre-built request bytes back to back (a closed loop: one request in flight
per client). Responses are parsed just enough to find their end (Content-Length
or chunked). Every run is bounded twice: by ``warmup + duration`` seconds and by
``max_requests``; each request also has its own ``timeout``. Requests that end
in the warm-up are not counted.

Why raw sockets and not ``httpx.AsyncClient``: on this 2-core machine the
generator shares the CPU with the server it measures, so its cost per request
matters as much as its ceiling; ``--ceiling`` measures both clients against a
trivial asyncio server (bench/trivial.py) in a child process and prints
requests/s and the generator's CPU time per request.

An ``https://`` URL is served over TLS: each connection is the same raw client
inside a ``trio.SSLStream`` that verifies the server's certificate against
``--cacert`` (``LoadSpec.tls``); the handshake is paid once per connection.
"""

from __future__ import annotations

import argparse
import json
import resource
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import trio

LOCALHOST = "127.0.0.1"
OK = 200
_NOT_CONNECTED = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


class ProtocolError(Exception):
    """The server's bytes are not an HTTP/1.1 response we can frame."""


@dataclass(frozen=True)
class LoadSpec:
    """One load run: where, what, how many clients, and its bounds.

    Raises:
        ValueError: the URL is not ``http://127.0.0.1:PORT/...``.
    """

    url: str
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)
    method: str = "POST"
    concurrency: int = 1
    duration: float = 5.0
    warmup: float = 0.5
    max_requests: int = 1_000_000
    timeout: float = 30.0
    keep_bodies: bool = False
    tls: ssl.SSLContext | None = None  # the client context for an https URL

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if (
            parts.scheme not in ("http", "https")
            or parts.hostname != LOCALHOST
            or parts.port is None
        ):
            raise ValueError(
                f"the load generator targets http(s)://{LOCALHOST}:PORT only: {self.url}"
            )
        if (parts.scheme == "https") != (self.tls is not None):
            raise ValueError("an https URL needs a TLS context (--cacert), an http one none")
        if self.concurrency < 1 or self.duration <= 0 or self.max_requests < 1:
            raise ValueError("concurrency, duration and max_requests must be positive")

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        assert port is not None
        return port

    def request_bytes(self) -> bytes:
        """The request, built once and sent as is by every client."""
        parts = urlsplit(self.url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        lines = [f"{self.method} {target or '/'} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


@dataclass
class Event:
    """One finished request: when it was sent and answered, and how."""

    sent: float
    done: float
    outcome: int | str  # an HTTP status, or the name of a connection failure
    body: bytes = b""


@dataclass
class Result:
    """What a load run measured (times in seconds, since ``time.perf_counter``)."""

    spec: LoadSpec
    started: float
    measured_from: float
    stopped: float
    events: list[Event] = field(repr=False)

    def window(self) -> list[Event]:
        """The events answered after the warm-up."""
        return [e for e in self.events if e.done >= self.measured_from]

    def summary(self) -> dict[str, Any]:
        """Requests/s and latency percentiles (ms) after the warm-up; errors by status over
        the whole run (a failure in the warm-up still counts)."""
        events = self.window()
        seconds = max(self.stopped - self.measured_from, 1e-9)
        ok = sorted(e.done - e.sent for e in events if e.outcome == OK)
        errors = Counter(str(e.outcome) for e in self.events if e.outcome != OK)
        return {
            "requests": len(events),
            "seconds": round(seconds, 3),
            "rps": len(ok) / seconds,
            "p50_ms": _percentile(ok, 50) * 1e3,
            "p90_ms": _percentile(ok, 90) * 1e3,
            "p99_ms": _percentile(ok, 99) * 1e3,
            "errors": dict(sorted(errors.items())),
        }


def _percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = round(pct / 100 * (len(sorted_values) - 1))
    return sorted_values[rank]


class _Budget:
    """The shared request count: a client takes one ticket per request."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


async def _read_head(stream: trio.abc.ReceiveStream, buf: bytearray) -> int:
    while (end := buf.find(b"\r\n\r\n")) < 0:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise trio.BrokenResourceError("connection closed by the server")
        buf += chunk
    return end


async def _read_exactly(stream: trio.abc.ReceiveStream, buf: bytearray, size: int) -> bytes:
    while len(buf) < size:
        chunk = await stream.receive_some(max(65536, size - len(buf)))
        if not chunk:
            raise trio.BrokenResourceError("connection closed inside a body")
        buf += chunk
    data = bytes(buf[:size])
    del buf[:size]
    return data


async def _read_chunked(stream: trio.abc.ReceiveStream, buf: bytearray) -> bytes:
    parts = []
    while True:
        while (eol := buf.find(b"\r\n")) < 0:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise trio.BrokenResourceError("connection closed inside a chunk")
            buf += chunk
        size = int(bytes(buf[:eol]).split(b";")[0], 16)
        del buf[: eol + 2]
        data = await _read_exactly(stream, buf, size + 2)  # the chunk and its CRLF
        if size == 0:
            return b"".join(parts)
        parts.append(data[:-2])


async def exchange(stream: trio.abc.Stream, buf: bytearray, raw: bytes) -> tuple[int, bytes, bool]:
    """Send one request and read its response.

    Returns:
        The status, the body, and whether the connection may be reused.
    """
    await stream.send_all(raw)
    end = await _read_head(stream, buf)
    lines = bytes(buf[:end]).split(b"\r\n")
    del buf[: end + 4]
    try:
        status = int(lines[0].split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise ProtocolError(f"bad status line {lines[0][:80]!r}") from None
    length, chunked, keep = 0, False, True
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            keep = b"close" not in value.lower()
    if chunked:
        return status, await _read_chunked(stream, buf), keep
    return status, await _read_exactly(stream, buf, length), keep


def _refused(exc: BaseException) -> bool:
    """Whether connecting was refused (trio wraps the attempts' errors in a group)."""
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        return any(isinstance(e, ConnectionRefusedError) for e in cause.exceptions)
    return isinstance(exc, ConnectionRefusedError)


def _failure_name(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timeout"
    if _refused(exc):
        return "refused"
    if isinstance(exc, ProtocolError):
        return "protocol"
    return "disconnected"


class _Connection:
    """One keep-alive connection: opened on demand, dropped after a failure or a close."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None) -> None:
        self.port = port
        self.tls = tls
        self.stream: trio.abc.Stream | None = None
        self.socket: trio.socket.SocketType | None = None
        self.buf = bytearray()

    async def _open(self) -> trio.abc.Stream:
        tcp = await trio.open_tcp_stream(LOCALHOST, self.port)
        self.socket = tcp.socket
        if self.tls is None:
            return tcp
        secure = trio.SSLStream(tcp, self.tls, server_hostname=LOCALHOST, https_compatible=True)
        await secure.do_handshake()
        return secure

    async def exchange(self, raw: bytes) -> tuple[int, bytes]:
        if self.stream is None:
            self.stream = await self._open()
        status, body, keep = await exchange(self.stream, self.buf, raw)
        if not keep:
            self.close()
        return status, body

    def close(self) -> None:
        """Close at once (no checkpoint, so it also runs when the run is cancelled)."""
        if self.socket is not None:
            self.socket.close()
        self.stream, self.socket, self.buf = None, None, bytearray()


async def _raw_client(spec: LoadSpec, budget: _Budget, events: list[Event]) -> None:
    raw, connection = spec.request_bytes(), _Connection(spec.port, spec.tls)
    try:
        while budget.take():
            sent = time.perf_counter()
            try:
                with trio.fail_after(spec.timeout):
                    status, body = await connection.exchange(raw)
            except (*_NOT_CONNECTED, ProtocolError, trio.TooSlowError) as exc:
                events.append(Event(sent, time.perf_counter(), _failure_name(exc)))
                connection.close()
                if _refused(exc):
                    await trio.sleep(0.01)  # the server is not listening (yet): no busy loop
                continue
            kept = body if spec.keep_bodies else b""
            events.append(Event(sent, time.perf_counter(), status, kept))
    finally:
        connection.close()


async def _httpx_client(spec: LoadSpec, budget: _Budget, events: list[Event]) -> None:
    import httpx  # only for the comparison in --ceiling

    verify: ssl.SSLContext | bool = spec.tls or True
    headers = dict(spec.headers)
    async with httpx.AsyncClient(timeout=spec.timeout, headers=headers, verify=verify) as client:
        while budget.take():
            sent = time.perf_counter()
            try:
                response = await client.request(spec.method, spec.url, content=spec.body)
            except httpx.HTTPError as exc:
                events.append(Event(sent, time.perf_counter(), type(exc).__name__))
                continue
            body = response.content if spec.keep_bodies else b""
            events.append(Event(sent, time.perf_counter(), response.status_code, body))


Client = Callable[[LoadSpec, _Budget, list[Event]], Awaitable[None]]
CLIENTS: dict[str, Client] = {"raw": _raw_client, "httpx": _httpx_client}


async def run_load(
    spec: LoadSpec,
    *,
    client: str = "raw",
    during: Callable[[], Awaitable[None]] | None = None,
) -> Result:
    """Run ``spec`` under trio; ``during`` runs alongside and is cancelled at the end.

    Returns:
        The events and the measurement window.
    """
    budget, events = _Budget(spec.max_requests), []
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        if during is not None:
            nursery.start_soon(during)
        with trio.move_on_after(spec.warmup + spec.duration):
            async with trio.open_nursery() as clients:
                for _ in range(spec.concurrency):
                    clients.start_soon(CLIENTS[client], spec, budget, events)
        nursery.cancel_scope.cancel()
    stopped = time.perf_counter()
    return Result(spec, started, started + spec.warmup, stopped, events)


def measure(spec: LoadSpec, *, client: str = "raw", during: Any = None) -> Result:
    """Run ``spec`` from synchronous code (a fresh trio run)."""
    return trio.run(lambda: run_load(spec, client=client, during=during))


def ceiling(
    *, server: str = "asyncio", clients: tuple[str, ...] = ("raw", "httpx"), **load: Any
) -> dict[str, Any]:
    """Requests/s against a trivial server (bench/trivial.py) running in a child process.

    Args:
        server: which trivial server: ``asyncio`` measures the generator itself,
            ``asgi`` and ``quart`` the HTTP stack without and with the framework.
        clients: the client kinds to measure, one after the other.
        load: LoadSpec fields (``concurrency``, ``duration``...).

    Returns:
        Per client kind: requests/s, the generator's CPU time per request (us), and
        the server's CPU use (a server near 100% means the figure is its limit).
    """
    args = [sys.executable, str(Path(__file__).with_name("trivial.py")), server]
    child = subprocess.Popen(args, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        url = f"http://{LOCALHOST}:{int(child.stdout.readline())}/predictions/trivial"
        spec = LoadSpec(url, json.dumps([0.5] * 16).encode(), **{"concurrency": 32, **load})
        return {kind: _ceiling_one(spec, kind, child.pid) for kind in clients}
    finally:
        child.terminate()
        child.wait(timeout=10)


def _ceiling_one(spec: LoadSpec, kind: str, server_pid: int) -> dict[str, Any]:
    server = psutil.Process(server_pid)
    own0, srv0, wall0 = _cpu_self(), sum(server.cpu_times()[:2]), time.perf_counter()
    result = measure(spec, client=kind)
    own, srv = _cpu_self() - own0, sum(server.cpu_times()[:2]) - srv0
    wall = time.perf_counter() - wall0
    summary = result.summary()
    return {
        **summary,
        "generator_cpu_us_per_request": own / max(len(result.events), 1) * 1e6,
        "generator_cpu_pct": 100 * own / wall,
        "server_cpu_pct": 100 * srv / wall,
    }


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", help=f"http://{LOCALHOST}:PORT/path")
    parser.add_argument("--concurrency", "-c", type=int, default=8)
    parser.add_argument("--duration", "-d", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--max-requests", "-n", type=int, default=1_000_000)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--method", default="POST")
    parser.add_argument("--body", default="", help="the request body (sent as is)")
    parser.add_argument("--header", "-H", action="append", default=[], help="'Name: value'")
    parser.add_argument("--client", choices=tuple(CLIENTS), default="raw")
    parser.add_argument("--cacert", metavar="PEM", help="verify an https server against this")
    parser.add_argument("--ceiling", action="store_true", help="measure the generator itself")
    return parser.parse_args()


def main() -> None:
    args = _parse_args()
    if args.ceiling:
        found = ceiling(duration=args.duration, concurrency=args.concurrency)
        print(json.dumps(found, indent=2))
        return
    if not args.url:
        sys.exit("a URL is needed (or --ceiling)")
    headers = tuple(tuple(h.split(":", 1)) for h in args.header) or LoadSpec.headers
    try:
        spec = _spec(args, headers)
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    summary = measure(spec, client=args.client).summary()
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in summary.items()}))
    if summary["errors"]:
        sys.exit(1)


def _spec(args: argparse.Namespace, headers: tuple[tuple[str, str], ...]) -> LoadSpec:
    return LoadSpec(
        args.url,
        args.body.encode(),
        tuple((k.strip(), v.strip()) for k, v in headers),
        args.method,
        args.concurrency,
        args.duration,
        args.warmup,
        args.max_requests,
        args.timeout,
        tls=ssl.create_default_context(cafile=args.cacert) if args.cacert else None,
    )


if __name__ == "__main__":
    main()
