"""What a TorchServe user found by hand (issue 13): forms, mixed batches, missing dirs, NumPy.

Everything runs for real: a server in this process with worker subprocesses,
curl and httpx as its clients, ``python -m supervisor serve`` and
``python -m handlers`` as child processes. The README's doubler is taken from
README.md itself, so the example a user copies is the one tested.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from handlers.protocol import Decoder, Kind, Message, encode
from supervisor import ModelConfig, ServerConfig, open_supervisor
from supervisor.errors import InvalidModel
from supervisor.server import BaseURLs, serve
from tests.helpers import eventually
from tests.serveproc import ServeProcess, local_ports

README = Path(__file__).resolve().parents[1] / "README.md"
LOCAL = "127.0.0.1:0"
needs_curl = pytest.mark.skipif(
    shutil.which("curl") is None, reason="curl is not installed (apt-get install curl)"
)

PROBE = """
def handle(batch, context):
    if batch is None:
        return None
    return [{name: [type(v).__name__, shown(v)] for name, v in row.items()} for row in batch]


def shown(value):
    return value.decode() if isinstance(value, (bytes, bytearray)) else value
"""

TWICE = """
import torch


class Twice(torch.nn.Module):
    def forward(self, x):
        return x * 2
"""

COUNTED = """
import os
import time

from {module} import {name} as Handler


class Counted(Handler):
    def handle(self, batch, context):
        if batch[0].get("body") == "gate":  # hold the worker until the test opens the gate
            open("taken", "w").close()
            while not os.path.exists("open"):
                time.sleep(0.01)
            return ["through"]
        answers = super().handle(batch, context)
        for idx in range(len(batch)):
            context.set_response_header(idx, "X-Batch-Size", str(len(batch)))
        return answers
"""


def readme_doubler() -> str:
    """The doubler handler exactly as README.md shows it."""
    found = re.search(
        r"```python\n(# models/doubler/doubler\.py\n.*?)```", README.read_text(), re.S
    )
    assert found is not None, "README.md no longer has the doubler example"
    return found.group(1)


def write_model(directory: Path, files: dict[str, str]) -> str:
    for name, text in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)
    return str(directory)


def models(home: Path) -> tuple[ModelConfig, ...]:
    """probe (shows what the handler gets), the README's doubler and the built-in
    tensor_handler (both in batches of 3), and a model whose directory is missing."""
    manifest = {"runtime": "python", "model": {"modelName": "tensors", "modelFile": "twice.py"}}
    tensor_files = {
        "twice.py": TWICE,
        "counted.py": COUNTED.format(
            module="handlers.builtin.tensor_handler", name="TensorHandler"
        ),
        "MAR-INF/MANIFEST.json": json.dumps(manifest),
    }
    doubler_files = {
        "doubler.py": readme_doubler(),
        "counted.py": COUNTED.format(module="doubler", name="Doubler"),
    }
    batched = {"handler": "counted:Counted", "batch_size": 3, "max_batch_delay": 30.0}
    return (
        ModelConfig(
            name="probe", handler="probe", model_dir=write_model(home / "p", {"probe.py": PROBE})
        ),
        ModelConfig(name="doubler", model_dir=write_model(home / "d", doubler_files), **batched),
        ModelConfig(name="tensors", model_dir=write_model(home / "t", tensor_files), **batched),
        ModelConfig(name="ghost", handler="doubler", model_dir=str(home / "nowhere")),
    )


@pytest.fixture
async def server(nursery, tmp_path) -> AsyncIterator[tuple[BaseURLs, httpx.AsyncClient, dict]]:
    """The server, a client, and the ready file's report once start-up is over."""
    config = ServerConfig(
        inference_address=LOCAL,
        management_address=LOCAL,
        metrics_address=LOCAL,
        models=models(tmp_path / "models"),
        disable_token_authorization=True,
        key_file=str(tmp_path / "key_file.json"),
        shutdown_grace=2.0,
    )
    ready = tmp_path / "ready.json"
    shutdown = trio.Event()
    run = partial(serve, config, shutdown=shutdown, handle_signals=False, ready_file=ready)
    endpoints = await nursery.start(run)
    await eventually(ready.exists, within=90)  # every start-up model has settled
    async with httpx.AsyncClient(timeout=60) as client:
        yield endpoints, client, json.loads(ready.read_text())
    shutdown.set()


async def curl(url: str, *args: str) -> tuple[int, str]:
    """POST with curl; the status and the body."""
    command = ["curl", "-sS", "-w", "\n%{http_code}", url, *args]
    result = await trio.run_process(command, capture_stdout=True)
    body, _, status = result.stdout.decode().rpartition("\n")
    return int(status), body


@needs_curl
@pytest.mark.slow
async def test_form_fields_reach_the_handler_as_bytes_and_files_by_their_type(server, tmp_path):
    endpoints, client, _ = server
    url = f"{endpoints.inference}/predictions/probe"
    (tmp_path / "note.txt").write_text("hello")  # curl sends text/plain for .txt
    (tmp_path / "blob.bin").write_bytes(b"\x01\x02")  # and application/octet-stream here
    (tmp_path / "list.json").write_text("[1, 2]")
    status, body = await curl(
        url,
        *("-F", "data=[1,2]", "-F", f"note=@{tmp_path / 'note.txt'}"),
        *("-F", f"blob=@{tmp_path / 'blob.bin'}"),
        *("-F", f"list=@{tmp_path / 'list.json'};type=application/json"),
    )
    assert status == 200, body
    assert json.loads(body) == {
        "data": ["bytes", "[1,2]"],  # TorchServe: a field has no content type, so bytes
        "note": ["str", "hello"],
        "blob": ["bytes", "\x01\x02"],
        "list": ["list", [1, 2]],
    }
    r = await client.post(url, data={"data": "[3]", "target": "1"})  # urlencoded
    assert r.json() == {"data": ["bytes", "[3]"], "target": ["bytes", "1"]}
    r = await client.post(url, json=[4])
    assert r.json() == {"body": ["list", [4]]}


async def _ask(
    results: dict[str, httpx.Response],
    client: httpx.AsyncClient,
    url: str,
    key: str,
    **kwargs: Any,
) -> None:
    results[key] = await client.post(url, **kwargs)


async def _curl_into(results: dict[str, Any], key: str, url: str, *args: str) -> None:
    results[key] = await curl(url, *args)


async def _wait_queued(client: httpx.AsyncClient, endpoints: BaseURLs, model: str, n: int) -> None:
    """Wait until ``n`` requests wait in the model's queue (seen from outside, as a client)."""
    url = f"{endpoints.management}/models/{model}"
    with trio.fail_after(30):
        while True:
            [described] = (await client.get(url)).json()
            if described["jobQueueStatus"]["pendingRequests"] >= n:
                return
            await trio.sleep(0.01)


@needs_curl
@pytest.mark.slow
@pytest.mark.parametrize(("model", "directory"), [("doubler", "d"), ("tensors", "t")])
async def test_a_bad_request_in_a_batch_of_mixed_shapes_gets_its_own_400(
    server, tmp_path, model, directory
):
    endpoints, client, _ = server
    url = f"{endpoints.inference}/predictions/{model}"
    home = tmp_path / "models" / directory
    text = {"Content-Type": "text/plain"}
    got: dict[str, Any] = {}
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            # the worker is held busy while three requests queue, so they go as one batch
            nursery.start_soon(
                partial(_ask, got, client, url, "gate", content=b"gate", headers=text)
            )
            await eventually((home / "taken").exists)
            nursery.start_soon(partial(_ask, got, client, url, "one", json=[1]))
            nursery.start_soon(
                partial(_ask, got, client, url, "bad", content=b"oops", headers=text)
            )
            nursery.start_soon(_curl_into, got, "form", url, "-i", "-F", "data=[1, 1]")
            await _wait_queued(client, endpoints, model, 3)
            (home / "open").touch()
    status, head_and_body = got["form"]
    head, _, body = head_and_body.partition("\r\n\r\n")
    assert status == 200, head_and_body
    assert json.loads(body) == [2.0, 2.0]  # [1, 1] beside [1]: another shape, same batch
    assert re.search(r"(?im)^x-batch-size: 3\r?$", head), "the three did not share a batch"
    assert got["one"].status_code == 200
    assert got["one"].json() == [2.0]
    assert got["one"].headers["x-batch-size"] == "3"
    assert got["bad"].status_code == 400
    assert got["bad"].json()["code"] == 400
    assert "JSON" in got["bad"].json()["message"]


@pytest.mark.slow
async def test_a_missing_model_dir_at_start_up_fails_that_model_only(server, tmp_path):
    endpoints, client, report = server
    [ghost] = [m for m in report["models"] if m["name"] == "ghost"]
    missing = tmp_path / "models" / "nowhere"
    assert ghost["state"] == "FAILED"
    assert ghost["reason"] == f"model ghost: the model directory {missing} does not exist"
    assert (await client.get(f"{endpoints.management}/models/ghost")).status_code == 404
    assert {m["name"] for m in report["models"] if m["state"] == "READY"} == {
        "probe",
        "doubler",
        "tensors",
    }


@pytest.mark.slow
async def test_torch_workers_log_no_numpy_warning(server):
    endpoints, client, _ = server
    [described] = (await client.get(f"{endpoints.management}/models/doubler")).json()
    tail = [line for worker in described["workers"] for line in worker["logTail"]]
    assert tail, "the worker logged nothing at all"
    assert not [line for line in tail if "NumPy" in line]


async def test_load_model_refuses_a_missing_or_non_directory_model_dir(tmp_path):
    (tmp_path / "a_file").write_text("")
    async with open_supervisor() as sup:
        for name, why in [("nowhere", "does not exist"), ("a_file", "is not a directory")]:
            config = ModelConfig(name="m", handler="doubler", model_dir=str(tmp_path / name))
            with pytest.raises(InvalidModel) as refused:
                await sup.load_model(config)
            assert refused.value.status == 400
            assert refused.value.message == (
                f"model m: the model directory {tmp_path / name} {why}"
            )
        assert sup.worker_count() == 0  # nothing was spawned, nothing registered
        assert sup.statistics() == ()


@pytest.mark.slow
async def test_serve_names_a_missing_model_dir_once_and_starts_no_worker(nursery, tmp_path):
    server = ServeProcess(tmp_path, *local_ports(), "--models", "ghost=doubler@models/ghost")
    await nursery.start(server.run)
    await server.wait_listening()
    missing = tmp_path / "models" / "ghost"
    assert server.has(f"model ghost: the model directory {missing} does not exist")
    assert not server.has("Traceback")
    assert server.worker_pids() == []
    assert server.process is not None
    server.process.send_signal(signal.SIGINT)
    with trio.fail_after(20):
        assert await server.process.wait() == 0


def test_a_worker_whose_model_dir_vanished_fails_its_load_naming_it(tmp_path):
    missing = tmp_path / "gone"
    ours, theirs = socket.socketpair()
    with ours:
        worker = subprocess.Popen(
            [sys.executable, "-m", "handlers", "--fd", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stderr=subprocess.PIPE,
            text=True,
        )
        theirs.close()
        header = {"model_name": "m", "model_version": "1", "batch_size": 1, "handler": "h"}
        ours.sendall(encode(Message(Kind.LOAD, {**header, "model_dir": str(missing)})))
        ours.settimeout(60)
        decoder = Decoder()
        answers: list[Message] = []
        while not answers:
            received = ours.recv(65536)
            assert received, "the worker closed the socket without answering LOAD"
            answers.extend(decoder.feed(received))
        _, stderr = worker.communicate(timeout=60)
    [answer] = answers
    assert answer.kind is Kind.LOAD_FAILED
    assert str(missing) in answer.header["message"]
    assert "FileNotFoundError" in answer.header["message"]
    assert worker.returncode == 1
    assert str(missing) in stderr
