"""Sans-IO framing: round trips, arbitrary splits, and malformed frames."""

from __future__ import annotations

import contextlib
import json
import math
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers.protocol import (
    MAX_FRAME_BYTES,
    Decoder,
    InferItem,
    Kind,
    Message,
    ProtocolError,
    ReplyItem,
    decode_infer,
    decode_reply,
    encode,
    encode_infer,
    encode_reply,
)


def frame(kind: int, header: bytes, blobs: list[bytes] | None = None, *, count: int | None = None):
    """Build a frame by hand, so tests can make it wrong in one place."""
    blobs = blobs or []
    body = struct.pack(">BI", kind, len(header)) + header
    body += struct.pack(">I", len(blobs) if count is None else count)
    for blob in blobs:
        body += struct.pack(">I", len(blob)) + blob
    return struct.pack(">I", len(body)) + body


def decode_one(data: bytes) -> Message:
    decoder = Decoder()
    (message,) = decoder.feed(data)
    assert decoder.pending == 0
    return message


@pytest.mark.parametrize("kind", list(Kind))
def test_every_kind_round_trips(kind):
    message = Message(kind, {"n": 1, "s": "x"}, (b"a", b"", b"\x00\xff"))
    assert decode_one(encode(message)) == message


def test_empty_message_layout():
    data = encode(Message(Kind.PING))
    assert data == struct.pack(">IBI", 12, Kind.PING, 3) + b" {}" + struct.pack(">I", 0)
    assert decode_one(data) == Message(Kind.PING, {}, ())


def test_kind_values_are_stable():
    assert {k.name: k.value for k in Kind} == {
        "LOAD": 1,
        "READY": 2,
        "LOAD_FAILED": 3,
        "INFER": 4,
        "REPLY": 5,
        "PING": 6,
        "PONG": 7,
        "SHUTDOWN": 8,
        "PART": 9,
    }


def test_decoded_kind_is_the_enum():
    assert decode_one(encode(Message(Kind.PONG))).kind is Kind.PONG


def test_byte_at_a_time_and_pending():
    data = encode(Message(Kind.LOAD, {"handler": "m"}, (b"xyz",)))
    decoder = Decoder()
    for n, byte in enumerate(data[:-1], start=1):
        assert decoder.feed(bytes([byte])) == []
        assert decoder.pending == n
    assert decoder.feed(data[-1:]) == [Message(Kind.LOAD, {"handler": "m"}, (b"xyz",))]
    assert decoder.pending == 0


def test_several_messages_in_one_feed_and_a_partial_tail():
    one, two = Message(Kind.PING, {"i": 1}), Message(Kind.PONG, {"i": 2})
    data = encode(one) + encode(two)
    decoder = Decoder()
    assert decoder.feed(data + data[:5]) == [one, two]
    assert decoder.pending == 5
    assert decoder.feed(data[5:]) == [one, two]


def test_infer_round_trip():
    items = [
        InferItem(
            "r1", {"content-type": "application/json"}, {"body": ("application/json", b"[1]")}
        ),
        InferItem("r2", {}, {}),
        InferItem("r3", {"x": "y"}, {"a": ("text/plain", b"hi"), "b": ("", b"\x00\x01")}),
    ]
    message = decode_one(encode_infer(7, items))
    assert message.kind is Kind.INFER
    assert decode_infer(message) == (7, items)


def test_empty_batches_round_trip():
    assert decode_infer(decode_one(encode_infer(0, []))) == (0, [])
    assert decode_reply(decode_one(encode_reply(0, []))) == (0, [])


def test_reply_round_trip():
    items = [
        ReplyItem("r1", ok=True, body=b'{"a":1}', content_type="application/json"),
        ReplyItem("r2", ok=False, status=418, message="teapot"),
        ReplyItem("r3", ok=True, status=201, body=b"\xff", headers={"X-A": "b"}),
    ]
    message = decode_one(encode_reply(3, items))
    assert message.kind is Kind.REPLY
    assert decode_reply(message) == (3, items)


# JSON values that survive a round trip unchanged (no NaN: it never equals itself).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
messages = st.builds(
    Message,
    kind=st.sampled_from(Kind),
    header=st.dictionaries(st.text(max_size=8), json_values, max_size=5),
    blobs=st.lists(st.binary(max_size=64), max_size=4).map(tuple),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(messages, max_size=5), data=st.data())
def test_arbitrary_messages_split_anywhere_decode_back(batch, data):
    stream = b"".join(encode(m) for m in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = Decoder()
    decoded = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        decoded.extend(decoder.feed(stream[start:end]))
    assert decoded == batch
    assert decoder.pending == 0


text = st.text(max_size=10)
infer_items = st.builds(
    InferItem,
    request_id=text,
    headers=st.dictionaries(text, text, max_size=3),
    params=st.dictionaries(text, st.tuples(text, st.binary(max_size=32)), max_size=3),
)
reply_items = st.builds(
    ReplyItem,
    request_id=text,
    ok=st.booleans(),
    status=st.integers(100, 599),
    body=st.binary(max_size=32),
    content_type=text,
    headers=st.dictionaries(text, text, max_size=3),
    message=text,
)


@settings(max_examples=100, deadline=None)
@given(batch_id=st.integers(0, 2**53), items=st.lists(infer_items, max_size=4))
def test_infer_round_trips_for_arbitrary_items(batch_id, items):
    assert decode_infer(decode_one(encode_infer(batch_id, items))) == (batch_id, items)


@settings(max_examples=100, deadline=None)
@given(batch_id=st.integers(0, 2**53), items=st.lists(reply_items, max_size=4))
def test_reply_round_trips_for_arbitrary_items(batch_id, items):
    assert decode_reply(decode_one(encode_reply(batch_id, items))) == (batch_id, items)


@pytest.mark.parametrize("rest", [0, 1, 8])
def test_frame_shorter_than_the_fixed_fields_is_rejected(rest):
    with pytest.raises(ProtocolError, match="bad frame length"):
        Decoder().feed(struct.pack(">I", rest) + b"\x00" * rest)


def test_frame_longer_than_max_frame_bytes_is_rejected_before_it_arrives():
    decoder = Decoder(max_frame_bytes=100)
    assert decoder.feed(encode(Message(Kind.PING, {"p": "x" * 80}))) != []
    with pytest.raises(ProtocolError, match="bad frame length 101"):
        decoder.feed(struct.pack(">I", 101))


def test_default_limit_is_one_gib():
    assert MAX_FRAME_BYTES == 1 << 30
    with pytest.raises(ProtocolError):
        Decoder().feed(struct.pack(">I", (1 << 30) + 1))


@pytest.mark.parametrize("kind", [0, 10, 255])
def test_unknown_kind_is_rejected(kind):
    with pytest.raises(ProtocolError, match=f"unknown message kind {kind}"):
        Decoder().feed(frame(kind, b"{}"))


@pytest.mark.parametrize(
    ("header", "match"),
    [
        (b"{", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"nope", "not JSON"),
        (b"", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'"s"', "not a JSON object"),
        (b"[" * 100_000, "not JSON"),
    ],
)
def test_bad_header_is_rejected(header, match):
    with pytest.raises(ProtocolError, match=match):
        Decoder().feed(frame(Kind.PING, header))


def test_header_length_past_the_frame_is_rejected():
    data = bytearray(frame(Kind.PING, b"{}"))
    struct.pack_into(">I", data, 5, 1000)
    with pytest.raises(ProtocolError, match="header runs past"):
        Decoder().feed(bytes(data))


def test_blob_running_past_the_frame_is_rejected():
    data = bytearray(frame(Kind.REPLY, b"{}", [b"abcd"]))
    struct.pack_into(">I", data, len(data) - 8, 5)
    with pytest.raises(ProtocolError, match="blob runs past"):
        Decoder().feed(bytes(data))


def test_blob_count_past_the_frame_is_rejected():
    with pytest.raises(ProtocolError, match="blob length runs past"):
        Decoder().feed(frame(Kind.REPLY, b"{}", [b"ab"], count=2))


def test_trailing_bytes_are_rejected():
    with pytest.raises(ProtocolError, match="trailing bytes"):
        Decoder().feed(frame(Kind.REPLY, b"{}", [b"ab", b"cd"], count=1))


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.binary(max_size=64), max_size=6))
def test_random_bytes_give_messages_or_protocol_error_only(chunks):
    decoder = Decoder(max_frame_bytes=4096)
    try:
        for chunk in chunks:
            for message in decoder.feed(chunk):
                assert isinstance(message.kind, Kind)
                assert isinstance(message.header, dict)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(message=messages, position=st.integers(0, 10_000), value=st.integers(0, 255))
def test_corrupted_frames_give_messages_or_protocol_error_only(message, position, value):
    data = bytearray(encode(message))
    data[position % len(data)] = value
    with contextlib.suppress(ProtocolError):
        Decoder(max_frame_bytes=1 << 20).feed(bytes(data))


@pytest.mark.parametrize(
    "header",
    [
        {},
        {"batch": 1},
        {"batch": 1, "items": 5},
        {"batch": 1, "items": ["x"]},
        {"batch": 1, "items": [{"id": "a", "headers": {}}]},
        {"batch": 1, "items": [{"id": "a", "headers": "ab", "params": []}]},
        {"batch": 1, "items": [{"id": "a", "headers": {}, "params": [["only-name"]]}]},
        {"batch": 1, "items": [{"id": "a", "headers": {}, "params": [5]}]},
        {"batch": 1, "items": [{"id": "a", "headers": {}, "params": [["p", "t"]]}]},
        {"batch": "x", "items": []},
        {"batch": float("inf"), "items": []},
        {"batch": float("nan"), "items": []},
    ],
)
def test_malformed_infer_is_a_protocol_error(header):
    with pytest.raises(ProtocolError, match="malformed INFER"):
        decode_infer(Message(Kind.INFER, header))


def test_infer_with_more_blobs_than_params_is_a_protocol_error():
    good = decode_one(encode_infer(1, [InferItem("a", {}, {"p": ("t", b"x")})]))
    with pytest.raises(ProtocolError, match="malformed INFER"):
        decode_infer(Message(Kind.INFER, good.header, (*good.blobs, b"extra")))


REPLY_ITEM = {
    "id": "a",
    "ok": True,
    "status": 200,
    "content_type": "",
    "headers": {},
    "message": "",
}


@pytest.mark.parametrize(
    ("header", "blobs"),
    [
        ({}, ()),
        ({"batch": 1, "items": [REPLY_ITEM]}, ()),
        ({"batch": 1, "items": []}, (b"x",)),
        ({"batch": 1, "items": 3}, ()),
        ({"batch": 1, "items": ["x"]}, (b"",)),
        ({"batch": 1, "items": [{**REPLY_ITEM, "status": "x"}]}, (b"",)),
        ({"batch": 1, "items": [{**REPLY_ITEM, "status": float("inf")}]}, (b"",)),
        ({"batch": 1, "items": [{**REPLY_ITEM, "headers": []}]}, (b"",)),
        ({"batch": 1, "items": [{k: v for k, v in REPLY_ITEM.items() if k != "ok"}]}, (b"",)),
        ({"batch": float("inf"), "items": []}, ()),
        ({"batch": None, "items": []}, ()),
    ],
)
def test_malformed_reply_is_a_protocol_error(header, blobs):
    with pytest.raises(ProtocolError, match="malformed REPLY"):
        decode_reply(Message(Kind.REPLY, header, blobs))


specials = st.sampled_from([math.inf, -math.inf, math.nan, 1e300, -(2**70)])
scalars = specials | st.floats() | st.integers() | st.none() | st.booleans() | st.text(max_size=5)
loose = scalars | json_values
item_tables = st.fixed_dictionaries(
    {key: loose for key in ("id", "ok", "status", "content_type", "headers", "message")},
    optional={"params": loose},
)
loose_headers = st.fixed_dictionaries(
    {"batch": scalars, "items": st.lists(item_tables, max_size=2)},
    optional={"x": loose},
) | st.dictionaries(st.sampled_from(["batch", "items"]), loose)


@settings(max_examples=300, deadline=None)
@given(header=loose_headers, blobs=st.lists(st.binary(max_size=4), max_size=3).map(tuple))
def test_arbitrary_headers_decode_or_raise_protocol_error_only(header, blobs):
    for decode, kind in ((decode_infer, Kind.INFER), (decode_reply, Kind.REPLY)):
        with contextlib.suppress(ProtocolError):
            decode(Message(kind, header, blobs))


def test_wire_header_is_compact_json():
    """Generic frames: the standard library's JSON after a space (read back exactly)."""
    data = encode(Message(Kind.LOAD, {"a": [1, 2]}))
    (header_len,) = struct.unpack_from(">I", data, 5)
    assert data[9 : 9 + header_len] == b' {"a":[1,2]}'
    assert json.loads(data[9 : 9 + header_len]) == {"a": [1, 2]}


def test_request_and_reply_frames_use_orjson_and_fall_back_exactly():
    """The hot frames are written by orjson (no space); what it cannot write goes exactly."""
    data = encode_reply(7, [ReplyItem("r", ok=True, status=200, body=b"x")])
    (header_len,) = struct.unpack_from(">I", data, 5)
    assert data[9 : 9 + header_len].startswith(b'{"batch":7')
    huge = ReplyItem("r", ok=False, status=2**70, message="\ud800")
    message = decode_one(encode_reply(8, [huge]))
    assert decode_reply(message) == (8, [huge])
