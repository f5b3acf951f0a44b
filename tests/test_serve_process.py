"""`python -m supervisor serve` as a real child process: signals, orphans, start-up."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
import trio

import supervisor
from tests.helpers import ECHO_HANDLER, eventually, gone, make_mar
from tests.serveproc import LISTENING, ServeProcess, local_ports

pytestmark = pytest.mark.slow

GRANDCHILD_HANDLER = """
import subprocess

class WithGrandchild:
    def initialize(self, context):
        self.child = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 600"])

    def handle(self, batch, context):
        return [self.child.pid for _ in batch]
"""


async def test_sigterm_under_load_answers_every_request_and_exits_0(nursery, handler_dir):
    model_dir = handler_dir("echo_handler", ECHO_HANDLER)
    server = ServeProcess(
        model_dir, *local_ports(), "--models", f"echo=echo_handler@{model_dir}", "--workers", "2",
    )  # fmt: skip
    await nursery.start(server.run)
    await eventually(lambda: server.has("ready (pid") and server.find(LISTENING) is not None)
    await eventually(lambda: len(server.worker_pids()) == 2)
    inference, management = server.find(LISTENING).group(1, 2)
    workers = server.worker_pids()
    infer_auth, manage_auth = server.headers("inference"), server.headers("management")
    outcomes: list[int] = []

    async def call(client: httpx.AsyncClient) -> None:
        r = await client.post(
            f"{inference}/predictions/echo",
            content=b"sleep 0.1",
            headers={"Content-Type": "text/plain", **infer_auth},
        )
        outcomes.append(r.status_code)

    async def all_accepted(client: httpx.AsyncClient) -> bool:
        """Every request is answered, on a worker, or queued: the server has them all."""
        [desc] = (await client.get(f"{management}/models/echo", headers=manage_auth)).json()
        busy = sum(w["state"] == "BUSY" for w in desc["workers"])
        return len(outcomes) + busy + desc["jobQueueStatus"]["pendingRequests"] == 24

    async with httpx.AsyncClient(timeout=30) as client, trio.open_nursery() as load:
        for _ in range(24):
            load.start_soon(call, client)
        with trio.fail_after(15):
            while not await all_accepted(client):  # noqa: ASYNC110 - state of another process
                await trio.sleep(0.01)
        answered_before = len(outcomes)
        server.process.send_signal(signal.SIGTERM)
    with trio.fail_after(20):
        code = await server.process.wait()
    assert code == 0
    assert server.has("SIGTERM received")
    assert answered_before < 20  # most requests were still queued or running at SIGTERM
    assert outcomes == [200] * 24
    await eventually(lambda: all(gone(pid) for pid in workers), within=5)


async def test_sigkill_of_the_supervisor_takes_workers_and_grandchildren(nursery, handler_dir):
    model_dir = handler_dir("gc_handler", GRANDCHILD_HANDLER)
    server = ServeProcess(model_dir, *local_ports(), "--models", f"gc=gc_handler@{model_dir}")
    await nursery.start(server.run)
    await eventually(lambda: server.has("ready (pid") and server.find(LISTENING) is not None)
    inference = server.find(LISTENING).group(1)
    async with httpx.AsyncClient(timeout=30) as client:
        grandchild = (
            await client.post(
                f"{inference}/predictions/gc", content=b"x", headers=server.headers("inference")
            )
        ).json()
    [worker] = server.worker_pids()
    assert psutil.pid_exists(grandchild)
    server.process.kill()
    await server.process.wait()
    await eventually(lambda: gone(worker) and gone(grandchild), within=2.0)


async def test_default_serve_logs_a_curl_line_that_works(nursery, tmp_path):
    server = ServeProcess(tmp_path, *local_ports())
    await nursery.start(server.run)
    await eventually(lambda: server.has("curl -X POST"), within=30)
    key_line = next(line for line in server.lines if "KEY=$(" in line)
    line = next(line for line in server.lines if "curl -X POST" in line)
    command = key_line[key_line.index("KEY=") :] + "; " + line[line.index("curl") :]
    result = await trio.run_process(["sh", "-c", command + " -s"], capture_stdout=True)
    assert b'"label": "setosa"' in result.stdout
    maps = await trio.Path(f"/proc/{server.process.pid}/maps").read_text()
    assert "libtorch" not in maps  # the supervisor process never loads torch
    assert "numpy" not in maps  # nor numpy, which the workers' torch imports
    assert 'Authorization: Bearer $KEY"' in command  # tokens are on by default
    key_file = tmp_path / "key_file.json"
    assert key_file.stat().st_mode & 0o777 == 0o600
    keys = json.loads(key_file.read_text())
    log = "\n".join(server.lines)
    assert keys["inference"]["key"] not in log  # no secret in the log
    assert keys["management"]["key"] not in log
    no_token = line[line.index("curl") :].replace('-H "Authorization: Bearer $KEY" ', "")
    refused = await trio.run_process(["sh", "-c", no_token + " -s"], capture_stdout=True)
    assert b'"code": 401' in refused.stdout
    server.process.send_signal(signal.SIGINT)
    with trio.fail_after(20):
        assert await server.process.wait() == 0
    assert not key_file.exists()  # removed at shutdown


def test_supervisor_modules_never_import_torch():
    code = (
        "import sys, supervisor, supervisor.cli, supervisor.server, supervisor.__main__;"
        "bad = [m for m in ('torch', 'numpy') if m in sys.modules];"
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_handlers_package_never_imports_the_supervisor_side():
    code = (
        "import sys, handlers, handlers.runtime, handlers.protocol, handlers.base;"
        "bad = [m for m in ('supervisor', 'trio', 'quart', 'hypercorn', 'torch')"
        "       if m in sys.modules];"
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_foreign_supervisor_package_is_refused_with_a_clear_message(tmp_path):
    fake = tmp_path / "supervisor"
    fake.mkdir()
    (fake / "__init__.py").write_text("# supervisord's package\n")
    main = Path(supervisor.__file__).parent / "__main__.py"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, str(main), "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 3
    assert "supervisord" in result.stderr
    assert str(fake / "__init__.py") in result.stderr


def test_bad_flags_exit_2_with_a_message():
    result = subprocess.run(
        [sys.executable, "-m", "supervisor", "serve", "--batch-size", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "batch_size" in result.stderr


def test_help_explains_the_flags():
    result = subprocess.run(
        [sys.executable, "-m", "supervisor", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for flag in ("--config", "--model-store", "--models", "--workers", "--max-restarts"):
        assert flag in result.stdout


async def test_a_torchserve_config_properties_file_runs_as_is(nursery, tmp_path):
    store = tmp_path / "model-store"
    make_mar(store, "echo", ECHO_HANDLER)
    (tmp_path / "config.properties").write_text(
        "# a TorchServe configuration, unchanged\n"
        "inference_address=http://127.0.0.1:0\n"
        "management_address=http://127.0.0.1:0\n"
        "metrics_address=http://127.0.0.1:0\n"
        f"model_store={store}\n"
        "load_models=echo.mar\n"
        "default_workers_per_model=2\n"
        "number_of_netty_threads=4\n"
        'models={"echo": {"1.0": {"defaultVersion": true, "marName": "echo.mar",\\\n'
        '                          "batchSize": 2}}}\n'
    )
    server = ServeProcess(tmp_path, "--ts-config", str(tmp_path / "config.properties"))
    await nursery.start(server.run)
    await eventually(lambda: server.has("ready (pid") and server.find(LISTENING) is not None)
    inference, management = server.find(LISTENING).group(1, 2)
    async with httpx.AsyncClient(timeout=30) as client:
        [desc] = (
            await client.get(f"{management}/models/echo", headers=server.headers("management"))
        ).json()
        r = await client.post(
            f"{inference}/predictions/echo",
            content=b"hello",
            headers={"Content-Type": "text/plain", **server.headers("inference")},
        )
    assert (desc["minWorkers"], desc["batchSize"], desc["modelUrl"]) == (2, 2, "echo.mar")
    assert r.json()["echo"] == "hello"
    assert server.has("number_of_netty_threads")  # said to be ignored, not an error
    server.process.send_signal(signal.SIGTERM)
    with trio.fail_after(20):
        assert await server.process.wait() == 0


def test_an_address_in_use_is_a_clear_error_not_a_traceback(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        result = subprocess.run(
            [sys.executable, "-m", "supervisor", "serve", f"--inference-address={address}"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"error: cannot listen on {address}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr
