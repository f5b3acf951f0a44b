"""Streamed answers end to end: real workers, a real Hypercorn, httpx reading the chunks."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from handlers.protocol import InferItem
from supervisor import ModelConfig, ServerConfig, StreamFailed, open_supervisor
from supervisor.server import BaseURLs, serve
from supervisor.supervision.batching import STREAM_MAX_PARTS
from tests.helpers import eventually

pytestmark = pytest.mark.slow

STREAM_HANDLER = """
import os, time
from handlers import send_intermediate_predict_response


def wait_for(path):
    deadline = time.monotonic() + 30
    while not os.path.exists(path):  # the test creates it once it has seen a part
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.01)


class Streamer:
    def handle(self, batch, context):
        requests = [item["body"] for item in batch]
        first, n = requests[0], len(batch)
        mode = first["mode"]
        if mode == "hello":
            for i in range(4):
                context.send_intermediate(["hello "] * n)
                if i == 0 and "gate" in first:
                    wait_for(first["gate"])
            return ["world "] * n
        if mode == "words":  # each request of the batch gets its own parts
            for i in range(3):
                words = [f"{r['word']}{i} " for r in requests]
                send_intermediate_predict_response(words, context.request_ids, "", 200, context)
            return [f"{r['word']}-end/{n}" for r in requests]
        if mode == "tick":
            for i in range(first["parts"]):
                context.send_intermediate([f"{i},"] * n)
                time.sleep(first["every"])
            return ["done"] * n
        if mode == "silent":
            context.send_intermediate(["first "] * n)
            print("going silent mid-stream", flush=True)
            time.sleep(3600)
        if mode == "fail":
            context.send_intermediate(["first "] * n)
            if "gate" in first:
                wait_for(first["gate"])
            raise ValueError("broken midway on purpose")
        if mode == "block":
            print("blocked on the gate", flush=True)
            wait_for(first["gate"])
            return ["unblocked"] * n
        return ["not streamed"] * n
"""

TORCHSERVE_STREAM_HANDLER = """
from ts.handler_utils.utils import send_intermediate_predict_response
from ts.protocol.otf_message_handler import send_intermediate_predict_response as old_path
from ts.torch_handler.base_handler import BaseHandler


class StreamingHandler(BaseHandler):
    def initialize(self, context):
        self.initialized = True

    def handle(self, data, context):
        for i in range(4):
            send = send_intermediate_predict_response if i % 2 else old_path
            send(["hello "] * len(data), context.request_ids, "Intermediate", 200, context)
        context.set_response_content_type(0, "text/plain")
        return ["world "] * len(data)
"""


def streamer(handler_dir, name: str = "stream", **settings) -> ModelConfig:
    model_dir = handler_dir("streamer", STREAM_HANDLER)
    return ModelConfig(name=name, handler="streamer", model_dir=str(model_dir), **settings)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


async def start_server(
    nursery: trio.Nursery, *models: ModelConfig, lean_http: bool = True
) -> BaseURLs:
    """A server on free local ports (no tokens) with ``models`` loaded and ready.

    ``lean_http`` picks the inference port's front end (both must stream alike).
    """
    config = ServerConfig(
        lean_http=lean_http,
        inference_address="127.0.0.1:0",
        management_address="127.0.0.1:0",
        metrics_address="127.0.0.1:0",
        models=models,
        shutdown_grace=2.0,
        disable_token_authorization=True,
    )
    shutdown = trio.Event()
    endpoints: BaseURLs = await nursery.start(
        partial(serve, config, shutdown=shutdown, handle_signals=False)
    )
    nursery.start_soon(_stop_at_the_end, shutdown)
    async with httpx.AsyncClient() as client:
        for model in models:
            await _wait_ready(client, f"{endpoints.management}/models/{model.name}")
    return endpoints


async def _wait_ready(client: httpx.AsyncClient, url: str) -> None:
    with trio.fail_after(30):
        while True:
            if (await client.get(url)).json()[0]["state"] == "READY":
                return
            await trio.sleep(0.05)


async def _next_incarnation(client: httpx.AsyncClient, url: str) -> dict:
    """The model's worker once its second incarnation is ready."""
    with trio.fail_after(30):
        while True:
            [worker] = (await client.get(url)).json()[0]["workers"]
            if worker["incarnation"] == 2 and worker["status"] == "READY":
                return worker
            await trio.sleep(0.05)


async def _stop_at_the_end(shutdown: trio.Event) -> None:
    try:
        await trio.sleep_forever()
    finally:
        shutdown.set()


@pytest.mark.parametrize("lean_http", [True, False], ids=["lean", "hypercorn"])
async def test_parts_arrive_as_chunks_before_the_handler_is_done(
    nursery, handler_dir, client, tmp_path: Path, lean_http
):
    endpoints = await start_server(nursery, streamer(handler_dir), lean_http=lean_http)
    gate = tmp_path / "gate"
    url = f"{endpoints.inference}/predictions/stream"
    async with client.stream("POST", url, json={"mode": "hello", "gate": str(gate)}) as r:
        assert r.status_code == 200
        assert r.headers["transfer-encoding"] == "chunked"
        assert r.headers["content-type"].startswith("text/plain")
        assert r.headers["ts_stream_next"] == "true"  # the first part's headers, as TorchServe
        chunks = r.aiter_raw()
        first = await anext(chunks)
        assert first == b"hello "  # the handler is still waiting for the gate
        gate.touch()
        rest = [chunk async for chunk in chunks]
    assert b"".join([first, *rest]) == b"hello hello hello hello world "
    # a handler that does not stream still gets a plain answer with a length
    r = await client.post(url, json={"mode": "plain"})
    assert r.text == "not streamed"
    assert "transfer-encoding" not in r.headers
    assert r.headers["content-length"] == str(len(b"not streamed"))


async def test_a_torchserve_handler_streams_with_both_import_paths(nursery, handler_dir, client):
    model_dir = handler_dir("ts_streamer", TORCHSERVE_STREAM_HANDLER)
    config = ModelConfig(name="ts", handler="ts_streamer", model_dir=str(model_dir))
    endpoints = await start_server(nursery, config)
    r = await client.post(f"{endpoints.inference}/predictions/ts", content=b"go")
    assert r.status_code == 200
    assert r.text == "hello hello hello hello world "


@pytest.mark.parametrize("lean_http", [True, False], ids=["lean", "hypercorn"])
async def test_a_stream_that_goes_silent_ends_incomplete_and_the_worker_is_replaced(
    nursery, handler_dir, client, caplog, lean_http
):
    config = streamer(handler_dir, response_timeout=1.0, stop_grace=0.5)
    endpoints = await start_server(nursery, config, lean_http=lean_http)
    caplog.set_level(logging.WARNING)
    url = f"{endpoints.inference}/predictions/stream"
    async with client.stream("POST", url, json={"mode": "silent"}) as r:
        assert r.status_code == 200
        chunks = r.aiter_raw()
        assert await anext(chunks) == b"first "
        with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
            async for _ in chunks:
                pass
    worker = await _next_incarnation(client, f"{endpoints.management}/models/stream")
    assert "response timeout" in worker["lastExit"]["reason"]
    assert any("going silent" in line for line in worker["lastExit"]["logTail"])
    broke_off = [rec for rec in caplog.records if "broke off" in rec.getMessage()]
    assert len(broke_off) == 1
    assert "sent nothing for 1 s after part 1 of its answer" in broke_off[0].getMessage()
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]  # no traceback
    r = await client.post(url, json={"mode": "hello"})  # the new worker streams
    assert r.text == "hello hello hello hello world "


async def test_a_stream_longer_than_response_timeout_succeeds_while_parts_keep_coming(
    nursery, handler_dir, client
):
    config = streamer(handler_dir, response_timeout=1.0)
    endpoints = await start_server(nursery, config)
    started = trio.current_time()
    r = await client.post(
        f"{endpoints.inference}/predictions/stream", json={"mode": "tick", "parts": 8, "every": 0.3}
    )
    assert trio.current_time() - started > 2.0
    assert r.status_code == 200
    assert r.text == "0,1,2,3,4,5,6,7,done"
    desc = (await client.get(f"{endpoints.management}/models/stream")).json()[0]
    assert desc["workers"][0]["incarnation"] == 1
    metrics = (await client.get(f"{endpoints.metrics}/metrics")).text
    [count] = [
        line
        for line in metrics.splitlines()
        if line.startswith("ts_inference_requests_total{") and 'model_name="stream"' in line
    ]
    assert count.endswith(" 1.0")


@pytest.mark.parametrize("lean_http", [True, False], ids=["lean", "hypercorn"])
async def test_a_handler_failing_midway_ends_the_stream_incomplete(
    nursery, handler_dir, client, tmp_path, lean_http
):
    endpoints = await start_server(nursery, streamer(handler_dir), lean_http=lean_http)
    url = f"{endpoints.inference}/predictions/stream"
    gate = tmp_path / "gate"
    async with client.stream("POST", url, json={"mode": "fail", "gate": str(gate)}) as r:
        chunks = r.aiter_raw()
        assert await anext(chunks) == b"first "
        gate.touch()  # now the handler raises
        with pytest.raises(httpx.RemoteProtocolError):
            async for _ in chunks:
                pass
    r = await client.post(url, json={"mode": "plain"})  # the worker itself is fine
    assert r.text == "not streamed"


@pytest.mark.parametrize("lean_http", [True, False], ids=["lean", "hypercorn"])
async def test_a_client_leaving_mid_stream_drops_the_rest_quietly(
    nursery, handler_dir, client, caplog, lean_http
):
    endpoints = await start_server(nursery, streamer(handler_dir), lean_http=lean_http)
    caplog.set_level(logging.WARNING)
    caplog.clear()
    url = f"{endpoints.inference}/predictions/stream"
    async with client.stream("POST", url, json={"mode": "tick", "parts": 100, "every": 0.01}) as r:
        assert await anext(r.aiter_raw()) == b"0,"
    # leaving the block closed the connection mid-stream: no error, no warning, and the
    # worker finishes that batch and serves the next (tests/test_stream_job.py checks the drop)
    r = await client.post(url, json={"mode": "plain"})
    assert r.text == "not streamed"
    desc = (await client.get(f"{endpoints.management}/models/stream")).json()[0]
    assert desc["workers"][0]["incarnation"] == 1
    assert [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.WARNING] == []


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


async def test_the_embedding_api_joins_or_yields_the_parts(handler_dir, tmp_path):
    async with open_supervisor() as sup:
        await sup.load_model(streamer(handler_dir))
        reply = await sup.predict("stream", body(mode="hello"))
        assert reply.body == b"hello hello hello hello world "
        assert reply.content_type.startswith("text/plain")
        parts = [p.body async for p in sup.predict_stream("stream", body(mode="hello"))]
        assert parts == [b"hello "] * 4 + [b"world "]
        [plain] = [p async for p in sup.predict_stream("stream", body(mode="plain"))]
        assert plain.body == b"not streamed"
        got = []

        async def read_failing() -> None:
            gate = tmp_path / "gate"
            async for p in sup.predict_stream("stream", body(mode="fail", gate=str(gate))):
                got.append(p.body)
                gate.touch()  # the handler raises after the part we read

        with pytest.raises(StreamFailed) as caught:
            await read_failing()
        assert got == [b"first "]
        assert caught.value.status == 503
        assert "broken midway on purpose" in caught.value.message
        # a stream that failed before its first part was read raises at once
        job = sup.submit(
            InferItem("r", {}, {"body": ("application/json", body(mode="fail"))}), "stream"
        )
        await eventually(lambda: job.answered)
        with pytest.raises(StreamFailed, match="broken midway on purpose"):
            await job.wait()
        async with aclosing(sup.predict_stream("stream", body(mode="hello"))) as early:
            async for _ in early:
                break  # the rest is dropped; the worker carries on
        assert (await sup.predict("stream", body(mode="plain"))).body == b"not streamed"


async def test_a_reader_that_falls_behind_fails_the_stream_not_the_worker(handler_dir):
    parts = STREAM_MAX_PARTS * 2
    async with open_supervisor() as sup:
        await sup.load_model(streamer(handler_dir))
        flood = body(mode="tick", parts=parts, every=0)
        job = sup.submit(InferItem("r", {}, {"body": ("application/json", flood)}), "stream")
        assert (await job.wait()).body == b"0,"
        await eventually(lambda: job.answered)  # the worker streamed on; nobody read
        with pytest.raises(StreamFailed, match=f"more than {STREAM_MAX_PARTS} parts"):
            await job.next_part()
        reply = await sup.predict("stream", flood)
        assert reply.body.decode() == "".join(f"{i}," for i in range(parts)) + "done"
        assert sup.describe("stream")[0].workers[0].incarnation == 1


def tail_has(sup, text: str) -> bool:
    return any(text in line for line in sup.describe("stream")[0].workers[0].log_tail)


async def test_a_batch_of_two_streams_gives_each_request_its_own_parts(handler_dir, tmp_path):
    gate = tmp_path / "gate"
    async with open_supervisor() as sup:
        await sup.load_model(streamer(handler_dir, batch_size=2, max_batch_delay=0.5))
        answers: dict[str, list[bytes]] = {}

        async def call(key: str, request: bytes) -> None:
            answers[key] = [p.body async for p in sup.predict_stream("stream", request)]

        async with trio.open_nursery() as calls:
            calls.start_soon(call, "block", body(mode="block", gate=str(gate)))
            await eventually(lambda: tail_has(sup, "blocked on the gate"))
            calls.start_soon(call, "a", body(mode="words", word="a"))
            calls.start_soon(call, "b", body(mode="words", word="b"))
            await eventually(lambda: sup.describe("stream")[0].queue_depth == 2)
            gate.touch()  # both go to the worker in one batch
    assert answers == {
        "block": [b"unblocked"],
        "a": [b"a0 ", b"a1 ", b"a2 ", b"a-end/2"],
        "b": [b"b0 ", b"b1 ", b"b2 ", b"b-end/2"],
    }
