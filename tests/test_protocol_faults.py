"""Faults over every protocol: a worker killed mid-call, a full queue, a deadline, SIGTERM.

Each case runs ``python -m supervisor serve`` (tokens on, gRPC on, free ports) with
a handler that takes a command in any protocol's shape (a body, an OIP ``BYTES``
input named ``cmd``) and answers ``done <command>``: ``pid`` writes the worker's
pid and blocks, ``gate`` marks itself taken and waits for the test's gate file,
``sleep S`` sleeps. The protocols are TorchServe's REST ``/predictions``, OIP v2
over REST in JSON and with the binary extension, KServe v1, TorchServe's gRPC
``Predictions`` and OIP's gRPC ``ModelInfer``; each answers a fault with its own
error shape (TorchServe's JSON, ``{"error": ...}``, a gRPC status).
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from supervisor.grpc.protos import inference_pb2 as ts_pb
from supervisor.grpc.protos import inference_pb2_grpc as ts_grpc
from supervisor.grpc.protos import open_inference_grpc_pb2 as oip_pb
from supervisor.grpc.protos import open_inference_grpc_pb2_grpc as oip_grpc
from tests.helpers import eventually
from tests.serveproc import ServeProcess

pytestmark = pytest.mark.slow

FAULTY = """
import os, time
from pathlib import Path


def wait_for(path, limit=60.0):
    deadline = time.monotonic() + limit
    while not path.exists():  # the test creates it
        if time.monotonic() > deadline:
            raise TimeoutError(str(path))
        time.sleep(0.01)


class Faulty:
    def initialize(self, context):
        self.dir = Path(context.system_properties["model_dir"])

    def act(self, command):
        with open(self.dir / "seen.log", "a") as seen:
            seen.write(command + "\\n")
        if command == "pid":
            (self.dir / "pid.tmp").write_text(str(os.getpid()))
            (self.dir / "pid.tmp").rename(self.dir / "pid")
            wait_for(self.dir / "never")
        elif command == "gate":
            (self.dir / "taken").touch()
            wait_for(self.dir / "gate")
        elif command.startswith("sleep "):
            time.sleep(float(command.split()[1]))
        return "done " + command

    def handle(self, batch, context):
        answers = []
        for row in batch:
            body = row.get("body")
            text = body.decode() if isinstance(body, (bytes, bytearray)) else body
            answers.append(self.act(text))
        return answers

    def infer_tensors(self, requests, context):
        return [{"out": [self.act(inputs["cmd"][0].decode()).encode()]} for inputs in requests]
"""

PROTOCOLS = ("rest", "oip-rest-json", "oip-rest-binary", "kserve-v1", "grpc", "oip-grpc")
LABELS = {"oip-rest-json": "oip-rest", "oip-rest-binary": "oip-rest"}  # the metrics' label
GRPC_LINE = re.compile(r"listening: gRPC inference (\S+), gRPC management (\S+)")
WORKER = re.compile(r"worker \S+ w1#\d+ \(pid \d+\) died while serving the request")


@dataclass
class Reply:
    """A call's end, whatever the protocol: its status (HTTP or gRPC) and message or output."""

    status: str
    text: str
    headers: dict[str, str]


@dataclass
class Server:
    process: ServeProcess
    home: Path
    inference: str = ""
    metrics: str = ""
    grpc_target: str = ""
    key: str = ""

    def model_dir(self, model: str) -> Path:
        return self.home / model


def config_toml(home: Path, models: dict[str, dict[str, Any]]) -> str:
    server = {
        "inference_address": "127.0.0.1:0",
        "management_address": "127.0.0.1:0",
        "metrics_address": "127.0.0.1:0",
        "grpc": True,
        "grpc_inference_address": "127.0.0.1:0",
        "grpc_management_address": "127.0.0.1:0",
        "key_file": str(home / "keys.json"),
        "shutdown_grace": 30.0,
        "pre_stop_delay": 0.0,
    }
    lines = ["[server]", *(f"{k} = {json.dumps(v)}" for k, v in server.items())]
    lines += ["[defaults.restart]", "max_restarts = 100", "backoff_initial = 0.05"]
    for name, settings in models.items():
        (home / name).mkdir()
        (home / name / "faulty.py").write_text(FAULTY)
        lines += ["[[models]]", f'name = "{name}"', 'handler = "faulty"']
        lines.append(f'model_dir = "{home / name}"')
        lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    return "\n".join(lines) + "\n"


async def launch(nursery: trio.Nursery, home: Path, **models: dict[str, Any]) -> Server:
    """A server with ``models`` (name -> settings), each served by the faulty handler."""
    (home / "config.toml").write_text(config_toml(home, models))
    process = ServeProcess(home, "--config", str(home / "config.toml"))
    await nursery.start(process.run)
    inference, _, metrics = await process.wait_listening(within=60)
    await eventually(lambda: process.find(GRPC_LINE) is not None, within=30)
    grpc_line = process.find(GRPC_LINE)
    assert grpc_line is not None
    key = json.loads((home / "keys.json").read_text())["inference"]["key"]
    server = Server(process, home, inference, metrics, grpc_line.group(1), key)

    async def ready() -> bool:
        async with httpx.AsyncClient(timeout=10) as client:
            return (await client.get(f"{inference}/v2/health/ready")).status_code == 200

    try:
        await until(ready, within=120)
    except trio.TooSlowError:
        raise AssertionError("\n".join(process.lines[-40:])) from None
    return server


# --- one call, in each protocol ---------------------------------------------------------------


def _bytes_element(raw: bytes) -> str:
    """The first element of a raw BYTES tensor (4-byte little-endian length, then bytes)."""
    (length,) = struct.unpack_from("<I", raw)
    return raw[4 : 4 + length].decode()


def _rest_reply(r: httpx.Response, protocol: str) -> Reply:
    headers = dict(r.headers)
    if r.status_code != 200:
        body = r.json()
        if protocol == "rest":
            assert set(body) >= {"code", "type", "message"}, body  # TorchServe's shape
            return Reply(str(r.status_code), body["message"], headers)
        assert set(body) == {"error"}, body  # OIP's and KServe's shape
        return Reply(str(r.status_code), body["error"], headers)
    if protocol == "rest":
        return Reply("200", r.text, headers)
    if protocol == "kserve-v1":
        return Reply("200", r.json()["predictions"][0], headers)
    if protocol == "oip-rest-json":
        return Reply("200", r.json()["outputs"][0]["data"][0], headers)
    length = int(r.headers["inference-header-content-length"])
    return Reply("200", _bytes_element(r.content[length:]), headers)


def _rest_request(protocol: str, model: str, command: str) -> tuple[str, dict[str, str], bytes]:
    """The path, headers and body of ``command`` for ``model`` in a REST protocol."""
    tensor: dict[str, Any] = {"name": "cmd", "datatype": "BYTES", "shape": [1]}
    if protocol == "rest":
        return f"/predictions/{model}", {"Content-Type": "text/plain"}, command.encode()
    if protocol == "kserve-v1":
        body = json.dumps({"instances": [command]}).encode()
        return f"/v1/models/{model}:predict", {"Content-Type": "application/json"}, body
    if protocol == "oip-rest-json":
        body = json.dumps({"inputs": [{**tensor, "data": [command]}]}).encode()
        return f"/v2/models/{model}/infer", {"Content-Type": "application/json"}, body
    raw = struct.pack("<I", len(command)) + command.encode()
    header = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": "out", "parameters": {"binary_data": True}}],
        }
    ).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return f"/v2/models/{model}/infer", headers, header + raw


def _grpc_call(server: Server, protocol: str, model: str, command: str, timeout: float) -> Reply:
    """One gRPC call in this thread (grpcio's sync stubs), its end as a Reply."""
    metadata = [("authorization", f"Bearer {server.key}")]
    with grpc.insecure_channel(server.grpc_target) as channel:
        try:
            if protocol == "grpc":
                stub = ts_grpc.InferenceAPIsServiceStub(channel)
                request = ts_pb.PredictionsRequest(
                    model_name=model, input={"body": command.encode()}
                )
                answer = stub.Predictions(request, metadata=metadata, timeout=timeout)
                return Reply("OK", answer.prediction.decode(), {})
            contents = oip_pb.InferTensorContents(bytes_contents=[command.encode()])
            tensor = oip_pb.ModelInferRequest.InferInputTensor(
                name="cmd", datatype="BYTES", shape=[1], contents=contents
            )
            request = oip_pb.ModelInferRequest(model_name=model, inputs=[tensor])
            answer = oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                request, metadata=metadata, timeout=timeout
            )
            return Reply("OK", _bytes_element(answer.raw_output_contents[0]), {})
        except grpc.RpcError as exc:
            return Reply(exc.code().name, exc.details() or "", {})


async def call(
    server: Server, protocol: str, model: str, command: str, *, timeout_ms: int | None = None
) -> Reply:
    """Send ``command`` to ``model`` in ``protocol``; the deadline is ``timeout_ms`` if given."""
    if protocol in ("grpc", "oip-grpc"):
        timeout = timeout_ms / 1000 if timeout_ms is not None else 90.0
        run = partial(_grpc_call, server, protocol, model, command, timeout)
        return await trio.to_thread.run_sync(run)
    path, headers, body = _rest_request(protocol, model, command)
    headers["Authorization"] = f"Bearer {server.key}"
    if timeout_ms is not None:
        headers["X-Client-Timeout-Ms"] = str(timeout_ms)
    async with httpx.AsyncClient(timeout=90) as client:
        r = await client.post(f"{server.inference}{path}", content=body, headers=headers)
    return _rest_reply(r, protocol)


async def metric(server: Server, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(f"{server.metrics}/metrics")).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


async def until(predicate: Callable[[], Any], within: float = 30.0) -> None:
    """Wait for an async ``predicate`` to hold (another process's progress)."""
    with trio.fail_after(within):
        while True:
            if await predicate():
                return
            await trio.sleep(0.02)


async def stop(server: Server) -> None:
    """SIGTERM: the server must drain and exit 0 (its workers with it)."""
    process = server.process.process
    assert process is not None
    process.send_signal(signal.SIGTERM)
    with trio.fail_after(60):
        assert await process.wait() == 0, "\n".join(server.process.lines[-30:])


def is_grpc(protocol: str) -> bool:
    return protocol in ("grpc", "oip-grpc")


# --- the faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_worker_killed_mid_call_ends_the_call_naming_worker_and_incarnation(
    nursery, tmp_path, protocol
):
    server = await launch(nursery, tmp_path, kill={})
    pid_file = server.model_dir("kill") / "pid"
    replies: list[Reply] = []

    async def send() -> None:
        replies.append(await call(server, protocol, "kill", "pid"))

    async with trio.open_nursery() as calls:
        calls.start_soon(send)
        await eventually(pid_file.exists, within=60)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
    [reply] = replies
    assert reply.status == ("INTERNAL" if is_grpc(protocol) else "507"), reply
    assert WORKER.search(reply.text), reply.text
    assert "SIGKILL" in reply.text or "signal 9" in reply.text, reply.text
    await stop(server)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_full_queue_is_refused_at_once_in_the_protocols_shape(nursery, tmp_path, protocol):
    server = await launch(nursery, tmp_path, queue={"batch_size": 1, "job_queue_size": 1})
    here = server.model_dir("queue")
    replies: dict[str, Reply] = {}

    async def send(command: str) -> None:
        replies[command] = await call(server, protocol, "queue", command)

    async def queued() -> bool:
        return await metric(server, "supervisor_queue_depth", model_name="queue") == 1

    async with trio.open_nursery() as calls:
        calls.start_soon(send, "gate")
        await eventually((here / "taken").exists, within=60)
        calls.start_soon(send, "queued")
        await until(queued)
        refused = await call(server, protocol, "queue", "refused")
        (here / "gate").touch()
    assert refused.status == ("UNAVAILABLE" if is_grpc(protocol) else "503"), refused
    assert "queue" in refused.text.lower(), refused.text
    if not is_grpc(protocol):
        assert int(refused.headers["retry-after"]) >= 0
    assert {c: (r.status, r.text) for c, r in replies.items()} == {
        command: ("OK" if is_grpc(protocol) else "200", f"done {command}")
        for command in ("gate", "queued")
    }
    await stop(server)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_deadline_ends_the_call_queued_or_in_the_worker(nursery, tmp_path, protocol):
    """Queued: the job never reaches the worker. On the worker: the call ends on time.

    Over REST the server answers 504 itself and counts it. A gRPC client's own
    deadline also ends the call on the server, which drops the work (its
    outcome is counted only if the job's deadline fired first).
    """
    server = await launch(nursery, tmp_path, slow={})
    here = server.model_dir("slow")
    expired = "DEADLINE_EXCEEDED" if is_grpc(protocol) else "504"
    label = LABELS.get(protocol, protocol)
    latency = "supervisor_request_latency_seconds_count"
    before = await metric(server, latency, protocol=label, code="504")
    replies: list[Reply] = []

    async def gate() -> None:
        replies.append(await call(server, protocol, "slow", "gate"))

    async with trio.open_nursery() as calls:
        calls.start_soon(gate)
        await eventually((here / "taken").exists, within=60)
        late = await call(server, protocol, "slow", "never run", timeout_ms=300)
        (here / "gate").touch()
    assert late.status == expired, late
    assert [(r.status, r.text) for r in replies] == [
        ("OK" if is_grpc(protocol) else "200", "done gate")
    ]
    started = trio.current_time()
    slow = await call(server, protocol, "slow", "sleep 5", timeout_ms=300)
    assert trio.current_time() - started < 4  # not the handler's 5 s
    assert slow.status == expired, slow
    await eventually(lambda: "sleep 5" in (here / "seen.log").read_text())
    assert "never run" not in (here / "seen.log").read_text()  # dropped before a worker took it

    async def counted() -> bool:  # the server's own 504s, not only the client giving up
        return await metric(server, latency, protocol=label, code="504") == before + 2

    if not is_grpc(protocol):
        await until(counted)
    await stop(server)


async def test_sigterm_answers_the_calls_in_flight_in_every_protocol(nursery, tmp_path):
    server = await launch(nursery, tmp_path, gate={"batch_size": 1, "job_queue_size": 10})
    here = server.model_dir("gate")
    replies: dict[str, Reply] = {}

    async def send(protocol: str) -> None:
        replies[protocol] = await call(server, protocol, "gate", "gate")

    async def all_taken() -> bool:
        taken = await metric(server, "supervisor_inflight_requests", model_name="gate")
        return taken == len(PROTOCOLS)

    async def stopping() -> bool:
        async with httpx.AsyncClient(timeout=5) as client:
            try:
                r = await client.get(f"{server.inference}/v2/health/ready")
            except httpx.TransportError:
                return True
        return r.status_code == 503

    async with trio.open_nursery() as calls:
        for protocol in PROTOCOLS:
            calls.start_soon(send, protocol)
        await until(all_taken)  # one in the worker, the others queued
        assert server.process.process is not None
        server.process.process.send_signal(signal.SIGTERM)
        await until(stopping)
        (here / "gate").touch()
    assert {p: (r.status, r.text) for p, r in replies.items()} == {
        p: ("OK" if is_grpc(p) else "200", "done gate") for p in PROTOCOLS
    }
    with trio.fail_after(60):
        assert await server.process.process.wait() == 0
