"""The lean front end's HTTP/1.1 framing: what it accepts, what it refuses and why."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.http.framing import (
    MAX_HEAD,
    ChunkedBody,
    RequestRefused,
    chunk,
    find_head,
    parse_head,
    response_head,
)


def test_a_plain_request_head():
    head = parse_head(
        b"POST /predictions/m/1.0?x=1 HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
        b"Content-Length: 12\r\nX-Thing:  padded \t"
    )
    assert (head.method, head.path, head.query) == ("POST", "/predictions/m/1.0", b"x=1")
    assert head.content_length == 12
    assert not head.chunked
    assert head.keep_alive
    assert head.header(b"content-type") == b"application/json"
    assert head.header(b"x-thing") == b"padded"


def test_keep_alive_follows_the_version_and_connection_header():
    assert not parse_head(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close").keep_alive
    assert not parse_head(b"GET / HTTP/1.0").keep_alive
    assert parse_head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive").keep_alive


def test_expect_continue_is_noticed():
    assert parse_head(
        b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1"
    ).expect_continue


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked", 501),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: identity", 501),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked", 501),
        (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: -1", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 0x10", 400),
        (b"POST / HTTP/1.1\r\nContent-Length : 3", 400),
        (b"POST / HTTP/1.1\r\nX: a\r\n folded", 400),
        (b"POST / HTTP/1.1\r\nX: a\x00b", 400),
        (b"POST / HTTP/2.0", 505),
        (b"POST /a b HTTP/1.1", 400),
        (b"POST http://evil/ HTTP/1.1", 400),
        (b"GET", 400),
        (b"G(T / HTTP/1.1", 400),
        (b"GET / HTTP/1.1", 400),  # no Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a", 400),
        (b"GET / HTTP/1.0\r\nHost: a\r\nhost: b", 400),
        (b"get / HTTP/1.1\r\nHost: a", 501),  # methods are case-sensitive
        (b"BREW / HTTP/1.1\r\nHost: a", 501),
    ],
)
def test_ambiguous_or_unsupported_heads_are_refused(head, status):
    with pytest.raises(RequestRefused) as caught:
        parse_head(head)
    assert caught.value.status == status


def test_repeated_equal_lengths_are_one_length():
    assert parse_head(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3").content_length == 3


def test_http10_may_leave_host_out():
    assert parse_head(b"GET / HTTP/1.0").http10


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /" + b"a" * MAX_HEAD, 414),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD, 431),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD + b"\r\n\r\n", 431),  # whole, still too big
    ],
)
def test_heads_over_the_limit_are_refused_however_they_arrive(data, status):
    with pytest.raises(RequestRefused) as caught:
        find_head(data)
    assert caught.value.status == status


def test_a_head_at_the_limit_is_found():
    data = b"GET / HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD - 40) + b"\r\n\r\nNEXT"
    assert data[find_head(data) :].startswith(b"\r\n\r\nNEXT")
    assert find_head(b"GET / HTTP/1.1\r\nHost: a\r\n") == -1  # not yet


def test_a_chunked_body_in_pieces_with_extensions_and_trailers():
    wire = bytearray(b"5;name=x\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: yes\r\n\r\nNEXT")
    decoder = ChunkedBody(limit=100)
    fed = bytearray()
    for byte in wire:  # one byte at a time: every split point
        fed.append(byte)
        decoder.feed(fed)
        if decoder.done:
            break
    assert decoder.done
    assert bytes(decoder.body) == b"hello world"


def test_a_chunked_body_over_the_limit_is_413():
    decoder = ChunkedBody(limit=4)
    with pytest.raises(RequestRefused) as caught:
        decoder.feed(bytearray(b"5\r\nhello\r\n0\r\n\r\n"))
    assert caught.value.status == 413


@pytest.mark.parametrize("wire", [b"zz\r\n", b"5\r\nhelloXX", b"-1\r\n"])
def test_malformed_chunks_are_400(wire):
    with pytest.raises(RequestRefused) as caught:
        ChunkedBody(limit=100).feed(bytearray(wire))
    assert caught.value.status == 400


@given(st.lists(st.binary(min_size=1, max_size=50), max_size=8), st.integers(1, 7))
def test_chunked_round_trip(parts, step):
    wire = b"".join(chunk(p) for p in parts) + b"0\r\n\r\n"
    decoder = ChunkedBody(limit=10_000)
    buffer = bytearray()
    for i in range(0, len(wire), step):
        buffer += wire[i : i + step]
        decoder.feed(buffer)
    assert decoder.done
    assert bytes(decoder.body) == b"".join(parts)
    assert not buffer


@given(st.binary(max_size=300))
def test_any_bytes_either_parse_or_raise_protocol_error(data):
    try:
        parse_head(data)
    except RequestRefused as exc:
        status = exc.status
    else:
        status = 400
    assert 400 <= status < 600


def test_responses_are_what_h11_reads():
    """A response head and a chunked body, read back by an independent parser."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    wire = response_head(200, [(b"x-a", b"1")], content_length=None, keep_alive=True)
    wire += chunk(b"hello ") + chunk(b"world") + b"0\r\n\r\n"
    client.receive_data(wire)
    response = client.next_event()
    assert isinstance(response, h11.Response)
    assert response.status_code == 200
    assert (b"x-a", b"1") in list(response.headers)
    body = b""
    while not isinstance(event := client.next_event(), h11.EndOfMessage):
        body += bytes(event.data)
    assert body == b"hello world"
