"""The lean front end of the inference port, end to end: a real server, real sockets.

The prediction routes are answered below Quart; everything else goes to the Quart
app over ASGI. Both must behave like one HTTP server.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial

import httpx
import pytest
import trio

from supervisor import ModelConfig, ServerConfig
from supervisor.server import BaseURLs, serve
from tests.helpers import ECHO_HANDLER

pytestmark = pytest.mark.slow


async def _start(nursery, handler_dir, tmp_path, **settings) -> BaseURLs:
    model = ModelConfig(
        name="echo", handler="echo", model_dir=str(handler_dir("echo", ECHO_HANDLER))
    )
    config = ServerConfig(
        inference_address="127.0.0.1:0",
        management_address="127.0.0.1:0",
        metrics_address="127.0.0.1:0",
        models=(model,),
        shutdown_grace=1.0,
        key_file=str(tmp_path / "keys.json"),
        **settings,
    )
    shutdown = trio.Event()
    endpoints = await nursery.start(partial(serve, config, shutdown=shutdown, handle_signals=False))
    _SHUTDOWN[endpoints.inference] = shutdown
    return endpoints


_SHUTDOWN: dict[str, trio.Event] = {}


def _stop(endpoints: BaseURLs) -> trio.Event:
    return _SHUTDOWN.pop(endpoints.inference)


@pytest.fixture
async def open_server(nursery, handler_dir, tmp_path) -> AsyncIterator[BaseURLs]:
    endpoints = await _start(nursery, handler_dir, tmp_path, disable_token_authorization=True)
    async with httpx.AsyncClient(timeout=30) as client:

        async def ready() -> bool:
            r = await client.post(f"{endpoints.inference}/predictions/echo", content=b"warm")
            return r.status_code == 200

        await _until(ready)
    yield endpoints
    _stop(endpoints).set()


async def _until(check) -> None:
    with trio.fail_after(30):
        while not await check():  # noqa: ASYNC110 - the workers start in other processes
            await trio.sleep(0.05)


@pytest.fixture
async def connect() -> AsyncIterator[Callable[[BaseURLs], Awaitable[trio.SocketStream]]]:
    """Opens raw connections to the inference port; all are closed at the end."""
    streams: list[trio.SocketStream] = []

    async def open_one(endpoints: BaseURLs) -> trio.SocketStream:
        host, port = endpoints.inference.removeprefix("http://").split(":")
        streams.append(await trio.open_tcp_stream(host, int(port)))
        return streams[-1]

    yield open_one
    for stream in streams:
        await stream.aclose()


async def _read_response(stream: trio.SocketStream, buf: bytearray) -> tuple[int, dict, bytes]:
    """One response off the stream (content-length or chunked), leaving the rest in ``buf``."""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in buf:
            data = await stream.receive_some(65536)
            assert data, "the server closed the connection"
            buf += data
        end = buf.index(b"\r\n\r\n")
        lines = bytes(buf[:end]).decode().split("\r\n")
        del buf[: end + 4]
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if "content-length" in headers:
            size = int(headers["content-length"])
            while len(buf) < size:
                buf += await stream.receive_some(65536)
            body = bytes(buf[:size])
            del buf[:size]
            return status, headers, body
        body = b""
        while True:
            while b"\r\n" not in buf:
                buf += await stream.receive_some(65536)
            line_end = buf.index(b"\r\n")
            size = int(bytes(buf[:line_end]), 16)
            while len(buf) < line_end + 2 + size + 2:
                buf += await stream.receive_some(65536)
            body += bytes(buf[line_end + 2 : line_end + 2 + size])
            del buf[: line_end + 2 + size + 2]
            if size == 0:
                return status, headers, body


def _post(path: str, body: bytes, *extra: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: x", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def test_pipelined_requests_on_one_connection_are_answered_in_order(connect, open_server):
    stream = await connect(open_server)
    wire = b"".join(_post("/predictions/echo", f"n{i}".encode()) for i in range(5))
    await stream.send_all(wire + b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
    buf = bytearray()
    echoes = []
    for _ in range(5):
        status, headers, body = await _read_response(stream, buf)
        assert status == 200
        assert headers["content-type"] == "application/json"
        assert headers["x-request-id"]
        echoes.append(json.loads(body)["echo"])
    assert echoes == [f"n{i}" for i in range(5)]
    status, _, body = await _read_response(stream, buf)  # a Quart route, same connection
    assert status == 200
    assert json.loads(body) == {"status": "Healthy"}


async def test_a_chunked_request_body_and_expect_continue(connect, open_server):
    stream = await connect(open_server)
    await stream.send_all(
        b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    buf = bytearray()
    with trio.fail_after(10):
        while b"\r\n\r\n" not in buf:
            buf += await stream.receive_some(1024)
    assert bytes(buf).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    del buf[: len(b"HTTP/1.1 100 Continue\r\n\r\n")]
    await stream.send_all(b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n")
    status, _, body = await _read_response(stream, buf)
    assert status == 200
    assert json.loads(body)["echo"] == "abcdef"


@pytest.mark.parametrize(
    ("wire", "status"),
    [
        (_post("/predictions/echo", b"abc", "Transfer-Encoding: chunked"), 400),
        (
            b"POST /predictions/echo HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            400,
        ),
        (b"POST /predictions/echo HTTP/3\r\n\r\n", 505),
        (
            b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n",
            413,
        ),
    ],
)
async def test_bad_framing_gets_a_json_error_and_the_connection_closes(
    connect, open_server, wire, status
):
    stream = await connect(open_server)
    await stream.send_all(wire)
    buf = bytearray()
    got, headers, body = await _read_response(stream, buf)
    assert got == status
    assert json.loads(body)["code"] == status
    assert headers.get("connection") == "close"
    with trio.fail_after(5):
        while await stream.receive_some(1024):  # closed by the server, nothing more
            pass


async def test_the_rest_of_the_api_is_quarts(open_server):
    url = open_server.inference
    async with httpx.AsyncClient(timeout=30) as client:
        assert (await client.get(f"{url}/predictions/echo")).status_code == 405
        missing = await client.post(f"{url}/predictions/nope", content=b"x")
        assert missing.status_code == 404
        assert missing.json()["code"] == 404
        assert (await client.get(f"{url}/nowhere")).status_code == 404
        assert (await client.get(f"{url}/api-description")).json()["openapi"].startswith("3.")
        form = await client.post(f"{url}/predictions/echo", data={"body": "from a form"})
        assert form.status_code == 200
        assert form.json()["echo"] == "from a form"
        encoded = await client.post(f"{url}/predictions/%65cho", content=b"x")
        assert encoded.status_code == 200  # a percent-encoded name is Quart's to decode


async def test_http10_clients_get_answers_and_a_closed_connection(connect, open_server):
    stream = await connect(open_server)
    await stream.send_all(b"POST /predictions/echo HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi")
    buf = bytearray()
    status, headers, body = await _read_response(stream, buf)
    assert status == 200
    assert json.loads(body)["echo"] == "hi"
    assert headers["connection"] == "close"


async def test_tokens_are_checked_on_the_fast_route(nursery, handler_dir, tmp_path):
    endpoints = await _start(nursery, handler_dir, tmp_path)
    key = json.loads((tmp_path / "keys.json").read_text())["inference"]["key"]
    url = f"{endpoints.inference}/predictions/echo"
    async with httpx.AsyncClient(timeout=30) as client:

        async def ready() -> bool:
            r = await client.post(url, content=b"w", headers={"Authorization": f"Bearer {key}"})
            return r.status_code == 200

        await _until(ready)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": key}):
            r = await client.post(url, content=b"x", headers=headers)
            assert r.status_code == 401
            assert r.headers["www-authenticate"].startswith("Bearer")
    _stop(endpoints).set()


async def test_an_idle_connection_is_closed_after_keep_alive_timeout(
    connect, nursery, handler_dir, tmp_path
):
    endpoints = await _start(
        nursery, handler_dir, tmp_path, disable_token_authorization=True, keep_alive_timeout=0.3
    )
    stream = await connect(endpoints)
    with trio.fail_after(10):
        assert await stream.receive_some(1024) == b""  # closed by the server, no answer
    _stop(endpoints).set()


async def test_a_slow_body_gets_408_while_others_are_served(
    connect, nursery, handler_dir, tmp_path
):
    endpoints = await _start(
        nursery, handler_dir, tmp_path, disable_token_authorization=True, read_timeout=1.0
    )
    async with httpx.AsyncClient(timeout=30) as client:
        url = f"{endpoints.inference}/predictions/echo"

        async def ready() -> bool:
            return (await client.post(url, content=b"w")).status_code == 200

        await _until(ready)
        slow = await connect(endpoints)
        await slow.send_all(
            b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"
        )
        assert (await client.post(url, content=b"meanwhile")).status_code == 200
        status, _, body = await _read_response(slow, bytearray())
        assert status == 408
        assert json.loads(body)["code"] == 408
    _stop(endpoints).set()


async def test_shutdown_closes_idle_keep_alive_connections(connect, nursery, handler_dir, tmp_path):
    endpoints = await _start(nursery, handler_dir, tmp_path, disable_token_authorization=True)
    stream = await connect(endpoints)
    await stream.send_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, _ = await _read_response(stream, bytearray())
    assert status == 200
    _stop(endpoints).set()
    with trio.fail_after(5):
        assert await stream.receive_some(1024) == b""


async def test_the_hypercorn_front_end_is_still_there(nursery, handler_dir, tmp_path):
    endpoints = await _start(
        nursery, handler_dir, tmp_path, disable_token_authorization=True, lean_http=False
    )
    async with httpx.AsyncClient(timeout=30) as client:

        async def ready() -> bool:
            r = await client.post(f"{endpoints.inference}/predictions/echo", content=b"hi")
            return r.status_code == 200 and r.json()["echo"] == "hi"

        await _until(ready)
        r = await client.get(f"{endpoints.inference}/ping")
        assert "hypercorn" in r.headers.get("server", "")
    _stop(endpoints).set()
