"""Deadlines and departed clients: a request nobody waits for never reaches a worker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from supervisor import ModelConfig, ServerConfig
from supervisor.server import BaseURLs, serve

pytestmark = pytest.mark.slow

RECORDING_HANDLER = """
import time
from pathlib import Path

class Recorder:
    def initialize(self, context):
        self.log = Path(context.system_properties["model_dir"]) / "seen.txt"

    def handle(self, batch, context):
        out = []
        for item in batch:
            body = item["body"].decode() if isinstance(item["body"], bytes) else str(item["body"])
            with self.log.open("a") as f:
                f.write(body + "\\n")
            if body.startswith("sleep "):
                time.sleep(float(body.split()[1]))
            out.append(body)
        return out
"""


@pytest.fixture
async def server(nursery, handler_dir, request) -> AsyncIterator[tuple[BaseURLs, Path]]:
    model_dir = handler_dir("recorder", RECORDING_HANDLER)
    settings = getattr(request, "param", {})
    model = ModelConfig(name="rec", handler="recorder", model_dir=str(model_dir), **settings)
    config = ServerConfig(
        inference_address="127.0.0.1:0",
        management_address="127.0.0.1:0",
        metrics_address="127.0.0.1:0",
        models=(model,),
        disable_token_authorization=True,
        shutdown_grace=2.0,
    )
    shutdown = trio.Event()
    endpoints = await nursery.start(partial(serve, config, shutdown=shutdown, handle_signals=False))
    async with httpx.AsyncClient(timeout=30) as client:

        async def warm() -> bool:
            url = f"{endpoints.inference}/predictions/rec"
            return (await client.post(url, content=b"warm")).status_code == 200

        await until(warm, within=30)
    yield endpoints, model_dir / "seen.txt"
    shutdown.set()


async def seen(path: Path) -> list[str]:
    return (await trio.Path(path).read_text()).split()


async def until(check: Callable[[], Awaitable[bool]], within: float = 10) -> None:
    """Poll ``check`` (the state lives in a worker process or the server)."""
    with trio.fail_after(within):
        while not await check():  # noqa: ASYNC110
            await trio.sleep(0.02)


async def has(log: Path, word: str, times: int = 1) -> bool:
    return (await seen(log)).count(word) >= times


async def has_queued(endpoints: BaseURLs, client: httpx.AsyncClient) -> bool:
    [desc] = (await client.get(f"{endpoints.management}/models/rec")).json()
    return int(desc["jobQueueStatus"]["pendingRequests"]) == 1


async def test_a_request_past_its_deadline_gets_504_and_never_reaches_the_worker(server):
    endpoints, log = server
    url = f"{endpoints.inference}/predictions/rec"
    async with httpx.AsyncClient(timeout=30) as client, trio.open_nursery() as nursery:
        nursery.start_soon(partial(client.post, url, content=b"sleep 1"))
        await until(lambda: has(log, "sleep"))
        started = trio.current_time()
        r = await client.post(url, content=b"late", headers={"X-Client-Timeout-Ms": "200"})
        waited = trio.current_time() - started
        assert r.status_code == 504
        assert r.json()["type"] == "RequestTimeoutException"
        assert waited < 0.9  # answered at its deadline, not when the worker got free
    async with httpx.AsyncClient(timeout=30) as client:
        assert (await client.post(url, content=b"after")).status_code == 200
    assert "late" not in await seen(log)


async def test_a_bad_deadline_header_is_a_400(server):
    endpoints, _ = server
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.post(
            f"{endpoints.inference}/predictions/rec",
            content=b"x",
            headers={"X-Client-Timeout-Ms": "soon"},
        )
    assert r.status_code == 400


@pytest.mark.parametrize("server", [{"client_timeout": 0.2}], indirect=True)
async def test_the_model_default_deadline_applies(server):
    endpoints, log = server
    url = f"{endpoints.inference}/predictions/rec"
    async with httpx.AsyncClient(timeout=30) as client, trio.open_nursery() as nursery:
        nursery.start_soon(partial(client.post, url, content=b"sleep 0.1"))  # under the limit
        await until(lambda: has(log, "sleep"))
        r = await client.post(url, content=b"queued")  # waits 0.1 s behind it: fine
        assert r.status_code == 200
        nursery.start_soon(partial(client.post, url, content=b"sleep 1"))
        await until(lambda: has(log, "sleep", times=2))
        r = await client.post(url, content=b"too-late")
        assert r.status_code == 504
    assert "too-late" not in await seen(log)


async def test_a_client_that_leaves_cancels_its_queued_request(server):
    endpoints, log = server
    url = f"{endpoints.inference}/predictions/rec"
    host, port = endpoints.inference.removeprefix("http://").split(":")
    async with httpx.AsyncClient(timeout=30) as client, trio.open_nursery() as nursery:
        nursery.start_soon(partial(client.post, url, content=b"sleep 1"))
        await until(lambda: has(log, "sleep"))
        stream = await trio.open_tcp_stream(host, int(port))
        body = b"abandoned"
        await stream.send_all(
            b"POST /predictions/rec HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await until(lambda: has_queued(endpoints, client))  # queued behind the sleeping one
        await stream.aclose()  # the client goes away
    async with httpx.AsyncClient(timeout=30) as client:
        assert (await client.post(url, content=b"after")).status_code == 200
    assert "abandoned" not in await seen(log)
