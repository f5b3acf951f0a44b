"""One call must never freeze the server: bounded counts, sizes and waits (issue 11).

Every count, size and duration that a request, an archive, a TOML file or a
``config.properties`` gives is bounded by ``ModelConfig`` (``supervisor.limits``);
the workers of all models together by ``max_workers_total``. A synchronous
management call answers before hypercorn's ``read_timeout`` would drop it, and a
worker over its memory limit right after loading is never READY.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import attrs
import httpx
import pytest
import trio

from supervisor import limits
from supervisor.api.management import sync_reply_budget
from supervisor.config import ConfigError, ServerConfig, load_config, model_config
from supervisor.models.tsconfig import model_yaml_settings, server_settings
from supervisor.server import BaseURLs, serve
from tests.helpers import ECHO_HANDLER, FAST_RESTARTS, make_mar

LOCAL = "127.0.0.1:0"

SLOW_LOAD_HANDLER = """
import time

class SlowLoad:
    def initialize(self, context):
        time.sleep(float(context.model_yaml_config.get("load_seconds", 4)))

    def handle(self, batch, context):
        return [{"ok": True} for _ in batch]
"""

FAT_HANDLER = """
class Fat:
    def initialize(self, context):
        self.ballast = bytearray(8 * 1024 * 1024)  # a worker is well over 1 MiB anyway

    def handle(self, batch, context):
        return [{"ok": True} for _ in batch]
"""


# --- the bounds, from every source -------------------------------------------------

OVER_LIMIT = [
    ("workers", 100_000, "64 workers per model (max_workers_per_model)"),
    ("max_workers", 10**24, "64 workers per model (max_workers_per_model)"),
    ("batch_size", 1_000_000, f"the limit of {limits.MAX_BATCH_SIZE}"),
    ("job_queue_size", 10**12, f"the limit of {limits.MAX_JOB_QUEUE_SIZE}"),
    ("max_batch_delay", 1e9, f"the limit of {limits.MAX_BATCH_DELAY:g} seconds"),
    ("response_timeout", 1e12, f"the limit of {limits.MAX_DURATION:g} seconds"),
    ("startup_timeout", math.inf, "must be a finite number"),
    ("heartbeat_timeout", math.nan, "must be > 0.0: nan"),
    ("client_timeout", math.inf, "must be a finite number"),
    ("memory_limit_mb", 10**15, "MiB"),
    ("log_bytes", 10**12, f"the limit of {limits.MAX_LOG_BYTES}"),
]


@pytest.mark.parametrize(("key", "value", "message"), OVER_LIMIT)
def test_model_settings_beyond_their_limits_are_config_errors(key, value, message):
    with pytest.raises(ConfigError, match=key) as caught:
        model_config({"name": "m", "handler": "h", key: value})
    assert message in str(caught.value)


def test_the_limits_hold_for_toml_files(tmp_path):
    path = tmp_path / "server.toml"
    path.write_text('[defaults]\nworkers = 100000\n[[models]]\nname = "m"\nhandler = "h"\n')
    with pytest.raises(ConfigError, match="max_workers_per_model"):
        load_config(path)
    path.write_text("[server]\nmax_workers_total = 0\n")
    with pytest.raises(ConfigError, match="max_workers_total"):
        load_config(path)
    models = "".join(f'[[models]]\nname = "m{i}"\nhandler = "h"\nworkers = 40\n' for i in range(2))
    path.write_text(models)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        "server: the configured models, all together: workers=80 exceeds the limit of 64 "
        "workers on this server (max_workers_total)"
    )
    path.write_text(f"[server]\nmax_workers_total = 80\n{models}")
    assert load_config(path).max_workers_total == 80


def test_the_limits_hold_for_config_properties_and_model_config_yaml():
    models = '{"m": {"1.0": {"minWorkers": 100000}}}'
    server, defaults, tables = server_settings({"load_models": "m.mar", "models": models})
    with pytest.raises(ConfigError, match="max_workers_per_model"):
        load_config(server=server, defaults=defaults, models=tables)
    keys, _ = model_yaml_settings("minWorkers: 100000\nbatchSize: 3\n")
    with pytest.raises(ConfigError, match="max_workers_per_model"):
        model_config({"name": "m", "handler": "h"}, keys)


def test_max_workers_total_defaults_to_a_sane_cap():
    assert ServerConfig().max_workers_total == limits.DEFAULT_MAX_WORKERS_TOTAL == 64
    assert limits.check_total("min_worker", 4, 60, 64) is None
    assert limits.check_total("min_worker", 5, 60, 64) == (
        "min_worker=5 with 60 workers of other models exceeds the limit of 64 workers "
        "on this server (max_workers_total)"
    )


def test_a_synchronous_call_answers_before_hypercorn_drops_its_connection():
    """Hypercorn drops a connection silent for ``read_timeout``, request in flight or not."""
    for read_timeout in (1.0, 2.0, 30.0, 300.0):
        config = ServerConfig(read_timeout=read_timeout)
        assert 0 < sync_reply_budget(config) < max(1, round(read_timeout))


# --- real servers --------------------------------------------------------------------


@attrs.define
class Server:
    endpoints: BaseURLs
    client: httpx.AsyncClient

    async def register(self, **params: Any) -> httpx.Response:
        return await self.client.post(f"{self.endpoints.management}/models", params=params)

    async def scale(self, name: str, **params: Any) -> httpx.Response:
        return await self.client.put(f"{self.endpoints.management}/models/{name}", params=params)

    async def ready_workers(self, name: str) -> int:
        r = await self.client.get(f"{self.endpoints.management}/models/{name}")
        return sum(w["status"] == "READY" for w in r.json()[0]["workers"])

    async def state(self, name: str) -> str:
        r = await self.client.get(f"{self.endpoints.management}/models/{name}")
        return str(r.json()[0]["state"]) if r.status_code == 200 else str(r.status_code)


@pytest.fixture
async def start_server(nursery, tmp_path) -> AsyncIterator[Callable[..., Any]]:
    """Start a real server over a store of test archives; keyword arguments go to ServerConfig."""
    store = tmp_path / "store"
    make_mar(store, "echo", ECHO_HANDLER)
    make_mar(store, "echo2", ECHO_HANDLER, version="2.0")
    make_mar(store, "many", ECHO_HANDLER, extra={"model-config.yaml": "minWorkers: 100000\n"})
    make_mar(store, "slow", SLOW_LOAD_HANDLER, extra={"model-config.yaml": "load_seconds: 4\n"})
    make_mar(store, "fat", FAT_HANDLER, extra={"model-config.yaml": "memoryLimitMb: 1\n"})
    shutdowns: list[trio.Event] = []
    clients: list[httpx.AsyncClient] = []

    async def start(**settings: Any) -> Server:
        config = ServerConfig(
            inference_address=LOCAL,
            management_address=LOCAL,
            metrics_address=LOCAL,
            model_store=str(store),
            enable_model_api=True,
            disable_token_authorization=True,
            key_file=str(tmp_path / "key_file.json"),
            shutdown_grace=1.0,
            defaults={"restart": attrs.asdict(FAST_RESTARTS)},
            **settings,
        )
        shutdowns.append(trio.Event())
        run = partial(serve, config, shutdown=shutdowns[-1], handle_signals=False)
        endpoints = await nursery.start(run)
        clients.append(httpx.AsyncClient(timeout=60))
        return Server(endpoints, clients[-1])

    yield start
    for client in clients:
        await client.aclose()
    for shutdown in shutdowns:
        shutdown.set()


async def assert_alive(server: Server) -> None:
    """Every port still answers at once."""
    with trio.fail_after(5):
        assert (await server.client.get(f"{server.endpoints.inference}/ping")).status_code == 200
        r = await server.client.get(f"{server.endpoints.management}/models")
        assert r.status_code == 200


@pytest.mark.slow
async def test_an_archive_asking_for_100000_workers_is_refused_with_400(start_server):
    server = await start_server()
    with trio.fail_after(20):
        r = await server.register(url="many.mar", synchronous="false")
    assert r.status_code == 400
    assert "workers=100000 exceeds the limit of 64 workers per model" in r.json()["message"]
    assert "(max_workers_per_model)" in r.json()["message"]
    await assert_alive(server)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("params", "message"),
    [
        # a negative initial_workers is ignored, as in TorchServe (tests/test_ts_management.py)
        ({"initial_workers": "100000"}, "(max_workers_per_model)"),
        ({"batch_size": str(10**30)}, "batch_size=1000000000000000000000000000000 exceeds"),
        ({"response_timeout": "inf"}, "response_timeout must be a finite number"),
        ({"startup_timeout": "1e300"}, "exceeds the limit of 86400 seconds"),
        ({"max_batch_delay": "nan"}, "max_batch_delay"),
    ],
)
async def test_registering_beyond_the_limits_gets_400_naming_the_limit(
    start_server, params, message
):
    server = await start_server()
    with trio.fail_after(20):
        r = await server.register(url="echo.mar", synchronous="false", **params)
    assert r.status_code == 400, r.text
    assert message in r.json()["message"]
    assert await server.state("echo") == "404"
    await assert_alive(server)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"min_worker": "999999999999999999999999"}, "min_worker=999999999999999999999999 exceeds"),
        ({"min_worker": "-1"}, "min_worker=-1 must be 0 or more"),
        ({"min_worker": "1", "max_worker": "-5"}, "max_worker=-5 must be 0 or more"),
        ({"min_worker": "1", "max_worker": "100"}, "max_worker=100 exceeds the limit of 64"),
        ({"min_worker": "65"}, "(max_workers_per_model)"),
    ],
)
async def test_scaling_beyond_the_limits_gets_400_naming_the_limit(start_server, params, message):
    server = await start_server()
    assert (await server.register(url="echo.mar", initial_workers=0)).status_code == 200
    with trio.fail_after(20):
        r = await server.scale("echo", **params)
    assert r.status_code == 400, r.text
    assert message in r.json()["message"]
    [desc] = (await server.client.get(f"{server.endpoints.management}/models/echo")).json()
    assert (desc["minWorkers"], len(desc["workers"])) == (0, 0)  # nothing changed
    await assert_alive(server)


@pytest.mark.slow
async def test_a_non_numeric_worker_count_is_ignored_with_a_warning(start_server, caplog):
    server = await start_server()
    assert (await server.register(url="echo.mar", initial_workers=0)).status_code == 200
    r = await server.scale("echo", min_worker="abc", synchronous="true")
    assert r.status_code == 200  # min_worker takes its default, 1, as in TorchServe
    assert r.json() == {"status": "Workers scaled to 1 for model: echo"}
    assert "ignoring min_worker='abc'" in caplog.text


@pytest.mark.slow
async def test_the_workers_of_all_models_are_capped_by_max_workers_total(start_server):
    server = await start_server(max_workers_total=2)
    assert (await server.register(url="echo.mar", initial_workers=1)).status_code == 200
    r = await server.register(url="echo2.mar", initial_workers=2)
    assert r.status_code == 400
    assert r.json()["message"] == (
        "model echo2: workers=2 with 1 worker of other models exceeds the limit of 2 workers "
        "on this server (max_workers_total)"
    )
    r = await server.scale("echo", min_worker=3)
    assert r.status_code == 400
    assert r.json()["message"] == (
        "Model echo/1.0: min_worker=3 exceeds the limit of 2 workers on this server "
        "(max_workers_total)"
    )
    assert (await server.scale("echo", min_worker=2, synchronous="true")).status_code == 200


@pytest.mark.slow
async def test_a_synchronous_register_slower_than_read_timeout_answers_202(start_server):
    """Workers slower than hypercorn's read_timeout used to get the connection dropped."""
    server = await start_server(read_timeout=2.0)
    with trio.fail_after(10):
        r = await server.register(url="slow.mar", initial_workers=1, startup_timeout=30)
    assert r.status_code == 202, r.text
    assert r.headers["Location"] == "/models/slow/1.0"
    assert "poll GET /models/slow/1.0" in r.json()["status"]
    assert await server.state("slow") == "LOADING"
    await assert_alive(server)
    with trio.fail_after(30):
        while await server.state("slow") != "READY":  # noqa: ASYNC110 (another process)
            await trio.sleep(0.1)  # the registration goes on after its 202
    with trio.fail_after(10):
        r = await server.scale("slow", min_worker=2, synchronous="true")
    assert r.status_code == 202
    assert r.headers["Location"] == "/models/slow"


@pytest.mark.slow
async def test_a_worker_slower_than_startup_timeout_gets_a_clear_error(start_server):
    server = await start_server(read_timeout=20.0)
    with trio.fail_after(15):
        r = await server.register(url="slow.mar", initial_workers=1, startup_timeout=0.5)
    assert r.status_code == 500
    assert "no READY within startup_timeout (0.5 s)" in r.json()["message"]
    assert await server.state("slow") == "404"  # rolled back


@pytest.mark.slow
async def test_a_worker_over_its_memory_limit_at_start_is_never_ready(start_server):
    server = await start_server()
    with trio.fail_after(20):
        r = await server.register(url="fat.mar", initial_workers=1)
    assert r.status_code == 500, r.text
    assert "memory limit exceeded" in r.json()["message"]
    assert "(memory_limit_mb)" in r.json()["message"]
    assert await server.state("fat") == "404"  # rolled back, never READY
    r = await server.register(url="fat.mar", initial_workers=1, synchronous="false")
    assert r.status_code == 202
    states = {await server.state("fat")}
    while "FAILED" not in states:
        with trio.fail_after(20):
            states.add(await server.state("fat"))
            await trio.sleep(0.05)
    assert states <= {"LOADING", "FAILED"}  # READY never shows, not even briefly


@pytest.mark.slow
async def test_inference_keeps_answering_while_many_workers_start(start_server):
    server = await start_server()
    assert (await server.register(url="echo.mar", initial_workers=1)).status_code == 200
    assert (await server.register(url="slow.mar", initial_workers=0)).status_code == 200
    r = await server.scale("slow", min_worker=12)
    assert r.status_code == 202
    predict = f"{server.endpoints.inference}/predictions/echo"
    slowest, predicted = 0.0, 0
    while await server.ready_workers("slow") < 12:
        start = trio.current_time()
        with trio.fail_after(3):
            assert (await server.client.post(predict, content=b"hi")).status_code == 200
            assert (await server.client.get(f"{server.endpoints.inference}/ping")).status_code
        slowest = max(slowest, trio.current_time() - start)
        predicted += 1
    assert predicted > 10  # answered all along, while twelve workers loaded
    assert slowest < 3


def test_exported_members():
    assert set(limits.__all__) == {name for name in dir(limits) if name.isupper()} | {
        "bounded",
        "check_total",
        "check_workers",
    }
