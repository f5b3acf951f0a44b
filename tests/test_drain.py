"""Probes and drain for orchestrators: readiness modes, SIGTERM's pre-stop delay, Connection: close.

The readiness renderer is checked on snapshots; the modes on real in-process
servers; SIGTERM, SIGINT and a second signal on ``python -m supervisor serve``
as a child process, with real clients on 127.0.0.1.
"""

from __future__ import annotations

import signal
from functools import partial

import httpx
import pytest
import trio

from supervisor import ModelConfig
from supervisor.api import oip
from supervisor.config import ServerConfig
from supervisor.server import serve
from tests.helpers import ECHO_HANDLER, eventually
from tests.serveproc import LISTENING, ServeProcess, local_ports
from tests.test_oip_rest import snapshot, wait_state
from tests.test_security import echo_model, read_keys, secure_config

# --- the pure renderer ---------------------------------------------------------------------------


def test_all_needs_every_model_ready_and_none_missing():
    ready, loading = snapshot("a", "READY"), snapshot("b", "LOADING")
    assert oip.server_ready([ready]) == (200, {"ready": True})
    assert oip.server_ready([ready, loading])[0] == 503
    assert oip.server_ready([ready], missing=["c"]) == (503, {"ready": False})
    assert oip.server_ready([ready, snapshot("c", "READY")], missing=["c"])[0] == 200


def test_any_needs_one_ready_model():
    ready, failed = snapshot("a", "READY"), snapshot("b", "FAILED")
    assert oip.server_ready([ready, failed], mode="any") == (200, {"ready": True})
    assert oip.server_ready([ready], mode="any", missing=["c"])[0] == 200
    assert oip.server_ready([failed, snapshot("c", "LOADING")], mode="any")[0] == 503
    assert oip.server_ready([], mode="any", missing=["c"])[0] == 503
    assert oip.server_ready([], mode="any")[0] == 200  # nothing configured, nothing to wait for


@pytest.mark.parametrize("mode", ["all", "any"])
def test_a_stopping_server_is_never_ready(mode):
    assert oip.server_ready([snapshot("a", "READY")], mode=mode, stopping=True) == (
        503,
        {"ready": False},
    )


def test_the_defaults_make_a_plain_sigterm_safe_behind_a_proxy():
    config = ServerConfig()
    assert config.pre_stop_delay == 5.0
    assert config.readiness == "all"
    with pytest.raises(ValueError, match="readiness"):
        ServerConfig(readiness="some")
    with pytest.raises(ValueError, match="pre_stop_delay"):
        ServerConfig(pre_stop_delay=-1)


# --- readiness modes on real servers -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "status"), [("all", 503), ("any", 200)])
async def test_a_start_up_model_that_never_loaded_counts_against_all_only(
    nursery, tmp_path, handler_dir, mode, status
):
    echo = echo_model(handler_dir)
    missing = ModelConfig(name="gone", url="gone.mar")  # not in the model store: never registered
    config = secure_config(tmp_path, echo, missing, model_store=str(tmp_path), readiness=mode)
    shutdown = trio.Event()
    urls = await nursery.start(partial(serve, config, shutdown=shutdown, handle_signals=False))
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        await wait_state(client, f"{urls.management}/models/echo", read_keys(config), "READY")
        ready = await client.get(f"{urls.inference}/v2/health/ready")
        live = await client.get(f"{urls.inference}/v2/health/live")
    assert (ready.status_code, ready.json()) == (status, {"ready": status == 200})
    assert live.status_code == 200  # liveness never depends on a model
    shutdown.set()


@pytest.mark.slow
async def test_an_embedder_s_shutdown_skips_the_pre_stop_delay(nursery, tmp_path, handler_dir):
    echo = echo_model(handler_dir)
    config = secure_config(tmp_path, echo, pre_stop_delay=600.0)
    shutdown, stopped = trio.Event(), trio.Event()

    async def run(task_status: trio.TaskStatus[object]) -> None:
        await serve(config, shutdown=shutdown, handle_signals=False, task_status=task_status)
        stopped.set()

    await nursery.start(run)
    shutdown.set()
    with trio.fail_after(30):  # far less than the 600 s delay
        await stopped.wait()


# --- SIGTERM, SIGINT and a second signal on a real process ---------------------------------------


async def start_echo(nursery: trio.Nursery, handler_dir, *flags: str) -> ServeProcess:
    model_dir = handler_dir("echo_handler", ECHO_HANDLER)
    server = ServeProcess(
        model_dir,
        *local_ports(),
        "--models",
        f"echo=echo_handler@{model_dir}",
        "--ncs",
        "--no-grpc",
        *flags,
    )
    await nursery.start(server.run)
    await eventually(lambda: server.has("ready (pid") and server.find(LISTENING) is not None, 60)
    return server


async def wait_not_ready(client: httpx.AsyncClient, inference: str) -> httpx.Response:
    with trio.fail_after(10):
        while True:
            r = await client.get(f"{inference}/v2/health/ready")
            if r.status_code != 200:
                return r
            await trio.sleep(0.02)


@pytest.mark.slow
async def test_sigterm_turns_readiness_503_at_once_and_serves_through_the_delay(
    nursery, handler_dir
):
    delay = 8.0
    server = await start_echo(nursery, handler_dir, "--pre-stop-delay", str(delay))
    inference, management, metrics = server.find(LISTENING).groups()
    auth = server.headers("inference")
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        assert (await client.get(f"{inference}/v2/health/ready")).status_code == 200
        before = await client.post(f"{inference}/predictions/echo", content=b"x", headers=auth)
        assert before.headers.get("connection") != "close"  # kept alive while not draining
        assert server.process is not None
        signalled = trio.current_time()
        server.process.send_signal(signal.SIGTERM)
        ready = await wait_not_ready(client, inference)
        answers = [
            await client.post(f"{inference}/predictions/echo", content=b"late", headers=auth),
            await client.get(f"{inference}/v2/health/live"),
            await client.get(f"{management}/models", headers=server.headers("management")),
            await client.get(f"{metrics}/metrics"),
        ]
        served_within = trio.current_time() - signalled
    assert (ready.status_code, ready.json()) == (503, {"ready": False})
    assert ready.headers["connection"] == "close"
    assert [r.status_code for r in answers] == [200, 200, 200, 200]
    assert answers[0].json()["echo"] == "late"
    assert [r.headers.get("connection") for r in answers] == ["close"] * 4
    assert served_within < delay  # all of it happened during the pre-stop delay
    with trio.fail_after(60):
        assert await server.process.wait() == 0
    assert trio.current_time() - signalled >= delay
    assert server.has("SIGTERM received: not ready; still serving for 8 s")


@pytest.mark.slow
@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
async def test_a_second_signal_during_the_delay_stops_at_once(nursery, handler_dir, second):
    server = await start_echo(nursery, handler_dir, "--pre-stop-delay", "600")
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    await eventually(lambda: server.has("SIGTERM received: not ready"))
    server.process.send_signal(second)
    with trio.fail_after(30):  # far less than the 600 s delay
        await server.process.wait()
    assert server.has(f"second {second.name}: stopping now")


@pytest.mark.slow
async def test_sigint_skips_the_pre_stop_delay(nursery, handler_dir):
    server = await start_echo(nursery, handler_dir, "--pre-stop-delay", "600")
    assert server.process is not None
    server.process.send_signal(signal.SIGINT)
    with trio.fail_after(30):
        assert await server.process.wait() == 0
    assert server.has("SIGINT received: graceful shutdown")


@pytest.mark.slow
async def test_the_drain_settings_come_from_the_environment(nursery, handler_dir, monkeypatch):
    monkeypatch.setenv("SUPERVISOR_PRE_STOP_DELAY", "600")
    monkeypatch.setenv("SUPERVISOR_READINESS", "any")
    server = await start_echo(nursery, handler_dir)
    inference = server.find(LISTENING).group(1)
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    await eventually(lambda: server.has("still serving for 600 s"))
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        r = await client.post(
            f"{inference}/predictions/echo", content=b"x", headers=server.headers("inference")
        )
    assert (r.status_code, r.headers["connection"]) == (200, "close")
    server.process.send_signal(signal.SIGTERM)
    with trio.fail_after(30):
        await server.process.wait()
