"""Sans-IO framing shared by the supervisor and its workers (stdlib and orjson).

Every message is one frame::

    u32 length of the rest | u8 kind | u32 header length | header (JSON, UTF-8)
    | u32 blob count | (u32 blob length | blob bytes)*

All integers are big-endian. The header is JSON: written by orjson for the
frames that carry requests and answers (``INFER``, ``REPLY``, ``PART``), and by
the standard library, after one leading space, for the others and for what
orjson cannot write; the reader parses a header that starts with a space with
the standard library, so every header comes back exactly as it was sent
(integers beyond 64 bits, NaN and the infinities included). The header carries
small structured fields; blobs
carry payload bytes raw (request bodies, response bodies), so nothing is
base64-encoded or pickled. Neither side does I/O here: callers ``encode`` a
message to bytes and ``feed`` received bytes to a ``Decoder``.

Conversation:

* supervisor -> worker: ``LOAD`` once, then ``INFER``, ``PING``, ``SHUTDOWN``.
* worker -> supervisor: ``READY`` or ``LOAD_FAILED`` once, then ``REPLY`` for
  each ``INFER`` and ``PONG`` for each ``PING``. While a batch runs, its handler
  may send any number of ``PART`` frames first: intermediate answers for some of
  the batch's requests (a streamed answer); the ``REPLY`` carries the last part.
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = [
    "MAX_FRAME_BYTES",
    "Decoder",
    "InferItem",
    "Kind",
    "Message",
    "ProtocolError",
    "ReplyItem",
    "decode_infer",
    "decode_part",
    "decode_reply",
    "encode",
    "encode_infer",
    "encode_part",
    "encode_reply",
]

MAX_FRAME_BYTES = 1 << 30
"""Largest frame either side accepts; anything longer is a protocol error."""

_U32 = struct.Struct(">I")
_PREFIX = struct.Struct(">IBI")  # rest length, kind, header length


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid frame."""


class Kind(enum.IntEnum):
    """The message kinds of the conversation."""

    LOAD = 1
    READY = 2
    LOAD_FAILED = 3
    INFER = 4
    REPLY = 5
    PING = 6
    PONG = 7
    SHUTDOWN = 8
    PART = 9


@dataclass(frozen=True)
class Message:
    """One decoded frame: a kind, a JSON header and raw blobs."""

    kind: Kind
    header: dict[str, Any] = field(default_factory=dict)
    blobs: tuple[bytes, ...] = ()


def encode(message: Message) -> bytes:
    """Serialise ``message`` into one frame (any JSON-able header, kept exactly)."""
    return _frame(message, _exact_header(message.header))


def _exact_header(header: dict[str, Any]) -> bytes:
    # The standard library's JSON, marked by a leading space (orjson never writes
    # one) so that the reader parses it with the standard library too: exact for
    # integers beyond 64 bits, NaN and the infinities.
    return b" " + json.dumps(header, separators=(",", ":")).encode()


def _fast(message: Message) -> bytes:
    """Serialise a message built by the typed encoders (INFER, REPLY, PART) with orjson.

    Their headers hold strings, integers, booleans and None; what orjson cannot
    write (an integer beyond 64 bits, a lone surrogate) goes the exact way.
    """
    try:
        header = orjson.dumps(message.header)
    except TypeError:
        header = _exact_header(message.header)
    return _frame(message, header)


def _frame(message: Message, header: bytes) -> bytes:
    parts = [b"", b"", header, _U32.pack(len(message.blobs))]
    for blob in message.blobs:
        parts.append(_U32.pack(len(blob)))
        parts.append(blob)
    rest = 1 + 4 + sum(len(p) for p in parts)
    parts[0] = _PREFIX.pack(rest, int(message.kind), len(header))
    return b"".join(parts)


class Decoder:
    """Turns a byte stream, split anywhere, back into messages.

    Args:
        max_frame_bytes: frames longer than this raise ``ProtocolError``.
    """

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_frame_bytes

    def feed(self, data: bytes) -> list[Message]:
        """Add received bytes; return every message they complete."""
        self._buffer += data
        messages = []
        while len(self._buffer) >= 4:
            (rest,) = _U32.unpack_from(self._buffer)
            if rest > self._max or rest < 9:
                raise ProtocolError(f"bad frame length {rest}")
            if len(self._buffer) < 4 + rest:
                break
            frame = bytes(self._buffer[4 : 4 + rest])
            del self._buffer[: 4 + rest]
            messages.append(_parse(frame))
        return messages

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a whole frame."""
        return len(self._buffer)


def _parse(frame: bytes) -> Message:
    kind_value, header_len = frame[0], _U32.unpack_from(frame, 1)[0]
    try:
        kind = Kind(kind_value)
    except ValueError:
        raise ProtocolError(f"unknown message kind {kind_value}") from None
    offset = 5 + header_len
    if offset + 4 > len(frame):
        raise ProtocolError("header runs past the frame")
    try:
        raw = frame[5:offset]
        header = json.loads(raw) if raw[:1] == b" " else orjson.loads(raw)
    except (ValueError, RecursionError) as exc:  # deeply nested JSON recurses
        raise ProtocolError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    return Message(kind, header, tuple(_blobs(frame, offset)))


def _blobs(frame: bytes, offset: int) -> Iterator[bytes]:
    (count,) = _U32.unpack_from(frame, offset)
    offset += 4
    for _ in range(count):
        if offset + 4 > len(frame):
            raise ProtocolError("blob length runs past the frame")
        (size,) = _U32.unpack_from(frame, offset)
        offset += 4
        if offset + size > len(frame):
            raise ProtocolError("blob runs past the frame")
        yield frame[offset : offset + size]
        offset += size
    if offset != len(frame):
        raise ProtocolError("trailing bytes after the last blob")


@dataclass(frozen=True)
class InferItem:
    """One request of a batch as the worker sees it.

    Attributes:
        request_id: the supervisor's id for the request.
        headers: the HTTP request headers (and routing extras such as ``url_path``).
        params: parameter name -> (content type, raw bytes); a raw body is ``body``.
    """

    request_id: str
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, tuple[str, bytes]] = field(default_factory=dict)


@dataclass(frozen=True)
class ReplyItem:
    """The answer for one request: a result (``ok``) or a failure.

    Attributes:
        request_id: the id of the request answered.
        ok: whether the handler produced a result for it.
        status: HTTP status to answer with.
        body: the serialised result, or empty for a failure.
        content_type: the result's content type ("" lets the server choose).
        headers: extra response headers set by the handler.
        message: the failure's message (empty on success).
    """

    request_id: str
    ok: bool
    status: int = 200
    body: bytes = b""
    content_type: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    message: str = ""


def encode_infer(batch_id: int, items: list[InferItem]) -> bytes:
    """Frame an ``INFER`` message for a batch of requests."""
    meta, blobs = [], []
    for item in items:
        names = []
        for name, (content_type, data) in item.params.items():
            names.append([name, content_type])
            blobs.append(data)
        meta.append({"id": item.request_id, "headers": item.headers, "params": names})
    header = {"batch": batch_id, "items": meta}
    return _fast(Message(Kind.INFER, header, tuple(blobs)))


def decode_infer(message: Message) -> tuple[int, list[InferItem]]:
    """Unpack an ``INFER`` message into its batch id and items."""
    try:
        blobs = iter(message.blobs)
        items = []
        for meta in message.header["items"]:
            params = {str(n): (str(ct), next(blobs)) for n, ct in meta["params"]}
            items.append(InferItem(str(meta["id"]), dict(meta["headers"]), params))
        if next(blobs, None) is not None:
            raise ValueError("more blobs than parameters")
        return int(message.header["batch"]), items
    except (KeyError, TypeError, ValueError, StopIteration, OverflowError) as exc:
        raise ProtocolError(f"malformed INFER message: {exc!r}") from None


def encode_reply(batch_id: int, items: list[ReplyItem]) -> bytes:
    """Frame a ``REPLY`` message answering every item of a batch."""
    return _encode_items(Kind.REPLY, batch_id, items)


def encode_part(batch_id: int, items: list[ReplyItem]) -> bytes:
    """Frame a ``PART`` message: intermediate answers for some items of a running batch."""
    return _encode_items(Kind.PART, batch_id, items)


def decode_reply(message: Message) -> tuple[int, list[ReplyItem]]:
    """Unpack a ``REPLY`` message into its batch id and items."""
    return _decode_items("REPLY", message)


def decode_part(message: Message) -> tuple[int, list[ReplyItem]]:
    """Unpack a ``PART`` message into its batch id and items."""
    return _decode_items("PART", message)


def _encode_items(kind: Kind, batch_id: int, items: list[ReplyItem]) -> bytes:
    meta = [
        {
            "id": item.request_id,
            "ok": item.ok,
            "status": item.status,
            "content_type": item.content_type,
            "headers": item.headers,
            "message": item.message,
        }
        for item in items
    ]
    blobs = tuple(item.body for item in items)
    return _fast(Message(kind, {"batch": batch_id, "items": meta}, blobs))


def _decode_items(name: str, message: Message) -> tuple[int, list[ReplyItem]]:
    try:
        metas = message.header["items"]
        if len(metas) != len(message.blobs):
            raise ValueError("item and blob counts differ")
        items = [
            ReplyItem(
                request_id=str(m["id"]),
                ok=bool(m["ok"]),
                status=int(m["status"]),
                body=body,
                content_type=str(m["content_type"]),
                headers={str(k): str(v) for k, v in m["headers"].items()},
                message=str(m["message"]),
            )
            for m, body in zip(metas, message.blobs, strict=True)
        ]
        return int(message.header["batch"]), items
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise ProtocolError(f"malformed {name} message: {exc!r}") from None
