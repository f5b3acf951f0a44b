"""TorchServe's gRPC APIs, called with the client grpcio generates from TorchServe's protos.

A real server (tokens on, gRPC on free ports) with real workers: register, scale,
describe, list, set-default, predict, stream, unregister and ping as TorchServe's
``ts_scripts/torchserve_grpc_client.py`` does them; tokens (missing, or the other
API's key: UNAUTHENTICATED); the model API off (PERMISSION_DENIED); unknown models
(NOT_FOUND) and bad input (INVALID_ARGUMENT). The pure status table is checked on
its own.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import trio
from google.protobuf import empty_pb2

from supervisor import ModelConfig, ServerConfig
from supervisor.grpc.protos import inference_pb2 as inference
from supervisor.grpc.protos import inference_pb2_grpc as inference_grpc
from supervisor.grpc.protos import management_pb2 as management
from supervisor.grpc.protos import management_pb2_grpc as management_grpc
from supervisor.grpc.status import code_for
from supervisor.grpc.torchserve import client_address
from supervisor.server import serve
from tests.helpers import FAST_RESTARTS, make_mar
from tests.test_security import read_keys, secure_config
from tests.test_tls import make_pki

LOCAL0 = "127.0.0.1:0"

# Each request's "data" input is a command; every request is written to seen.log
# beside the handler first, with the worker's pid, so a test can tell which
# requests reached a worker.
PROBE = """
import json, os, time

SEEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seen.log")


class Probe:
    def handle(self, batch, context):
        answers = []
        for item in batch:
            text = bytes(item.get("data") or b"").decode()
            with open(SEEN, "a") as seen:
                seen.write(f"{text}|{os.getpid()}\\n")
            word, _, arg = text.partition(" ")
            if word == "sleep":
                time.sleep(float(arg.split()[0]))
            elif word == "stream":
                for i in range(int(arg)):
                    context.send_intermediate([f"part{i} "])
            elif word == "inputs":
                answers.append(json.dumps({k: bytes(v).decode() for k, v in item.items()}))
                continue
            elif word == "fail":
                raise ValueError("failed on purpose")
            answers.append(f"done {text}")
        return answers
"""


def grpc_config(tmp_path: Path, *models: ModelConfig, **settings: Any) -> ServerConfig:
    """``secure_config`` with gRPC on, on free ports."""
    return secure_config(
        tmp_path,
        *models,
        grpc=True,
        grpc_inference_address=LOCAL0,
        grpc_management_address=LOCAL0,
        **settings,
    )


def probe_model(handler_dir: Callable[[str, str], Path], **settings: Any) -> ModelConfig:
    directory = handler_dir("probe_handler", PROBE)
    return ModelConfig(
        name="probe",
        handler="probe_handler",
        model_dir=str(directory),
        startup_timeout=120.0,
        restart=FAST_RESTARTS,
        **settings,
    )


def seen(handler_dir: Callable[[str, str], Path]) -> list[str]:
    """The commands that reached a worker, in order."""
    path = handler_dir("probe_handler", PROBE) / "seen.log"
    return [line.split("|")[0] for line in path.read_text().splitlines()] if path.exists() else []


def bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


class Clients:
    """TorchServe's two stubs on one server, with the keys; calls run in a thread."""

    def __init__(self, inference_target: str, management_target: str, keys: dict[str, str]):
        self.channels = [grpc.insecure_channel(inference_target)]
        self.channels.append(grpc.insecure_channel(management_target))
        self.inference = inference_grpc.InferenceAPIsServiceStub(self.channels[0])
        self.management = management_grpc.ManagementAPIsServiceStub(self.channels[1])
        self.keys = keys

    def predict(self, data: bytes, model: str = "probe", **kwargs: Any) -> Any:
        request = inference.PredictionsRequest(model_name=model, input={"data": data})
        metadata = bearer(self.keys["inference"])
        return self.inference.Predictions(request, metadata=metadata, **kwargs)

    def manage(self, method: str, request: Any) -> str:
        call = getattr(self.management, method)
        return str(call(request, metadata=bearer(self.keys["management"]), timeout=120).msg)

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


async def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await trio.to_thread.run_sync(partial(fn, *args, **kwargs))


def rpc_error(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> grpc.RpcError:
    """The error ``fn`` ends with (the test fails if it succeeds)."""
    try:
        fn(*args, **kwargs)
    except grpc.RpcError as exc:
        return exc
    raise AssertionError(f"{fn} succeeded")


async def wait_workers(clients: Clients, name: str, count: int, version: str = "") -> None:
    request = management.DescribeModelRequest(model_name=name, model_version=version)
    with trio.fail_after(120):
        while True:
            described = json.loads(await in_thread(clients.manage, "DescribeModel", request))
            ready = [w for w in described[0]["workers"] if w["status"] == "READY"]
            if len(ready) == count:
                return
            await trio.sleep(0.05)


def grpc_threads() -> list[str]:
    """Threads of the gRPC ports that are alive (the asyncio loop's is ``grpc-asyncio``)."""
    return [t.name for t in threading.enumerate() if t.name.startswith("grpc-")]


# --- pure parts ---------------------------------------------------------------------------------


def test_http_statuses_map_to_torchserves_grpc_codes():
    table = {
        200: grpc.StatusCode.OK,
        202: grpc.StatusCode.OK,
        400: grpc.StatusCode.INVALID_ARGUMENT,
        401: grpc.StatusCode.UNAUTHENTICATED,
        403: grpc.StatusCode.PERMISSION_DENIED,
        404: grpc.StatusCode.NOT_FOUND,
        405: grpc.StatusCode.PERMISSION_DENIED,
        409: grpc.StatusCode.ABORTED,
        413: grpc.StatusCode.RESOURCE_EXHAUSTED,
        422: grpc.StatusCode.FAILED_PRECONDITION,
        500: grpc.StatusCode.INTERNAL,
        503: grpc.StatusCode.UNAVAILABLE,
        504: grpc.StatusCode.DEADLINE_EXCEEDED,
        507: grpc.StatusCode.INTERNAL,
        302: grpc.StatusCode.UNKNOWN,
    }
    assert {status: code_for(status) for status in table} == table


def test_client_address_of_grpc_peers():
    assert client_address("ipv4:127.0.0.1:50051") == "127.0.0.1"
    assert client_address("ipv6:[::1]:50051") == "::1"
    assert client_address("unix:/tmp/socket") == "/tmp/socket"


def test_grpc_is_off_for_an_embedded_server_and_addresses_are_checked():
    assert not ServerConfig().grpc
    assert ServerConfig().grpc_inference_address == "127.0.0.1:7070"
    assert ServerConfig().grpc_management_address == "127.0.0.1:7071"
    for bad in ("7070", "http://127.0.0.1:7070", "127.0.0.1:port", "127.0.0.1:70000"):
        with pytest.raises(ValueError, match="expected HOST:PORT"):
            ServerConfig(grpc_inference_address=bad)
    with pytest.raises(ValueError, match="grpc_tls"):
        ServerConfig(grpc=True, grpc_tls=True)


# --- a real server ------------------------------------------------------------------------------


@pytest.fixture
async def served(nursery, tmp_path, handler_dir):
    store = tmp_path / "store"
    make_mar(store, "echo", PROBE, version="1.0", module="probe_handler")
    make_mar(store, "echo_v2", PROBE, version="2.0", module="probe_handler")
    config = grpc_config(
        tmp_path,
        probe_model(handler_dir),
        model_store=str(store),
        enable_model_api=True,
    )
    shutdown = trio.Event()
    urls = await nursery.start(partial(serve, config, shutdown=shutdown, handle_signals=False))
    clients = Clients(urls.grpc_inference, urls.grpc_management, read_keys(config))
    await wait_workers(clients, "probe", 1)
    yield clients, urls
    clients.close()
    shutdown.set()


@pytest.mark.slow
async def test_torchserves_client_walks_through_the_apis(served):
    clients, urls = served
    ping = await in_thread(clients.inference.Ping, empty_pb2.Empty())
    assert json.loads(ping.health) == {"status": "Healthy"}

    answer = await in_thread(clients.predict, b"hello")
    assert answer.prediction == b"done hello"
    request = inference.PredictionsRequest(
        model_name="probe", input={"data": b"inputs", "extra": b"x"}
    )
    answer = await in_thread(
        clients.inference.Predictions, request, metadata=bearer(clients.keys["inference"])
    )
    assert json.loads(answer.prediction) == {"data": "inputs", "extra": "x"}

    request = inference.PredictionsRequest(model_name="probe", input={"data": b"stream 2"})
    parts = await in_thread(
        lambda: [
            r.prediction
            for r in clients.inference.StreamPredictions(
                request, metadata=bearer(clients.keys["inference"])
            )
        ]
    )
    assert parts == [b"part0 ", b"part1 ", b"done stream 2"]
    joined = await in_thread(clients.predict, b"stream 2")
    assert joined.prediction == b"part0 part1 done stream 2"
    await _stream_predictions2(clients)
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{urls.metrics}/metrics")).text
    counted = [
        line
        for line in metrics.splitlines()
        if line.startswith("supervisor_request_latency_seconds_count")
        and 'protocol="grpc"' in line
        and 'model_name="probe"' in line
    ]
    assert counted, "gRPC predictions are in the metrics with protocol grpc"

    await _register_scale_describe_unregister(clients)


async def _stream_predictions2(clients: Clients) -> None:
    """Each request of the client's stream answered in turn; a failure does not end the call."""
    requests = [
        inference.PredictionsRequest(model_name="probe", input={"data": b"one"}, sequence_id="s"),
        inference.PredictionsRequest(model_name="nope", input={"data": b"two"}, sequence_id="s"),
        inference.PredictionsRequest(model_name="probe", input={"data": b"stream 1"}),
    ]
    metadata = bearer(clients.keys["inference"])
    answers = await in_thread(
        lambda: list(clients.inference.StreamPredictions2(iter(requests), metadata=metadata))
    )
    assert [(a.prediction, a.sequence_id, a.status.code) for a in answers] == [
        (b"done one", "s", 0),
        (b"", "s", grpc.StatusCode.NOT_FOUND.value[0]),
        (b"part0 ", "", 0),
        (b"done stream 1", "", 0),
    ]
    assert answers[1].status.message == "Model not found: nope"


async def _register_scale_describe_unregister(clients: Clients) -> None:
    manage = partial(in_thread, clients.manage)
    register = management.RegisterModelRequest(url="echo.mar", initial_workers=1, synchronous=True)
    assert await manage("RegisterModel", register) == (
        'Model "echo" Version: 1.0 registered with 1 initial workers'
    )
    listed = json.loads(await manage("ListModels", management.ListModelsRequest()))
    assert [m["modelName"] for m in listed["models"]] == ["echo", "probe"]
    answer = await in_thread(clients.predict, b"hi", model="echo")
    assert answer.prediction == b"done hi"

    scale = management.ScaleWorkerRequest(model_name="echo", min_worker=2, synchronous=True)
    assert await manage("ScaleWorker", scale) == "Workers scaled to 2 for model: echo"
    described = json.loads(
        await manage("DescribeModel", management.DescribeModelRequest(model_name="echo"))
    )
    assert (described[0]["minWorkers"], len(described[0]["workers"])) == (2, 2)

    v2 = management.RegisterModelRequest(
        url="echo_v2.mar", model_name="echo", initial_workers=1, synchronous=True
    )
    assert "Version: 2.0 registered" in await manage("RegisterModel", v2)
    default = management.SetDefaultRequest(model_name="echo", model_version="2.0")
    assert await manage("SetDefault", default) == (
        'Default version successfully updated for model "echo" to "2.0"'
    )
    unregister = management.UnregisterModelRequest(model_name="echo", model_version="1.0")
    assert await manage("UnregisterModel", unregister) == 'Model "echo" unregistered'
    described = json.loads(
        await manage("DescribeModel", management.DescribeModelRequest(model_name="echo"))
    )
    assert [d["modelVersion"] for d in described] == ["2.0"]


@pytest.mark.slow
async def test_errors_end_calls_with_torchserves_codes_and_our_messages(served):
    clients, _ = served
    no_token = await in_thread(
        rpc_error,
        clients.inference.Predictions,
        inference.PredictionsRequest(model_name="probe", input={"data": b"x"}),
    )
    assert no_token.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Token Authorization failed" in no_token.details()
    wrong_key = await in_thread(
        rpc_error,
        clients.management.ListModels,
        management.ListModelsRequest(),
        metadata=bearer(clients.keys["inference"]),
    )
    assert wrong_key.code() == grpc.StatusCode.UNAUTHENTICATED
    ping = await in_thread(clients.inference.Ping, empty_pb2.Empty())  # no token needed
    assert "Healthy" in ping.health

    unknown = await in_thread(rpc_error, clients.predict, b"x", model="nope")
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    assert unknown.details() == "Model not found: nope"
    nameless = await in_thread(rpc_error, clients.predict, b"x", model="")
    assert nameless.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert nameless.details() == "Parameter model_name is required."
    failed = await in_thread(rpc_error, clients.predict, b"fail")  # 503, as TorchServe's
    assert failed.code() == grpc.StatusCode.UNAVAILABLE
    assert failed.details() == "Prediction failed: ValueError: failed on purpose"
    too_big = b"x" * (ServerConfig().max_request_size + 1)
    big = await in_thread(rpc_error, clients.predict, too_big)
    assert big.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    scale = management.ScaleWorkerRequest(model_name="nope", min_worker=1)
    missing = await in_thread(rpc_error, clients.manage, "ScaleWorker", scale)
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    bad_url = management.RegisterModelRequest(url="absent.mar")
    refused = await in_thread(rpc_error, clients.manage, "RegisterModel", bad_url)
    assert refused.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
    assert "absent.mar" in refused.details()


@pytest.mark.slow
async def test_the_model_api_off_denies_registering_over_grpc(nursery, tmp_path):
    config = grpc_config(tmp_path)  # no model, enable_model_api off (the default)
    shutdown = trio.Event()
    urls = await nursery.start(partial(serve, config, shutdown=shutdown, handle_signals=False))
    clients = Clients(urls.grpc_inference, urls.grpc_management, read_keys(config))
    for method, request in (
        ("RegisterModel", management.RegisterModelRequest(url="x.mar")),
        ("UnregisterModel", management.UnregisterModelRequest(model_name="x")),
    ):
        denied = await in_thread(rpc_error, clients.manage, method, request)
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "--enable-model-api" in denied.details()
    listed = await in_thread(clients.manage, "ListModels", management.ListModelsRequest())
    assert json.loads(listed) == {"models": []}
    clients.close()
    shutdown.set()


@pytest.mark.slow
async def test_grpc_over_tls_with_the_https_ports_certificate(nursery, tmp_path):
    pki = make_pki(tmp_path)
    config = grpc_config(
        tmp_path,
        grpc_tls=True,
        certificate_file=str(pki.certificate),
        private_key_file=str(pki.key),
    )
    shutdown = trio.Event()
    urls = await nursery.start(partial(serve, config, shutdown=shutdown, handle_signals=False))

    def ping(credentials: grpc.ChannelCredentials | None) -> str:
        channel = (
            grpc.secure_channel(urls.grpc_inference, credentials)
            if credentials
            else grpc.insecure_channel(urls.grpc_inference)
        )
        with channel:
            stub = inference_grpc.InferenceAPIsServiceStub(channel)
            return str(stub.Ping(empty_pb2.Empty(), timeout=10).health)

    trusted = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    assert "Healthy" in await in_thread(ping, trusted)
    plain = await in_thread(rpc_error, ping, None)
    assert plain.code() == grpc.StatusCode.UNAVAILABLE
    shutdown.set()
