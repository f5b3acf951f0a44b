"""Open Inference Protocol v2 health and metadata over REST (``/v2/...``).

The renderers are checked on snapshots; the routes on a real server (tokens on,
both HTTP front ends) with a READY, a FAILED and a still-loading model.
"""

from __future__ import annotations

from functools import partial

import httpx
import pytest
import trio

from supervisor import ModelConfig
from supervisor.api import oip
from supervisor.server import serve
from supervisor.supervision.stats import ModelStats
from tests.helpers import CRASH_AT_LOAD_HANDLER, ECHO_HANDLER, FAST_RESTARTS
from tests.test_security import bearer, read_keys, secure_config

SLOW_LOAD_HANDLER = """
import time

class Slow:
    def initialize(self, context):
        time.sleep(60)

    def handle(self, batch, context):
        return batch
"""


def snapshot(name: str, state: str, version: str = "1.0", default: bool = True) -> ModelStats:
    config = ModelConfig(name=name, handler="h", version=version)
    return ModelStats(config, state, default, None, (), (), 0, 0, 10, 0, 0.0)


# --- the pure renderers --------------------------------------------------------------------------


def test_server_is_ready_only_when_no_default_version_loads_or_failed():
    assert oip.server_ready([]) == (200, {"ready": True})
    assert oip.server_ready([snapshot("a", "READY")]) == (200, {"ready": True})
    assert oip.server_ready([snapshot("a", "READY"), snapshot("b", "LOADING")])[0] == 503
    assert oip.server_ready([snapshot("a", "FAILED")]) == (503, {"ready": False})
    assert oip.server_ready([snapshot("a", "FAILED", "2.0", default=False)])[0] == 200


def test_model_metadata_and_readiness_pick_the_default_or_named_version():
    stats = [snapshot("a", "READY"), snapshot("a", "LOADING", "2.0", default=False)]
    status, body = oip.model_metadata(stats, "a", None)
    assert status == 200
    assert body == {
        "name": "a",
        "versions": ["1.0", "2.0"],
        "platform": "pytorch_torchserve",
        "inputs": [],
        "outputs": [],
    }
    assert oip.model_ready(stats, "a", None) == (200, {"name": "a", "ready": True})
    assert oip.model_ready(stats, "a", "2.0") == (503, {"name": "a", "ready": False})
    assert oip.model_ready(stats, "b", None) == (404, {"error": "Model not found: b"})
    status, body = oip.model_metadata(stats, "a", "3.0")
    assert status == 404
    assert "3.0" in body["error"]


# --- a real server -------------------------------------------------------------------------------


async def wait_state(client: httpx.AsyncClient, url: str, keys: dict[str, str], state: str) -> None:
    with trio.fail_after(30):
        while True:
            r = await client.get(url, headers=bearer(keys["management"]))
            if r.json()[0]["state"] == state:
                return
            await trio.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("lean_http", [True, False])
async def test_oip_routes_on_a_real_server(nursery, tmp_path, handler_dir, lean_http):
    models = [
        ModelConfig(
            name=name,
            handler=module,
            model_dir=str(handler_dir(module, source)),
            startup_timeout=120.0,
            restart=FAST_RESTARTS,
        )
        for name, module, source in (
            ("echo", "echo_handler", ECHO_HANDLER),
            ("broken", "broken_handler", CRASH_AT_LOAD_HANDLER),
            ("slow", "slow_handler", SLOW_LOAD_HANDLER),
        )
    ]
    config = secure_config(tmp_path, *models, lean_http=lean_http)
    shutdown = trio.Event()
    urls = await nursery.start(partial(serve, config, shutdown=shutdown, handle_signals=False))
    keys = read_keys(config)
    async with httpx.AsyncClient(timeout=30) as client:
        for name, state in (("echo", "READY"), ("broken", "FAILED")):
            await wait_state(client, f"{urls.management}/models/{name}", keys, state)
        await _check_open_probes(client, urls.inference)
        await _check_metadata(client, urls.inference, bearer(keys["inference"]))
    shutdown.set()


async def _check_open_probes(client: httpx.AsyncClient, base: str) -> None:
    live = await client.get(f"{base}/v2/health/live")
    assert (live.status_code, live.json()) == (200, {"live": True})
    ready = await client.get(f"{base}/v2/health/ready")  # broken FAILED, slow LOADING
    assert (ready.status_code, ready.json()) == (503, {"ready": False})
    assert ready.headers["content-type"] == "application/json"


async def _check_metadata(client: httpx.AsyncClient, base: str, auth: dict[str, str]) -> None:
    for path in ("/v2", "/v2/models/echo", "/v2/models/echo/ready"):
        r = await client.get(f"{base}{path}")
        assert r.status_code == 401, path
    server = await client.get(f"{base}/v2", headers=auth)
    assert server.status_code == 200
    assert server.json()["name"] == "trio-supervisor"
    assert server.json()["extensions"] == []
    for path in ("/v2/models/echo", "/v2/models/echo/versions/1.0"):
        r = await client.get(f"{base}{path}", headers=auth)
        assert r.status_code == 200, path
        assert r.json()["versions"] == ["1.0"]
        assert r.json()["platform"] == "pytorch_torchserve"
    expected = {"echo": 200, "broken": 503, "slow": 503}
    for name, status in expected.items():
        for path in (f"/v2/models/{name}/ready", f"/v2/models/{name}/versions/1.0/ready"):
            r = await client.get(f"{base}{path}", headers=auth)
            assert r.status_code == status, path
            assert r.json() == {"name": name, "ready": status == 200}
    for path in ("/v2/models/nope", "/v2/models/nope/ready", "/v2/models/echo/versions/9/ready"):
        r = await client.get(f"{base}{path}", headers=auth)
        assert r.status_code == 404, path
        assert r.headers["content-type"] == "application/json"
        assert set(r.json()) == {"error"}
