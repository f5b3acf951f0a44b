"""The management API against a real server: register, scale, describe, unregister."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import attrs
import httpx
import pytest
import trio

from supervisor import ModelConfig, ServerConfig
from supervisor.server import BaseURLs, serve
from tests.helpers import CRASH_AT_LOAD_HANDLER, ECHO_HANDLER, make_mar

pytestmark = pytest.mark.slow

LOCAL = "127.0.0.1:0"

DESCRIBED_HANDLER = """
class Described:
    def initialize(self, context):
        self.name = context.model_name

    def handle(self, batch, context):
        def seen(i):
            return {
                "version": context.model_version,
                "url_path": context.get_request_header(i, "url_path"),
                "explain": context.get_request_header(i, "explain"),
            }

        return [seen(i) for i in range(len(batch))]

    def describe_handle(self):
        return {"model": self.name, "classes": 3}
"""


@attrs.define
class Server:
    endpoints: BaseURLs
    store: Path
    client: httpx.AsyncClient

    async def register(self, **params) -> httpx.Response:
        return await self.client.post(f"{self.endpoints.management}/models", params=params)

    async def describe(self, path: str) -> httpx.Response:
        return await self.client.get(f"{self.endpoints.management}/models/{path}")


@pytest.fixture
async def server(nursery, tmp_path) -> AsyncIterator[Server]:
    store = tmp_path / "store"
    make_mar(store, "echo", ECHO_HANDLER)
    make_mar(store, "echo2", ECHO_HANDLER, version="2.0")
    make_mar(store, "broken", CRASH_AT_LOAD_HANDLER)
    make_mar(store, "described", DESCRIBED_HANDLER)
    config = ServerConfig(
        inference_address=LOCAL,
        management_address=LOCAL,
        metrics_address=LOCAL,
        model_store=str(store),
        enable_model_api=True,
        disable_token_authorization=True,
        key_file=str(tmp_path / "key_file.json"),
        shutdown_grace=2.0,
    )
    shutdown = trio.Event()
    endpoints = await nursery.start(partial(serve, config, shutdown=shutdown, handle_signals=False))
    async with httpx.AsyncClient(timeout=60) as client:
        yield Server(endpoints, store, client)
    shutdown.set()


async def test_register_synchronously_then_predict_and_unregister(server):
    r = await server.register(url="echo.mar", initial_workers=1)
    assert r.status_code == 200
    assert r.json() == {"status": 'Model "echo" Version: 1.0 registered with 1 initial workers'}
    p = await server.client.post(
        f"{server.endpoints.inference}/predictions/echo",
        content=b"hi",
        headers={"Content-Type": "text/plain"},
    )
    assert p.json()["echo"] == "hi"
    [desc] = (await server.describe("echo")).json()
    assert desc["modelUrl"] == "echo.mar"
    unpacked = trio.Path(desc["modelDir"])
    assert await (unpacked / "model_handler.py").exists()
    assert not Path(unpacked).is_relative_to(server.store)  # unpacked outside the store
    r = await server.client.delete(f"{server.endpoints.management}/models/echo")
    assert r.json() == {"status": 'Model "echo" unregistered'}
    assert (await server.describe("echo")).status_code == 404
    assert not await unpacked.exists()  # the unpacked copy is removed on unregister


async def test_register_with_json_body_and_zero_workers(server):
    r = await server.client.post(
        f"{server.endpoints.management}/models",
        json={"url": "echo.mar", "model_name": "renamed", "initial_workers": 0, "batch_size": 4},
    )
    assert r.status_code == 200
    assert "registered with 0 initial workers" in r.json()["status"]
    [desc] = (await server.describe("renamed")).json()
    assert desc["batchSize"] == 4
    assert desc["workers"] == []
    p = await server.client.post(f"{server.endpoints.inference}/predictions/renamed", content=b"x")
    assert p.status_code == 503
    assert "has no worker" in p.json()["message"]


async def test_asynchronous_register_answers_202(server):
    r = await server.register(url="echo.mar", initial_workers=1, synchronous="false")
    assert r.status_code == 202
    assert r.json() == {"status": "Processing worker updates..."}


async def test_register_errors(server):
    assert (await server.register(url="echo.mar", initial_workers=0)).status_code == 200
    conflict = await server.register(url="echo.mar", initial_workers=0)
    assert conflict.status_code == 409
    assert conflict.json()["type"] == "ConflictStatusException"
    missing = await server.register(url="nope.mar")
    assert missing.status_code == 404
    assert missing.json()["message"] == "Model not found at: nope.mar"
    assert (await server.register()).status_code == 400
    # a batch_size that is no number is ignored, as in TorchServe (tests/test_ts_management.py);
    # one that is a number out of range is refused
    bad = await server.register(url="echo2.mar", batch_size="0")
    assert bad.status_code == 400
    assert "batch_size" in bad.json()["message"]


async def test_a_model_that_cannot_load_is_rolled_back_with_its_log_tail(server):
    r = await server.register(url="broken.mar", initial_workers=1)
    assert r.status_code == 500
    body = r.json()
    assert "Failed to start workers for model broken" in body["message"]
    assert any("corrupt (on purpose)" in line for line in body["logTail"])
    assert (await server.describe("broken")).status_code == 404


async def test_scale_up_down_and_errors(server):
    await server.register(url="echo.mar", initial_workers=1)
    base = f"{server.endpoints.management}/models/echo"
    r = await server.client.put(base, params={"min_worker": 2, "synchronous": "true"})
    assert r.status_code == 200
    assert r.json() == {"status": "Workers scaled to 2 for model: echo"}
    [desc] = (await server.describe("echo")).json()
    assert [w["status"] for w in desc["workers"]] == ["READY", "READY"]
    r = await server.client.put(base, params={"min_worker": 1})
    assert r.status_code == 202
    r = await server.client.put(base, params={"min_worker": 3, "max_worker": 2})
    assert r.status_code == 400
    assert r.json()["message"] == "max_worker cannot be less than min_worker."
    r = await server.client.put(
        f"{server.endpoints.management}/models/nope", params={"min_worker": 1}
    )
    assert r.status_code == 404


async def test_versions_default_and_delete_rules(server):
    await server.register(url="echo.mar", initial_workers=1)
    await server.register(url="echo2.mar", model_name="echo", initial_workers=1)
    all_versions = (await server.describe("echo/all")).json()
    assert [d["modelVersion"] for d in all_versions] == ["1.0", "2.0"]
    delete_default = await server.client.delete(f"{server.endpoints.management}/models/echo/1.0")
    assert delete_default.status_code == 403
    r = await server.client.put(f"{server.endpoints.management}/models/echo/2.0/set-default")
    assert r.json() == {"status": 'Default version successfully updated for model "echo" to "2.0"'}
    [default] = (await server.describe("echo")).json()
    assert default["modelVersion"] == "2.0"
    r = await server.client.put(f"{server.endpoints.management}/models/echo/9.9/set-default")
    assert r.status_code == 404
    r = await server.client.delete(f"{server.endpoints.management}/models/echo/1.0")
    assert r.status_code == 200


async def test_list_pagination(server):
    for name in ("a", "b", "c"):
        await server.register(url="echo.mar", model_name=name, initial_workers=0)
    first = (await server.client.get(f"{server.endpoints.management}/models?limit=2")).json()
    assert [m["modelName"] for m in first["models"]] == ["a", "b"]
    assert first["nextPageToken"] == "2"
    rest = (
        await server.client.get(f"{server.endpoints.management}/models?limit=2&next_page_token=2")
    ).json()
    assert [m["modelName"] for m in rest["models"]] == ["c"]
    assert "nextPageToken" not in rest


async def test_customized_describe_and_explanations_and_url_path(server):
    await server.register(url="described.mar", initial_workers=1)
    [desc] = (await server.describe("described?customized=true")).json()
    assert desc["customizedMetadata"] == {"model": "described", "classes": 3}
    base = server.endpoints.inference
    r = await server.client.post(f"{base}/predictions/described/1.0/a/b/c", content=b"x")
    assert r.json() == {"version": "1.0", "url_path": "a/b/c", "explain": None}
    r = await server.client.post(f"{base}/explanations/described", content=b"x")
    assert r.json() == {"version": "1.0", "url_path": "", "explain": "True"}
    # a client cannot pose as the server's own routing headers
    r = await server.client.post(
        f"{base}/predictions/described", content=b"x", headers={"explain": "True"}
    )
    assert r.json()["explain"] is None


YAML_AWARE_HANDLER = """
class YamlAware:
    def initialize(self, context):
        self.config = context.model_yaml_config

    def handle(self, batch, context):
        return [{"threshold": self.config.get("handler", {}).get("threshold"), "n": len(batch)}
                for _ in batch]
"""


async def test_archives_listed_at_startup_load_with_their_model_config(nursery, tmp_path):
    store = tmp_path / "store"
    make_mar(
        store,
        "tuned",
        YAML_AWARE_HANDLER,
        extra={
            "model-config.yaml": "batchSize: 4\nmaxBatchDelay: 50\nhandler:\n  threshold: 0.7\n"
        },
    )
    config = ServerConfig(
        inference_address=LOCAL,
        management_address=LOCAL,
        metrics_address=LOCAL,
        model_store=str(store),
        models=(ModelConfig(name="tuned", url="tuned.mar"),),
        disable_token_authorization=True,
        key_file=str(tmp_path / "key_file.json"),
        shutdown_grace=2.0,
    )
    shutdown = trio.Event()
    endpoints = await nursery.start(partial(serve, config, shutdown=shutdown, handle_signals=False))
    async with httpx.AsyncClient(timeout=60) as client:
        with trio.fail_after(30):
            while True:
                [desc] = (await client.get(f"{endpoints.management}/models/tuned")).json()
                if desc["state"] != "LOADING":
                    break
                await trio.sleep(0.05)
        assert desc["state"] == "READY"
        assert desc["modelUrl"] == "tuned.mar"
        assert (desc["batchSize"], desc["maxBatchDelay"]) == (4, 50)  # from model-config.yaml
        r = await client.post(f"{endpoints.inference}/predictions/tuned", content=b"x")
        assert r.json()["threshold"] == 0.7  # the whole YAML reaches the handler
    shutdown.set()
