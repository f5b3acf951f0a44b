"""End-to-end HTTP tests: a real Hypercorn on 127.0.0.1:0, real workers, httpx."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from supervisor import ModelConfig, ServerConfig
from supervisor.server import BaseURLs, serve
from tests.helpers import CRASH_AT_LOAD_HANDLER, ECHO_HANDLER, FAST_RESTARTS

pytestmark = pytest.mark.slow

LOCAL = "127.0.0.1:0"

EAGER_HANDLER = """
import torch

class Regressor:
    def initialize(self, context):
        self.model = torch.nn.Linear(3, 2)
        path = f"{context.system_properties['model_dir']}/weights.pt"
        self.model.load_state_dict(torch.load(path, weights_only=True))
        self.model.eval()

    def handle(self, batch, context):
        rows = torch.tensor([item["body"] for item in batch], dtype=torch.float32)
        with torch.inference_mode():
            return self.model(rows).tolist()
"""


def build_eager_model(directory: Path) -> list[list[float]]:
    """Save a small eager model's weights (built here, no downloads); return them."""
    import torch

    torch.manual_seed(7)
    model = torch.nn.Linear(3, 2)
    torch.save(model.state_dict(), directory / "weights.pt")
    return model.weight.detach().tolist()


def server_config(*models: ModelConfig, **settings) -> ServerConfig:
    """Listeners on free local ports; no tokens unless a test asks for them."""
    settings.setdefault("disable_token_authorization", True)
    return ServerConfig(
        inference_address=LOCAL,
        management_address=LOCAL,
        metrics_address=LOCAL,
        models=models,
        shutdown_grace=2.0,
        **settings,
    )


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


@pytest.fixture
async def server(nursery, client) -> AsyncIterator[BaseURLs]:
    """A server with the built-in iris model, ready."""
    shutdown = trio.Event()
    config = server_config(ModelConfig(name="iris", handler="handlers.builtin.iris"))
    endpoints = await nursery.start(partial(serve, config, shutdown=shutdown, handle_signals=False))
    await wait_ready(client, endpoints, "iris")
    yield endpoints
    shutdown.set()


async def wait_ready(client: httpx.AsyncClient, endpoints: BaseURLs, name: str) -> dict:
    async def ready() -> dict:
        while True:
            desc = (await client.get(f"{endpoints.management}/models/{name}")).json()[0]
            if desc["state"] in ("READY", "FAILED"):
                return desc
            await trio.sleep(0.05)

    with trio.fail_after(30):
        return await ready()


async def test_iris_prediction_and_describe(server, client):
    r = await client.post(
        f"{server.inference}/predictions/iris",
        content=b"[5.1, 3.5, 1.4, 0.2]",
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json()["label"] == "setosa"
    r = await client.post(f"{server.inference}/predictions/iris/1.0", json=[6.7, 3.0, 5.2, 2.3])
    assert r.json()["label"] == "virginica"
    # what `curl -d '[...]'` sends when no Content-Type is given: a urlencoded form
    r = await client.post(
        f"{server.inference}/predictions/iris",
        content=b"[5.9, 3.0, 4.2, 1.5]",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.json()["label"] == "versicolor"
    r = await client.post(
        f"{server.inference}/predictions/iris", files={"data": b"[5, 3.4, 1.5, 0.2]"}
    )
    assert r.json()["label"] == "setosa"
    assert (await client.get(f"{server.inference}/ping")).json() == {"status": "Healthy"}
    listing = (await client.get(f"{server.management}/models")).json()
    assert listing == {"models": [{"modelName": "iris", "modelUrl": "handlers.builtin.iris"}]}
    [desc] = (await client.get(f"{server.management}/models/iris")).json()
    assert desc["modelName"] == "iris"
    assert desc["modelVersion"] == "1.0"
    assert desc["batchSize"] == 1
    [worker] = desc["workers"]
    assert worker["incarnation"] == 1
    assert worker["status"] == "READY"
    assert isinstance(worker["pid"], int)
    assert worker["lastExit"] is None
    assert any("loaded iris" in line for line in worker["logTail"])


async def test_bad_input_gets_json_errors(server, client):
    r = await client.post(f"{server.inference}/predictions/iris", content=b"not json")
    assert r.status_code == 400
    assert "4 numbers" in r.json()["message"]
    r = await client.post(f"{server.inference}/predictions/nope", content=b"{}")
    assert r.status_code == 404
    assert r.json() == {
        "code": 404,
        "type": "ModelNotFoundException",
        "message": "Model not found: nope",
    }
    r = await client.post(f"{server.inference}/predictions/iris/9.9", content=b"{}")
    assert r.status_code == 404
    assert r.json()["type"] == "ModelVersionNotFoundException"
    r = await client.get(f"{server.inference}/no/such/route")
    assert r.status_code == 404
    assert r.json()["type"] == "ResourceNotFoundException"
    r = await client.get(f"{server.inference}/predictions/iris")
    assert r.status_code == 405
    assert r.json()["code"] == 405
    r = await client.get(f"{server.management}/models/nope")
    assert r.status_code == 404


async def test_kill_9_over_http_comes_back_with_incarnation_2(server, client):
    [desc] = (await client.get(f"{server.management}/models/iris")).json()
    pid = desc["workers"][0]["pid"]
    os.kill(pid, signal.SIGKILL)

    async def restarted() -> bool:
        [d] = (await client.get(f"{server.management}/models/iris")).json()
        return d["workers"][0]["incarnation"] == 2 and d["workers"][0]["status"] == "READY"

    with trio.fail_after(20):
        while not await restarted():  # noqa: ASYNC110 - state of another process
            await trio.sleep(0.05)
    [desc] = (await client.get(f"{server.management}/models/iris")).json()
    last = desc["workers"][0]["lastExit"]
    assert last["pid"] == pid
    assert last["signal"] == signal.SIGKILL
    assert last["incarnation"] == 1
    r = await client.post(f"{server.inference}/predictions/iris", json=[5.1, 3.5, 1.4, 0.2])
    assert r.status_code == 200
    metrics = (await client.get(f"{server.metrics}/metrics")).text
    assert (
        'supervisor_worker_incarnation{model_name="iris",model_version="1.0",worker_id="w1"} 2.0'
        in metrics
    )
    assert (
        'supervisor_worker_restarts_total{model_name="iris",model_version="1.0",worker_id="w1"} 1.0'
        in metrics
    )


async def test_failed_model_makes_ping_unhealthy(nursery, handler_dir, client):
    broken = ModelConfig(
        name="broken",
        handler="broken_handler",
        model_dir=str(handler_dir("broken_handler", CRASH_AT_LOAD_HANDLER)),
        restart=FAST_RESTARTS,
    )
    echo = ModelConfig(
        name="echo",
        handler="echo_handler",
        model_dir=str(handler_dir("echo_handler", ECHO_HANDLER)),
    )
    shutdown = trio.Event()
    endpoints = await nursery.start(
        partial(serve, server_config(echo, broken), shutdown=shutdown, handle_signals=False)
    )
    desc = await wait_ready(client, endpoints, "broken")
    assert desc["state"] == "FAILED"
    assert any("corrupt (on purpose)" in line for line in desc["failure"]["logTail"])
    ping = await client.get(f"{endpoints.inference}/ping")
    assert ping.status_code == 500
    assert ping.json()["status"] == "Unhealthy"
    r = await client.post(f"{endpoints.inference}/predictions/broken", content=b"x")
    assert r.status_code == 503
    assert r.json()["type"] == "ServiceUnavailableException"
    assert "FAILED" in r.json()["message"]
    assert any("corrupt (on purpose)" in line for line in r.json()["logTail"])
    await wait_ready(client, endpoints, "echo")
    r = await client.post(
        f"{endpoints.inference}/predictions/echo",
        content=b"hi",
        headers={"Content-Type": "text/plain"},
    )
    assert r.status_code == 200
    assert r.json()["echo"] == "hi"
    shutdown.set()


async def test_eager_torch_model_built_by_the_test(nursery, handler_dir, client):
    import torch

    model_dir = handler_dir("regressor", EAGER_HANDLER)
    weights = build_eager_model(model_dir)
    config = ModelConfig(
        name="reg",
        handler="regressor",
        model_dir=str(model_dir),
        batch_size=4,
        max_batch_delay=0.02,
    )
    shutdown = trio.Event()
    endpoints = await nursery.start(
        partial(serve, server_config(config), shutdown=shutdown, handle_signals=False)
    )
    await wait_ready(client, endpoints, "reg")
    results = {}

    async def call(i: int) -> None:
        r = await client.post(f"{endpoints.inference}/predictions/reg", json=[i, 1.0, -1.0])
        assert r.status_code == 200
        results[i] = r.json()

    async with trio.open_nursery() as calls:
        for i in range(8):
            calls.start_soon(call, i)
    torch.manual_seed(7)
    model = torch.nn.Linear(3, 2)
    assert model.weight.detach().tolist() == weights
    for i, got in results.items():
        want = model(torch.tensor([float(i), 1.0, -1.0])).tolist()
        assert got == pytest.approx(want, abs=1e-5)
    shutdown.set()


async def test_headers_reach_the_handler_and_status_comes_back(nursery, handler_dir, client):
    source = """
class Headers:
    def handle(self, batch, context):
        context.set_response_status(201, "Created", 0)
        context.set_response_header(0, "X-Model", context.model_name)
        context.set_response_content_type(0, "text/plain")
        return [context.get_request_header(0, "x-trace") or "none"]
"""
    config = ModelConfig(
        name="hdr", handler="hdr_handler", model_dir=str(handler_dir("hdr_handler", source))
    )
    shutdown = trio.Event()
    endpoints = await nursery.start(
        partial(serve, server_config(config), shutdown=shutdown, handle_signals=False)
    )
    await wait_ready(client, endpoints, "hdr")
    r = await client.post(
        f"{endpoints.inference}/predictions/hdr", content=b"x", headers={"X-Trace": "abc"}
    )
    assert r.status_code == 201
    assert r.text == "abc"
    assert r.headers["x-model"] == "hdr"
    assert r.headers["content-type"].startswith("text/plain")
    shutdown.set()


async def test_concurrent_requests_are_all_answered(server, client):
    statuses = []

    async def call() -> None:
        r = await client.post(f"{server.inference}/predictions/iris", json=[5.9, 3.0, 4.2, 1.5])
        statuses.append((r.status_code, r.json()["label"]))

    async with trio.open_nursery() as calls:
        for _ in range(40):
            calls.start_soon(call)
    assert statuses == [(200, "versicolor")] * 40


async def test_a_full_queue_answers_503_at_once_with_retry_after(nursery, handler_dir, client):
    echo = ModelConfig(
        name="echo",
        handler="echo_handler",
        model_dir=str(handler_dir("echo_handler", ECHO_HANDLER)),
        job_queue_size=1,
    )
    shutdown = trio.Event()
    endpoints = await nursery.start(
        partial(serve, server_config(echo), shutdown=shutdown, handle_signals=False)
    )
    await wait_ready(client, endpoints, "echo")
    url = f"{endpoints.inference}/predictions/echo"
    text = {"Content-Type": "text/plain"}
    statuses = []

    async def call(body: bytes) -> None:
        statuses.append((await client.post(url, content=body, headers=text)).status_code)

    async with trio.open_nursery() as calls:
        calls.start_soon(call, b"sleep 1")  # in flight
        await wait_for_state(client, endpoints, lambda d: d["workers"][0]["state"] == "BUSY")
        calls.start_soon(call, b"queued")  # waits in the queue of one
        await wait_for_state(
            client, endpoints, lambda d: d["jobQueueStatus"]["pendingRequests"] == 1
        )
        with trio.fail_after(0.5):  # refused at once, not after the busy batch
            full = await client.post(url, content=b"refused", headers=text)
    assert full.status_code == 503
    assert full.headers["retry-after"] == "1"
    assert "queue is full" in full.json()["message"]
    assert sorted(statuses) == [200, 200]
    shutdown.set()


async def wait_for_state(client, endpoints, predicate) -> None:
    with trio.fail_after(15):
        while True:
            [desc] = (await client.get(f"{endpoints.management}/models/echo")).json()
            if predicate(desc):
                return
            await trio.sleep(0.02)
