"""The worker side of streamed answers: PART framing, send_intermediate and run_batch."""

from __future__ import annotations

import json
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers import send_intermediate_predict_response
from handlers.context import Context
from handlers.protocol import (
    Decoder,
    InferItem,
    Kind,
    ProtocolError,
    ReplyItem,
    decode_part,
    decode_reply,
    encode_part,
    encode_reply,
)
from handlers.runtime import run_batch
from tests.test_protocol import reply_items

# --- framing


def decode_one(data: bytes):
    decoder = Decoder()
    (message,) = decoder.feed(data)
    assert decoder.pending == 0
    return message


@settings(max_examples=100, deadline=None)
@given(batch_id=st.integers(0, 2**53), items=st.lists(reply_items, max_size=4))
def test_part_round_trips_for_arbitrary_items(batch_id, items):
    message = decode_one(encode_part(batch_id, items))
    assert message.kind is Kind.PART
    assert decode_part(message) == (batch_id, items)


def test_a_part_and_a_reply_differ_only_in_kind():
    items = [ReplyItem("r1", ok=True, body=b"hello ", headers={"ts_stream_next": "true"})]
    part, reply = decode_one(encode_part(3, items)), decode_one(encode_reply(3, items))
    assert (part.kind, reply.kind) == (Kind.PART, Kind.REPLY)
    assert (part.header, part.blobs) == (reply.header, reply.blobs)
    assert decode_reply(reply) == decode_part(part)


def test_a_malformed_part_is_a_protocol_error_naming_it():
    message = decode_one(encode_part(1, [ReplyItem("r", ok=True, body=b"x")]))
    broken = type(message)(Kind.PART, {"batch": 1, "items": []}, message.blobs)
    with pytest.raises(ProtocolError, match="malformed PART message"):
        decode_part(broken)


# --- sending parts from a handler


def item(request_id: str, value: object = None) -> InferItem:
    return InferItem(request_id, {}, {"body": ("application/json", json.dumps(value).encode())})


def run(handle, *ids: str) -> tuple[list[list[ReplyItem]], list[ReplyItem]]:
    """Run a batch through ``handle``; the parts it sent, and its final replies."""
    sent: list[list[ReplyItem]] = []
    context = Context("m", "1.0", "", 4)
    replies = run_batch(handle, context, [item(i) for i in ids], send_parts=sent.append)
    return sent, replies


def test_parts_are_serialised_like_results_and_marked_ts_stream_next():
    def handle(batch, context):
        context.send_intermediate(["hello ", b"\x00"])
        context.set_response_content_type(0, "text/event-stream")
        context.send_intermediate([{"n": 1}, [2]])
        return ["world ", "end"]

    sent, replies = run(handle, "a", "b")

    def part(request_id: str, body: bytes, content_type: str) -> ReplyItem:
        headers = {"ts_stream_next": "true"}
        return ReplyItem(request_id, True, body=body, content_type=content_type, headers=headers)

    assert sent == [
        [
            part("a", b"hello ", "text/plain; charset=utf-8"),
            part("b", b"\x00", "application/octet-stream"),
        ],
        [part("a", b'{"n": 1}', "text/event-stream"), part("b", b"[2]", "application/json")],
    ]
    last = {"ts_stream_next": "false"}
    assert [(r.body, r.headers) for r in replies] == [(b"world ", last), (b"end", last)]


def test_torchserve_function_answers_some_requests_and_fails_with_none():
    def handle(batch, context):
        only_b = {1: context.request_ids[1]}
        send_intermediate_predict_response(["unused", "b1"], only_b, "Intermediate", 200, context)
        send_intermediate_predict_response(None, context.request_ids, "gave up", 200, context)
        return ["a", "b"]

    sent, replies = run(handle, "a", "b")
    assert [[(p.request_id, p.ok, p.body) for p in parts] for parts in sent] == [
        [("b", True, b"b1")],
        [("a", False, b""), ("b", False, b"")],
    ]
    assert {(p.status, p.message) for p in sent[1]} == {(500, "gave up")}
    assert replies[0].headers == {}  # a was never streamed
    assert replies[1].headers == {"ts_stream_next": "false"}


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda c: c.send_intermediate(["one"]), ValueError, "one result per request"),
        (
            lambda c: send_intermediate_predict_response(["x"], {0: "other"}, "", 200, c),
            ValueError,
            "not request 0",
        ),
        (
            lambda c: send_intermediate_predict_response([], c.request_ids, "", 200, c),
            ValueError,
            "no result for request 0",
        ),
    ],
)
def test_wrong_calls_fail_the_batch_like_any_handler_error(call, error, match):
    def handle(batch, context):
        call(context)
        return ["never"] * len(batch)

    sent, replies = run(handle, "a", "b")
    assert sent == []
    assert {(r.ok, r.status) for r in replies} == {(False, 503)}
    assert all(f"{error.__name__}: " in r.message and match in r.message for r in replies)


def test_no_part_outside_a_batch_or_after_it():
    context = Context("m", "1.0", "", 4)
    with pytest.raises(RuntimeError, match="only while handle"):
        context.send_intermediate([])
    kept: list[Context] = []

    def handle(batch, ctx):
        kept.append(ctx)
        return ["done"]

    sent, _ = run(handle, "a")
    with pytest.raises(RuntimeError, match="the batch is over"):
        kept[0].send_intermediate(["late"])
    assert sent == []


def test_parts_from_another_thread_arrive_before_the_final_reply():
    order: list[str] = []

    def send(parts: list[ReplyItem]) -> None:
        order.append(parts[0].body.decode())

    def handle(batch, context):
        threads = [
            threading.Thread(target=context.send_intermediate, args=([f"t{n}"],)) for n in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return ["final"]

    context = Context("m", "1.0", "", 1)
    [reply] = run_batch(handle, context, [item("a")], send_parts=send)
    order.append(reply.body.decode())
    assert sorted(order[:4]) == ["t0", "t1", "t2", "t3"]
    assert order[4] == "final"


def test_a_handler_that_does_not_stream_sends_no_part():
    sent, replies = run(lambda batch, context: ["whole"], "a")
    assert sent == []
    assert replies == [
        ReplyItem("a", ok=True, body=b"whole", content_type="text/plain; charset=utf-8")
    ]
