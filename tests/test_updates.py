"""Safe model updates over HTTP: real workers, a real server, clients sending all along."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from supervisor import ServerConfig
from supervisor.server import BaseURLs, serve
from tests.helpers import CRASH_AT_LOAD_HANDLER, make_mar

pytestmark = pytest.mark.slow

LOCAL = "127.0.0.1:0"

VERSIONED_HANDLER = """
import time

class Versioned:
    def initialize(self, context):
        self.version = context.model_version
        print(f"serving version {self.version}", flush=True)

    def handle(self, batch, context):
        out = []
        for item in batch:
            body = item.get("body")
            body = body.decode() if isinstance(body, (bytes, bytearray)) else body
            if body.startswith("sleep "):
                time.sleep(float(body.split()[1]))
            out.append({"echo": body, "version": self.version})
        return out
"""

GARBLING_HANDLER = """
class Garbling:
    def handle(self, batch, context):
        print(f"answering garbage to {len(batch)} request(s) on purpose", flush=True)
        return [{"echo": "garbage", "version": context.model_version} for _ in batch]
"""


def canary(version: str) -> dict[str, Any]:
    """A canary that wants the versioned handler's answer from ``version``."""
    expected = {"echo": "ping", "version": version}
    return {"name": "ping", "body": "ping", "content_type": "text/plain", "expect_json": expected}


def archive(store: Path, file: str, version: str, handler: str, canaries: Any = None) -> None:
    extra = {"canaries.json": json.dumps(canaries)} if canaries is not None else {}
    make_mar(store, "m", handler, version=version, extra=extra)
    (store / "m.mar").rename(store / file)


@attrs.define
class Server:
    endpoints: BaseURLs
    client: httpx.AsyncClient

    async def register(self, **params: Any) -> httpx.Response:
        return await self.client.post(f"{self.endpoints.management}/models", params=params)

    async def versions(self) -> list[tuple[str, bool]]:
        r = await self.client.get(f"{self.endpoints.management}/models/m/all")
        return [(d["modelVersion"], d["isDefault"]) for d in r.json()]

    async def predict(self, body: str, version: str = "") -> httpx.Response:
        path = f"/predictions/m/{version}" if version else "/predictions/m"
        return await self.client.post(
            self.endpoints.inference + path, content=body, headers={"Content-Type": "text/plain"}
        )


@pytest.fixture
async def server(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Server]:
    store = tmp_path / "store"
    archive(store, "m1.mar", "1.0", VERSIONED_HANDLER)
    archive(store, "m2.mar", "2.0", VERSIONED_HANDLER, canaries=[canary("2.0")])
    archive(store, "m2bad.mar", "2.0", GARBLING_HANDLER, canaries=[canary("2.0")])
    archive(store, "m2broken.mar", "2.0", CRASH_AT_LOAD_HANDLER)
    archive(store, "m3.mar", "3.0", VERSIONED_HANDLER)
    archive(store, "m4.mar", "4.0", VERSIONED_HANDLER, canaries={"body": "not a list"})
    (store / "smoke3.json").write_text(json.dumps([canary("3.0")]))
    config = ServerConfig(
        inference_address=LOCAL,
        management_address=LOCAL,
        metrics_address=LOCAL,
        model_store=str(store),
        enable_model_api=True,
        disable_token_authorization=True,
        key_file=str(tmp_path / "key_file.json"),
        shutdown_grace=5.0,
        defaults={"restart": {"max_restarts": 1, "backoff_initial": 0.05, "backoff_max": 0.1}},
    )
    shutdown = trio.Event()
    endpoints = await nursery.start(partial(serve, config, shutdown=shutdown, handle_signals=False))
    async with httpx.AsyncClient(timeout=60) as client:
        server = Server(endpoints, client)
        assert (await server.register(url="m1.mar", initial_workers=1)).status_code == 200
        yield server
    shutdown.set()


@attrs.define
class Load:
    """Clients that send to the default version until told to stop."""

    server: Server
    sent: list[tuple[float, int, str]] = attrs.field(factory=list)  # (sent at, status, version)
    stop: trio.Event = attrs.field(factory=trio.Event)

    async def run(self, clients: int = 3) -> None:
        async with trio.open_nursery() as nursery:
            for n in range(clients):
                nursery.start_soon(self._client, n)

    async def _client(self, n: int) -> None:
        while not self.stop.is_set():
            sent_at = trio.current_time()
            r = await self.server.predict(f"client {n}")
            ok = r.status_code == 200 and r.json()["echo"] == f"client {n}"
            self.sent.append((sent_at, r.status_code if ok else -1, r.json().get("version", "")))

    async def until(self, predicate: Any) -> None:
        with trio.fail_after(20):
            while not predicate(self.sent):  # noqa: ASYNC110  (answers arrive from other tasks)
                await trio.sleep(0.02)

    def failures(self) -> list[tuple[float, int, str]]:
        return [s for s in self.sent if s[1] != 200]


async def test_an_update_under_load_switches_without_a_failed_request(
    server: Server, nursery: trio.Nursery
) -> None:
    load = Load(server)
    nursery.start_soon(load.run)
    await load.until(lambda sent: len(sent) >= 20)
    r = await server.register(url="m2.mar", set_default="true", retire_old="true")
    switched_at = trio.current_time()
    assert r.status_code == 200, r.text
    assert r.json() == {
        "status": 'Model "m" Version: 2.0 registered with 1 initial workers; '
        "1 canary passed; default version 2.0 (was 1.0); version 1.0 retired"
    }
    await load.until(lambda sent: sum(s[0] > switched_at for s in sent) >= 20)
    load.stop.set()
    assert load.failures() == []
    assert {version for *_, version in load.sent} == {"1.0", "2.0"}
    assert all(version == "2.0" for at, _, version in load.sent if at > switched_at)
    assert await server.versions() == [("2.0", True)]


async def test_failed_updates_under_load_are_rolled_back(
    server: Server, nursery: trio.Nursery
) -> None:
    load = Load(server)
    nursery.start_soon(load.run)
    await load.until(lambda sent: len(sent) >= 10)

    r = await server.register(url="m2bad.mar", set_default="true", retire_old="true")
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["type"] == "CanaryFailedException"
    assert body["message"] == (
        "Canary 1 of 1 (ping) failed on model m version 2.0: the answer differs from the "
        'expected JSON {"echo":"ping","version":"2.0"}; the default version stays 1.0; '
        "version 2.0 was unregistered (rolled back)"
    )
    assert body["canary"]["status"] == 200
    assert json.loads(body["canary"]["body"]) == {"echo": "garbage", "version": "2.0"}
    assert "answering garbage to 1 request(s) on purpose" in body["logTail"]

    r = await server.register(url="m2broken.mar", set_default="true")
    assert r.status_code == 500, r.text
    assert "Failed to start workers for model m version: 2.0" in r.json()["message"]
    assert any("corrupt (on purpose)" in line for line in r.json()["logTail"])

    await load.until(lambda sent: len(sent) >= 30)
    load.stop.set()
    assert load.failures() == []
    assert {version for *_, version in load.sent} == {"1.0"}
    assert await server.versions() == [("1.0", True)]


async def test_set_default_runs_the_canaries_it_is_given(server: Server) -> None:
    mgmt = server.endpoints.management
    r = await server.register(url="m3.mar", initial_workers=1)  # a plain TorchServe one
    assert r.json() == {"status": 'Model "m" Version: 3.0 registered with 1 initial workers'}

    wants_v1 = [canary("1.0")]
    r = await server.client.put(f"{mgmt}/models/m/3.0/set-default", json=wants_v1)
    assert r.status_code == 422
    assert r.json()["message"].endswith("; the default version stays 1.0")
    assert await server.versions() == [("1.0", True), ("3.0", False)]  # 3.0 is kept

    r = await server.client.put(f"{mgmt}/models/m/3.0/set-default", json=[{"nope": 1}])
    assert r.status_code == 400
    assert r.json()["message"] == "canaries: canary 1: unknown key(s) nope"

    r = await server.client.put(
        f"{mgmt}/models/m/3.0/set-default", params={"canaries": "smoke3.json", "retire_old": "1"}
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "status": 'Default version successfully updated for model "m" to "3.0"; '
        "1 canary passed; version 1.0 retired"
    }
    assert await server.versions() == [("3.0", True)]


async def test_a_registration_with_failing_canaries_is_rolled_back(server: Server) -> None:
    r = await server.client.post(
        f"{server.endpoints.management}/models",
        json={"url": "m3.mar", "initial_workers": 1, "canaries": [canary("1.0")]},
    )
    assert r.status_code == 422
    assert r.json()["message"].endswith(
        "the default version stays 1.0; version 3.0 was unregistered (rolled back)"
    )
    assert await server.versions() == [("1.0", True)]
    r = await server.register(url="m3.mar", set_default="true", synchronous="false")
    assert r.status_code == 400
    r = await server.register(url="m3.mar", canaries="../smoke3.json")
    assert r.status_code == 400
    r = await server.register(url="m4.mar")
    assert r.status_code == 400
    assert r.json()["type"] == "InvalidModelException"
    assert r.json()["message"] == (
        "model m version 4.0: canaries.json: canaries must be a JSON list of objects"
    )
    assert await server.versions() == [("1.0", True)]


async def test_unregistering_drains_the_version(server: Server, nursery: trio.Nursery) -> None:
    mgmt = server.endpoints.management
    await server.register(url="m3.mar", initial_workers=1)
    await server.client.put(f"{mgmt}/models/m/3.0/set-default")
    answers: dict[str, httpx.Response] = {}

    async def send(body: str) -> None:
        answers[body] = await server.predict(body, version="1.0")

    async def v1_is(predicate: Any) -> None:
        with trio.fail_after(10):
            while True:
                [desc] = (await server.client.get(f"{mgmt}/models/m/1.0")).json()
                if predicate(desc):
                    return
                await trio.sleep(0.02)

    nursery.start_soon(send, "sleep 1.5")
    await v1_is(lambda d: d["workers"][0]["state"] == "BUSY")
    nursery.start_soon(send, "queued")
    await v1_is(lambda d: d["jobQueueStatus"]["pendingRequests"] == 1)
    async with trio.open_nursery() as unregistering:
        unregistering.start_soon(server.client.delete, f"{mgmt}/models/m/1.0")
        await v1_is(lambda d: d["state"] == "STOPPING")
        late = await server.predict("too late", version="1.0")
        assert late.status_code == 503
        assert late.json()["message"] == "Model m/1.0 is stopping"
    assert answers["sleep 1.5"].status_code == 200  # in flight: finished
    assert answers["queued"].json() == {"echo": "queued", "version": "1.0"}  # queued: served
    assert await server.versions() == [("3.0", True)]
