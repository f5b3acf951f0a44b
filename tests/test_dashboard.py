"""The dashboard's server side against a real server: auth, headers, the event stream, actions."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, aclosing
from functools import partial
from typing import Any

import attrs
import httpx
import pytest
import trio

from supervisor import ModelConfig, ServerConfig
from supervisor.api.dashboard import CONTENT_SECURITY_POLICY
from supervisor.api.dashboard.hub import Hub
from supervisor.server import BaseURLs, serve
from supervisor.supervision.core import open_supervisor
from tests.helpers import ECHO_HANDLER, FAST_RESTARTS

pytestmark = pytest.mark.slow

LOCAL = "127.0.0.1:0"


@attrs.define
class Server:
    endpoints: BaseURLs
    headers: dict[str, str]
    client: httpx.AsyncClient
    shutdown: trio.Event

    def url(self, path: str) -> str:
        return f"{self.endpoints.management}{path}"


@pytest.fixture
async def server(nursery, tmp_path) -> AsyncIterator[Server]:
    model_dir = tmp_path / "echo"
    model_dir.mkdir()
    (model_dir / "echo_handler.py").write_text(ECHO_HANDLER)
    echo = ModelConfig(
        name="echo", handler="echo_handler", model_dir=str(model_dir), restart=FAST_RESTARTS
    )
    config = ServerConfig(
        inference_address=LOCAL,
        management_address=LOCAL,
        metrics_address=LOCAL,
        models=(echo,),
        key_file=str(tmp_path / "key_file.json"),
        read_timeout=5.0,
        shutdown_grace=2.0,
    )
    shutdown = trio.Event()
    endpoints = await nursery.start(partial(serve, config, shutdown=shutdown, handle_signals=False))
    key = json.loads((tmp_path / "key_file.json").read_text())["management"]["key"]
    async with httpx.AsyncClient(timeout=30) as client:
        server = Server(endpoints, {"Authorization": f"Bearer {key}"}, client, shutdown)
        await _wait_ready(server)
        yield server
    shutdown.set()


async def _wait_ready(server: Server) -> None:
    """Wait, on the event stream itself, until the model is READY."""
    url = server.url("/dashboard/events")
    with trio.fail_after(30):
        while True:  # a stream ends after 0.8 x read_timeout: open the next one
            async with (
                server.client.stream("GET", url, headers=server.headers) as response,
                aclosing(events(response)) as stream,
            ):
                async for kind, data in stream:
                    if kind in ("snapshot", "state") and data["models"][0]["state"] == "READY":
                        return


async def events(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    """(kind, data) for each Server-Sent Event of a streamed response."""
    kind, data = "message", []
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data.append(line.removeprefix("data: "))
        elif not line and data:
            yield kind, json.loads("\n".join(data))
            kind, data = "message", []


async def test_the_page_is_open_and_everything_with_data_needs_the_key(server):
    page = await server.client.get(server.url("/dashboard"))
    assert page.status_code == 200
    assert (await server.client.get(server.url("/dashboard/"))).content == page.content
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert page.headers["x-frame-options"] == "DENY"
    assert b"<script src=" in page.content
    assert b"<script>" not in page.content  # no inline script
    assert b"style=" not in page.content
    for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        static = await server.client.get(server.url(f"/dashboard/static/{name}"))
        assert static.status_code == 200
        assert static.headers["content-type"].startswith(kind)
        assert static.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    stream = await server.client.get(server.url("/dashboard/events"))
    assert stream.status_code == 401
    assert stream.json()["code"] == 401
    wrong = {"Authorization": "Bearer not-the-key"}
    refused = await server.client.get(server.url("/dashboard/events"), headers=wrong)
    assert refused.status_code == 401
    other = await server.client.get(server.url("/dashboard/static/x.js"), headers=server.headers)
    assert other.status_code == 404
    restart = await server.client.post(server.url("/models/echo/1.0/workers/w1/restart"))
    assert restart.status_code == 401


async def test_the_stream_starts_with_a_snapshot_and_shows_a_kill_as_it_happens(server):
    url = server.url("/dashboard/events")
    async with (
        AsyncExitStack() as stack,
        server.client.stream("GET", url, headers=server.headers) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        stream = await stack.enter_async_context(aclosing(events(response)))
        kind, snapshot = await anext(stream)
        assert kind == "snapshot"
        assert snapshot["server"]["pid"] == os.getpid()  # this test's process serves
        [echo] = snapshot["models"]
        assert (echo["name"], echo["state"], echo["isDefault"]) == ("echo", "READY", True)
        [worker] = echo["workers"]
        assert worker["label"] == "w1#1"
        assert any(e["kind"] == "worker.started" for e in snapshot["events"])
        os.kill(worker["pid"], signal.SIGKILL)
        with trio.fail_after(15):
            died = await _next(stream, lambda k, d: k == "event" and d["kind"] == "worker.died")
            assert (died["worker"], died["signal"], died["pid"]) == ("w1#1", 9, worker["pid"])
            state = await _next(stream, lambda k, d: k == "state" and _label(d) == "w1#2")
        [now] = state["models"][0]["workers"]
        assert now["lastExit"]["signal"] == 9
        assert now["lastExit"]["incarnation"] == 1


async def test_restarting_one_worker_makes_a_new_incarnation(server):
    url = server.url("/dashboard/events")
    async with (
        AsyncExitStack() as stack,
        server.client.stream("GET", url, headers=server.headers) as response,
    ):
        stream = await stack.enter_async_context(aclosing(events(response)))
        _, snapshot = await anext(stream)
        old_pid = snapshot["models"][0]["workers"][0]["pid"]
        restart = await server.client.post(
            server.url("/models/echo/1.0/workers/w1/restart"), headers=server.headers
        )
        assert restart.status_code == 202
        assert restart.json() == {"status": "Worker w1#1 of model echo version 1.0 is restarting"}
        with trio.fail_after(15):
            stopped = await _next(stream, lambda k, d: k == "event")
            assert (stopped["kind"], stopped["reason"]) == ("worker.stopped", "restart requested")
            replaced = await _next(stream, lambda k, d: k == "event")
            assert (replaced["kind"], replaced["worker"]) == ("worker.replaced", "w1#2")
            assert replaced["pid"] != old_pid
    described = (await server.client.get(server.url("/models/echo"), headers=server.headers)).json()
    assert described[0]["restarts"] == 1
    missing = await server.client.post(
        server.url("/models/echo/1.0/workers/w9/restart"), headers=server.headers
    )
    assert missing.status_code == 404
    assert "has no worker w9" in missing.json()["message"]


async def test_the_stream_ends_before_hypercorn_would_drop_it(server):
    url = server.url("/dashboard/events")
    started = trio.current_time()
    with trio.fail_after(10):
        async with server.client.stream("GET", url, headers=server.headers) as response:
            async for _ in response.aiter_bytes():
                pass
    # 0.8 x read_timeout of 5 s, and ended cleanly: a connection Hypercorn dropped would end
    # without the last chunk (httpx raises RemoteProtocolError)
    assert trio.current_time() - started >= 3.5


async def test_a_shutdown_ends_the_streams_at_once(server):
    url = server.url("/dashboard/events")
    async with (
        AsyncExitStack() as stack,
        server.client.stream("GET", url, headers=server.headers) as response,
    ):
        stream = await stack.enter_async_context(aclosing(events(response)))
        kind, _ = await anext(stream)
        assert kind == "snapshot"
        server.shutdown.set()
        with trio.fail_after(2):  # not after shutdown_grace (2 s) or the stream's lifetime (4 s)
            async for _ in stream:
                pass


async def _next(stream: AsyncIterator[tuple[str, Any]], wanted: Any) -> Any:
    async for kind, data in stream:
        if wanted(kind, data):
            return data
    raise AssertionError("the stream ended")


def _label(state: dict[str, Any]) -> str:
    return state["models"][0]["workers"][0]["label"]


async def test_a_slow_browser_is_dropped_and_nothing_listens_without_browsers():
    async with open_supervisor() as sup, trio.open_nursery() as nursery:
        hub = Hub(sup, list, buffer=4)
        await nursery.start(hub.run)
        assert sup.events.subscribers == 0  # no browser: the event log calls nobody
        with hub.subscribe() as slow, hub.subscribe() as fast:
            assert (hub.subscribers, sup.events.subscribers) == (2, 1)
            assert (await fast.receive()).startswith(b"event: snapshot")
            for i in range(4):
                sup.events.record("model.failed", "m", "1.0", f"failure {i}")
                while not (await fast.receive()).startswith(b"event: event"):
                    pass  # the models' state may come between events
            assert hub.dropped == 1  # the snapshot and 3 events filled its 4 places
            assert hub.subscribers == 1
            with pytest.raises(trio.ClosedResourceError):
                await slow.receive()
        assert (hub.subscribers, sup.events.subscribers) == (0, 0)
        nursery.cancel_scope.cancel()
