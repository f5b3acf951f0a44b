"""HTTP/1.1 request framing without I/O, for the lean inference front end.

The parser is strict where leniency lets two parsers disagree about where a
request ends (request smuggling): a request with both ``Content-Length`` and
``Transfer-Encoding``, a transfer coding other than ``chunked``, conflicting
lengths, folded header lines or whitespace before a header's colon is refused
with 400. What it accepts is what ``h11`` accepts for the requests a model
server receives. Nothing here does I/O or imports trio.

Other refusals: an HTTP/1.1 request without exactly one ``Host`` (an HTTP/1.0
one with two) is 400 (RFC 9112 section 3.2); a method this server does not know,
including a known one in lower case (methods are case-sensitive, RFC 9110
section 9.1), is 501; a request line longer than ``MAX_HEAD`` is 414 and a head
longer than that 431.
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Iterable
from http import HTTPStatus

import attrs

__all__ = [
    "LAST_CHUNK",
    "MAX_HEAD",
    "METHODS",
    "ChunkedBody",
    "RequestHead",
    "RequestRefused",
    "chunk",
    "find_head",
    "parse_head",
    "response_head",
]

MAX_HEAD = 64 * 1024
"""The most bytes a request line and its headers may take."""
MAX_HEADERS = 128
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"})
"""The methods the server knows; any other (``get`` included) is 501."""
_LAST_CHUNK = b"0\r\n\r\n"

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"/[\x21-\x7e]*")
_FIELD_VALUE = re.compile(rb"[\x09\x20-\x7e\x80-\xff]*")
_DIGITS = re.compile(rb"[0-9]{1,18}")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")


class RequestRefused(Exception):
    """The bytes are not an HTTP/1.1 request this server accepts.

    Attributes:
        status: the status to answer with (the connection is closed after it).
        message: what was wrong, for the JSON error body.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@attrs.define
class RequestHead:
    """A parsed request line and header block.

    Attributes:
        method: e.g. ``POST``.
        target: the request target as sent (path and query, percent-encoded).
        path: the target's path, still percent-encoded.
        query: the target's query string, without ``?``.
        http10: whether the client speaks HTTP/1.0.
        headers: ``(name, value)`` pairs in order, names lower-cased.
        content_length: the body's length, or None if not given.
        chunked: whether the body comes with ``Transfer-Encoding: chunked``.
        keep_alive: whether the connection stays open after the response.
        expect_continue: whether the client waits for ``100 Continue``.
    """

    method: str
    target: str
    path: str
    query: bytes
    http10: bool
    headers: list[tuple[bytes, bytes]]
    content_length: int | None = None
    chunked: bool = False
    keep_alive: bool = True
    expect_continue: bool = False

    def header(self, name: bytes) -> bytes | None:
        """The last value of header ``name`` (lower-case), or None."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found

    @property
    def has_body(self) -> bool:
        """Whether a body follows the head."""
        return self.chunked or bool(self.content_length)


def find_head(buffer: bytes | bytearray) -> int:
    """Where the head at the start of ``buffer`` ends (its blank line), or -1 if not yet.

    Raises:
        RequestRefused: 414 if the request line, 431 if the head, is longer than
            ``MAX_HEAD`` (however many bytes arrived at once).
    """
    if buffer.find(b"\r\n", 0, MAX_HEAD + 2) < 0 and len(buffer) >= MAX_HEAD + 2:
        raise RequestRefused(414, f"the request line is longer than {MAX_HEAD} bytes")
    end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
    if end < 0 and len(buffer) >= MAX_HEAD + 4:
        raise RequestRefused(431, f"the request head is longer than {MAX_HEAD} bytes")
    return end


def parse_head(data: bytes) -> RequestHead:
    """Parse a request head: the bytes before the blank line that ends it.

    Raises:
        RequestRefused: the head is malformed or asks for what is not supported.
    """
    lines = data.split(b"\r\n")
    method, target, http10 = _request_line(lines[0])
    if len(lines) - 1 > MAX_HEADERS:
        raise RequestRefused(431, f"more than {MAX_HEADERS} header fields")
    headers = [_field(line) for line in lines[1:]]
    path, _, query = target.partition(b"?")
    head = RequestHead(method.decode(), target.decode(), path.decode(), query, http10, headers)
    _framing(head)
    _check_host(head)
    return head


def _request_line(line: bytes) -> tuple[bytes, bytes, bool]:
    parts = line.split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]):
        raise RequestRefused(400, "malformed request line")
    method, target, version = parts
    if version == b"HTTP/1.1":
        http10 = False
    elif version == b"HTTP/1.0":
        http10 = True
    elif version.startswith(b"HTTP/"):
        raise RequestRefused(505, "only HTTP/1.1 and HTTP/1.0 are supported")
    else:
        raise RequestRefused(400, "malformed request line")
    if method.decode() not in METHODS:
        raise RequestRefused(501, f"method {method.decode()!r} is not implemented")
    if not _TARGET.fullmatch(target):
        raise RequestRefused(400, "the request target must be a path starting with /")
    return method, target, http10


def _field(line: bytes) -> tuple[bytes, bytes]:
    name, colon, value = line.partition(b":")
    if not colon or not _TOKEN.fullmatch(name):
        raise RequestRefused(400, "malformed header field")
    value = value.strip(b" \t")
    if not _FIELD_VALUE.fullmatch(value):
        raise RequestRefused(400, "invalid character in a header value")
    return name.lower(), value


def _framing(head: RequestHead) -> None:
    """Work out the body's framing and the connection's fate from the headers."""
    lengths: set[bytes] = set()
    codings: list[bytes] = []
    connection: list[bytes] = []
    for name, value in head.headers:
        if name == b"content-length":
            lengths.update(v.strip() for v in value.split(b","))
        elif name == b"transfer-encoding":
            codings.extend(v.strip().lower() for v in value.split(b","))
        elif name == b"connection":
            connection.extend(v.strip().lower() for v in value.split(b","))
        elif name == b"expect":
            head.expect_continue = value.lower() == b"100-continue"
    if codings:
        if codings != [b"chunked"] or head.http10:
            raise RequestRefused(501, "the only transfer coding supported is chunked")
        if lengths:
            raise RequestRefused(400, "both Content-Length and Transfer-Encoding")
        head.chunked = True
    elif lengths:
        if len(lengths) != 1 or not _DIGITS.fullmatch(next(iter(lengths))):
            raise RequestRefused(400, "invalid Content-Length")
        head.content_length = int(next(iter(lengths)))
    if head.http10:
        head.keep_alive = b"keep-alive" in connection
    else:
        head.keep_alive = b"close" not in connection


def _check_host(head: RequestHead) -> None:
    """One ``Host`` header in HTTP/1.1 (at most one in HTTP/1.0): RFC 9112 section 3.2."""
    hosts = sum(1 for name, _ in head.headers if name == b"host")
    if hosts > 1 or (hosts == 0 and not head.http10):
        raise RequestRefused(400, "a request must have exactly one Host header")


class ChunkedBody:
    """Decodes a ``Transfer-Encoding: chunked`` body incrementally.

    Feed it the bytes after the head; it consumes what it can and says when the
    body is complete. Chunk extensions are ignored and trailers discarded.
    """

    def __init__(self, limit: int) -> None:
        """Decode at most ``limit`` body bytes (RequestRefused 413 beyond)."""
        self.limit = limit
        self.body = bytearray()
        self.done = False
        self._left = 0  # bytes of chunk data still to come
        self._in_trailers = False
        self._need_crlf = False

    def feed(self, buffer: bytearray) -> None:
        """Consume what can be decoded from the front of ``buffer``.

        Raises:
            RequestRefused: malformed framing, or the body is over the limit.
        """
        while not self.done:
            if self._left:
                taken = buffer[: self._left]
                self.body += taken
                del buffer[: len(taken)]
                self._left -= len(taken)
                if self._left:
                    return
                self._need_crlf = True
            if self._need_crlf:
                if len(buffer) < 2:
                    return
                if buffer[:2] != b"\r\n":
                    raise RequestRefused(400, "malformed chunked body")
                del buffer[:2]
                self._need_crlf = False
            line = _take_line(buffer)
            if line is None:
                return
            self._line(line)

    def _line(self, line: bytes) -> None:
        if self._in_trailers:
            self.done = line == b""
            return
        size = line.partition(b";")[0].strip(b" \t")
        if not _HEX.fullmatch(size):
            raise RequestRefused(400, "malformed chunk size")
        self._left = int(size, 16)
        if len(self.body) + self._left > self.limit:
            raise RequestRefused(413, f"the request body is larger than {self.limit} bytes")
        self._in_trailers = self._left == 0


def _take_line(buffer: bytearray) -> bytes | None:
    end = buffer.find(b"\r\n", 0, 4096)
    if end < 0:
        if len(buffer) >= 4096:
            raise RequestRefused(400, "a chunk line is too long")
        return None
    line = bytes(buffer[:end])
    del buffer[: end + 2]
    return line


_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
_date_cache: list[object] = [0, b""]


def _date() -> bytes:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = email.utils.formatdate(now, usegmt=True).encode()
    value = _date_cache[1]
    assert isinstance(value, bytes)
    return value


def response_head(
    status: int,
    headers: Iterable[tuple[bytes, bytes]],
    *,
    content_length: int | None,
    keep_alive: bool,
) -> bytes:
    """The status line and headers of a response, ending with the blank line.

    Args:
        status: the status code.
        headers: ``(name, value)`` pairs; framing and connection headers are
            dropped from it and written from the other arguments.
        content_length: the body's length, or None for a chunked body.
        keep_alive: whether the connection stays open.
    """
    out = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))]
    for name, value in headers:
        if name.lower() not in (b"content-length", b"transfer-encoding", b"connection"):
            out.append(b"%s: %s\r\n" % (name, value))
    if content_length is None:
        out.append(b"transfer-encoding: chunked\r\n")
    else:
        out.append(b"content-length: %d\r\n" % content_length)
    if not keep_alive:
        out.append(b"connection: close\r\n")
    out.append(b"date: %s\r\nserver: trio-supervisor\r\n\r\n" % _date())
    return b"".join(out)


def chunk(data: bytes) -> bytes:
    """``data`` framed as one chunk of a chunked body (empty data gives nothing)."""
    if not data:
        return b""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = _LAST_CHUNK
"""The zero-length chunk that ends a chunked body."""
