"""Open Inference Protocol v2 inference over REST (``POST /v2/models/{name}/infer``), with httpx.

One real server (tokens on, the lean front end; a percent-encoded path reaches
the Quart app's route) with real workers: the built-in ``tensor_handler``
serving a TorchScript ``Linear(3, 2)`` (answers compared with the model called
here), a handler of ours with the tensor contract that echoes its inputs
(every datatype there and back), and a TorchServe-style handler that shows what
TorchServe 0.12 passes it for an OIP request.
"""

from __future__ import annotations

import json
import struct
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import torch
import trio
from prometheus_client.parser import text_string_to_metric_families

from handlers import PredictionException
from handlers.context import Context
from handlers.protocol import InferItem
from handlers.runtime import run_batch
from supervisor import ModelConfig
from supervisor.api import oipcodec, oiprest
from supervisor.api.oip import declared_tensors
from supervisor.models.tsconfig import model_yaml_settings
from supervisor.server import serve
from tests.docblocks import ROOT, run_by
from tests.docrunner import DocSession
from tests.helpers import FAST_RESTARTS
from tests.test_builtin_handlers import linear_model, torchscript_bytes
from tests.test_security import bearer, read_keys, secure_config

ECHO_TENSORS = """
from handlers import PredictionException

class EchoTensors:
    def infer_tensors(self, requests, context):
        answers = []
        for inputs in requests:
            if "refuse" in inputs:
                answers.append(PredictionException("echo: refused on request", 422))
            else:
                answers.append(dict(inputs))
        return answers

    def handle(self, batch, context):
        return [{"plain": True} for _ in batch]
"""

TORCHSERVE_STYLE = """
class SumHandler:
    def handle(self, batch, context):
        answers = []
        for index, row in enumerate(batch):
            request = row["body"]
            if request.get("id") == "refuse":
                context.set_response_status(400, "Bad Request", index)
                answers.append({"code": 400, "message": "ts: refused"})
                continue
            total = sum(sum(i["data"]) for i in request["inputs"])
            answers.append({
                "id": request.get("id"),
                "model_name": "ts",
                "outputs": [
                    {"name": "sum", "datatype": "FP64", "shape": [1], "data": [total]},
                    {"name": "seen", "datatype": "BYTES", "shape": [2],
                     "data": [context.get_request_header(index, "explain"),
                              json.dumps(request)]},
                ],
            })
        return answers
"""

LINEAR_OIP = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
    "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, 2]}],
}

# datatype -> (numpy dtype, sample values, nested)
SAMPLES: dict[str, tuple[Any, list[Any]]] = {
    "BOOL": (np.bool_, [True, False, True, True]),
    "UINT8": (np.uint8, [0, 1, 200, 255]),
    "UINT16": (np.uint16, [0, 1, 60000, 7]),
    "UINT32": (np.uint32, [0, 1, 4_000_000_000, 7]),
    "UINT64": (np.uint64, [0, 1, 2**64 - 1, 7]),
    "INT8": (np.int8, [-128, 0, 127, 5]),
    "INT16": (np.int16, [-32768, 0, 32767, 5]),
    "INT32": (np.int32, [-(2**31), 0, 2**31 - 1, 5]),
    "INT64": (np.int64, [-(2**63), 0, 2**63 - 1, 5]),
    "FP16": (np.float16, [0.5, -2.0, 1024.0, 0.25]),
    "FP32": (np.float32, [0.5, -2.25, 1e10, 3.0]),
    "FP64": (np.float64, [0.1, -2.5, 1e300, 3.0]),
}


def linear_dir(root: Path) -> Path:
    directory = root / "linear"
    (directory / "MAR-INF").mkdir(parents=True)
    (directory / "linear.pt").write_bytes(torchscript_bytes(linear_model(), torch.zeros(1, 3)))
    manifest = {
        "runtime": "python",
        "model": {
            "modelName": "linear",
            "handler": "tensor_handler",
            "serializedFile": "linear.pt",
        },
    }
    (directory / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))
    return directory


def oip_models(tmp_path: Path, handler_dir) -> list[ModelConfig]:
    common: dict[str, Any] = {"startup_timeout": 120.0, "restart": FAST_RESTARTS}
    return [
        ModelConfig(
            name="linear",
            handler="tensor_handler",
            model_dir=str(linear_dir(tmp_path)),
            batch_size=8,
            max_batch_delay=0.2,
            handler_config={"oip": LINEAR_OIP},
            **common,
        ),
        ModelConfig(
            name="echo",
            handler="echo_tensors",
            model_dir=str(handler_dir("echo_tensors", ECHO_TENSORS)),
            batch_size=4,
            max_batch_delay=0.05,
            **common,
        ),
        ModelConfig(
            name="ts",
            handler="ts_style",
            model_dir=str(handler_dir("ts_style", "import json\n" + TORCHSERVE_STYLE)),
            **common,
        ),
    ]


async def wait_ready(client: httpx.AsyncClient, base: str, names: list[str]) -> None:
    with trio.fail_after(120):
        for name in names:
            while (await client.get(f"{base}/v2/models/{name}/ready")).status_code != 200:  # noqa: ASYNC110
                await trio.sleep(0.05)


def in_process(rows: list[list[float]]) -> np.ndarray:
    with torch.inference_mode():
        return linear_model()(torch.tensor(rows, dtype=torch.float32)).numpy()


# --- the pure parts ------------------------------------------------------------------------------


def test_split_target_takes_infer_with_or_without_a_version():
    assert oiprest.split_target("/v2/models/m/infer") == ("m", None)
    assert oiprest.split_target("/v2/models/m/versions/2.0/infer") == ("m", "2.0")
    for path in (
        "/v2/models/m",
        "/v2/models//infer",
        "/v2/models/m/ready",
        "/v2/models/m/versions//infer",
        "/v2/models/m/x/2/infer",
        "/v2/models/%6d/infer",
        "/v1/models/m/infer",
    ):
        assert oiprest.split_target(path) is None, path


def test_metadata_tensors_come_from_model_config_yaml_and_bad_entries_are_left_out():
    text = """
minWorkers: 1
oip:
  inputs:
    - {name: x, datatype: FP32, shape: [-1, 3]}
    - {name: no_type, shape: [1]}
    - {name: bad_dim, datatype: INT64, shape: [-2]}
  outputs:
    - {name: scores, datatype: FP32, shape: [-1, 2]}
"""
    _, handler_config = model_yaml_settings(text)
    assert declared_tensors(handler_config, "inputs") == [
        {"name": "x", "datatype": "FP32", "shape": [-1, 3]}
    ]
    assert declared_tensors(handler_config, "outputs") == LINEAR_OIP["outputs"]
    assert declared_tensors({}, "inputs") == []
    assert declared_tensors({"oip": "nonsense"}, "outputs") == []


# --- the worker side, in process: the supervisor's canonical form through run_batch ------------


class Recorder:
    """A tensor-contract handler that records what it got; plain requests get their bodies."""

    def __init__(self) -> None:
        self.tensor_batches: list[list[dict[str, Any]]] = []
        self.plain_batches: list[list[dict[str, Any]]] = []

    def infer_tensors(self, requests: list[dict[str, Any]], context: Context) -> list[Any]:
        self.tensor_batches.append(requests)
        answers: list[Any] = []
        for inputs in requests:
            if "bad" in inputs:
                answers.append(PredictionException("bad tensor", 418))
            else:
                answers.append((inputs["x"] + 1, ["é", b"\xff"]))
        return answers

    def handle(self, batch: list[dict[str, Any]], context: Context) -> list[Any]:
        self.plain_batches.append(batch)
        return [row["body"] for row in batch]


def tensor_item(rid: str, inputs: list[dict[str, Any]]) -> InferItem:
    request = oipcodec.decode_rest(orjson.dumps({"inputs": inputs}), None)
    return InferItem(rid, {**request.fields, "url_path": ""}, request.params)


def test_a_mixed_batch_goes_to_each_method_in_its_own_batch_in_order():
    recorder = Recorder()
    context = Context("m", "1.0", "", 8, model_yaml_config={"oip": LINEAR_OIP})
    items = [
        InferItem("p0", {}, {"body": ("application/json", b'{"plain": 0}')}),
        tensor_item("t1", [{"name": "x", "datatype": "INT16", "shape": [2], "data": [1, 2]}]),
        tensor_item("t2", [{"name": "bad", "datatype": "BOOL", "shape": [1], "data": [True]}]),
        InferItem("p3", {}, {"body": ("application/json", b'{"plain": 3}')}),
    ]
    replies = run_batch(recorder.handle, context, items)
    assert [r.request_id for r in replies] == ["p0", "t1", "t2", "p3"]
    assert [len(b) for b in recorder.plain_batches] == [2]
    assert [len(b) for b in recorder.tensor_batches] == [2]
    x = recorder.tensor_batches[0][0]["x"]
    assert (x.dtype, x.tolist()) == (torch.int16, [1, 2])
    assert orjson.loads(replies[0].body) == {"plain": 0}
    assert (replies[2].ok, replies[2].status, replies[2].message) == (False, 418, "bad tensor")
    [scores, text] = oipcodec.decode_reply(replies[1].body, replies[1].content_type)
    assert (scores.name, scores.datatype, scores.shape) == ("scores", "INT16", [2])
    assert np.frombuffer(scores.raw, dtype="<i2").tolist() == [2, 3]
    assert (text.name, text.datatype, text.shape) == ("output1", "BYTES", [2])
    assert text.raw == struct.pack("<I", 2) + "é".encode() + struct.pack("<I", 1) + b"\xff"


def test_every_datatype_reaches_the_handler_as_its_torch_dtype():
    recorder = Recorder()
    context = Context("m", "1.0", "", 8)
    inputs = [
        {"name": d.lower(), "datatype": d, "shape": [2, 2], "data": values}
        for d, (_, values) in SAMPLES.items()
    ]
    run_batch(recorder.handle, context, [tensor_item("t", inputs)])
    [got] = recorder.tensor_batches[0]
    for datatype, (dtype, values) in SAMPLES.items():
        tensor = got[datatype.lower()]
        assert tensor.shape == (2, 2)
        assert str(tensor.dtype) == f"torch.{np.dtype(dtype).name}"
        expected = np.array(values, dtype=dtype).reshape(2, 2)
        assert np.array_equal(tensor.view(torch.uint8).numpy().view(expected.dtype), expected)


class TorchServeStyle:
    """No ``infer_tensors``: what TorchServe hands a handler for an OIP request."""

    def handle(self, batch: list[dict[str, Any]], context: Context) -> list[Any]:
        return [
            {"body": row["body"], "explain": context.get_request_header(i, "explain")}
            for i, row in enumerate(batch)
        ]


def test_a_handler_without_the_tensor_method_gets_torchserves_request():
    context = Context("m", "1.0", "", 8)
    item = tensor_item("t", [{"name": "w", "datatype": "BYTES", "shape": [1], "data": ["hi"]}])
    [reply] = run_batch(TorchServeStyle().handle, context, [item])
    assert orjson.loads(reply.body) == {
        "body": {"inputs": [{"name": "w", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]},
        "explain": "False",
    }


# --- a real server -------------------------------------------------------------------------------


@pytest.fixture
async def server(nursery, tmp_path, handler_dir):
    config = secure_config(tmp_path, *oip_models(tmp_path, handler_dir), lean_http=True)
    shutdown = trio.Event()
    urls = await nursery.start(partial(serve, config, shutdown=shutdown, handle_signals=False))
    keys = read_keys(config)
    async with httpx.AsyncClient(
        base_url=urls.inference, headers=bearer(keys["inference"]), timeout=60
    ) as client:
        await wait_ready(client, urls.inference, ["linear", "echo", "ts"])
        yield client, keys, f"{urls.metrics}/metrics"
    shutdown.set()


@pytest.mark.slow
async def test_oip_inference_on_a_real_server(server):
    client, keys, metrics_url = server
    await _every_datatype_there_and_back(client)
    await _id_outputs_and_parameters(client)
    await _refusals(client, keys)
    await _binary_extension(client)
    await _linear_model_batches_with_plain_requests(client)
    await _torchserve_handler_gets_the_json_request(client)
    await _metadata_declared_in_the_model_config(client)
    await _counted_with_the_oip_rest_label(client, metrics_url)


async def _every_datatype_there_and_back(client: httpx.AsyncClient) -> None:
    inputs = []
    for index, (datatype, (_, values)) in enumerate(SAMPLES.items()):
        nested = index % 2 == 0
        data = [values[:2], values[2:]] if nested else values
        inputs.append(
            {"name": datatype.lower(), "datatype": datatype, "shape": [2, 2], "data": data}
        )
    inputs.append({"name": "text", "datatype": "BYTES", "shape": [3], "data": ["a", "", "héllo"]})
    r = await client.post("/v2/models/echo/infer", json={"inputs": inputs})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["model_name"] == "echo"
    assert body["model_version"] == "1.0"
    outputs = {o["name"]: o for o in body["outputs"]}
    for datatype, (dtype, values) in SAMPLES.items():
        out = outputs[datatype.lower()]
        assert (out["datatype"], out["shape"]) == (datatype, [2, 2])
        assert np.array_equal(np.array(out["data"], dtype=dtype), np.array(values, dtype=dtype))
    assert outputs["text"]["data"] == ["a", "", "héllo"]


async def _id_outputs_and_parameters(client: httpx.AsyncClient) -> None:
    request = {
        "id": "req-42",
        "parameters": {"priority": 3, "sequence_id": "x", "anything": {"at": "all"}},
        "inputs": [
            {
                "name": "a",
                "datatype": "INT32",
                "shape": [1],
                "data": [1],
                "parameters": {"unknown": True},
            },
            {"name": "b", "datatype": "FP32", "shape": [1], "data": [2.5]},
        ],
        "outputs": [{"name": "b", "parameters": {"classification": 0}}],
    }
    r = await client.post("/v2/models/echo/infer", json=request)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "req-42"
    assert [o["name"] for o in r.json()["outputs"]] == ["b"]
    assert r.json()["outputs"][0]["data"] == [2.5]
    request["outputs"] = [{"name": "nope"}]
    r = await client.post("/v2/models/echo/infer", json=request)
    assert r.status_code == 400
    assert "'nope'" in r.json()["error"]


async def _refusals(client: httpx.AsyncClient, keys: dict[str, str]) -> None:
    shape = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2, 3], "data": [1, 2]}]}
    r = await client.post("/v2/models/echo/infer", json=shape)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/json"
    assert set(r.json()) == {"error"}
    assert "'pixels'" in r.json()["error"]
    assert "6 elements" in r.json()["error"]
    for body in (b"{", b"[]", b'{"inputs": []}'):
        r = await client.post("/v2/models/echo/infer", content=body)
        assert r.status_code == 400, body
        assert set(r.json()) == {"error"}
    good = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2], "data": [1, 2]}]}
    r = await client.post("/v2/models/nope/infer", json=good)
    assert r.status_code == 404
    assert r.json() == {"error": "Model not found: nope"}
    r = await client.post("/v2/models/echo/versions/9.9/infer", json=good)
    assert r.status_code == 404
    assert "9.9" in r.json()["error"]
    r = await client.post("/v2/models/echo/infer", json=shape, headers={"Authorization": ""})
    assert r.status_code == 401
    assert r.json()["error"] == r.json()["message"]  # OIP's shape, and the port's
    assert r.json()["type"] == "InvalidKeyException"
    assert "www-authenticate" in r.headers
    refused = {"inputs": [{"name": "refuse", "datatype": "BOOL", "shape": [1], "data": [True]}]}
    r = await client.post("/v2/models/echo/infer", json=refused)
    assert (r.status_code, r.json()) == (422, {"error": "echo: refused on request"})
    r = await client.post(
        "/v2/models/echo/infer", json=refused, headers={"Inference-Header-Content-Length": "x"}
    )
    assert r.status_code == 400
    assert "Inference-Header-Content-Length" in r.json()["error"]


def binary_request(
    inputs: list[tuple[str, str, np.ndarray]], outputs: list[dict[str, Any]] | None = None
) -> tuple[bytes, int]:
    """A binary-extension body (every input binary) and its header's length."""
    specs, raws = [], []
    for name, datatype, array in inputs:
        if datatype == "BYTES":
            raw = b"".join(struct.pack("<I", len(v)) + v for v in array.flatten().tolist())
        else:
            raw = array.tobytes()
        specs.append(
            {
                "name": name,
                "datatype": datatype,
                "shape": list(array.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        raws.append(raw)
    header: dict[str, Any] = {"inputs": specs, "parameters": {"binary_data_output": True}}
    if outputs is not None:
        header["outputs"] = outputs
    head = orjson.dumps(header)
    return head + b"".join(raws), len(head)


async def _binary_extension(client: httpx.AsyncClient) -> None:
    floats = np.arange(6, dtype="<f4").reshape(2, 3)
    words = np.array([b"\x00\xff", b"ok"], dtype=object)
    body, length = binary_request([("f", "FP32", floats), ("w", "BYTES", words)])
    headers = {"Inference-Header-Content-Length": str(length)}
    r = await client.post("/v2/models/echo/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    head_length = int(r.headers["inference-header-content-length"])
    head = orjson.loads(r.content[:head_length])
    sizes = [o["parameters"]["binary_data_size"] for o in head["outputs"]]
    assert [o["name"] for o in head["outputs"]] == ["f", "w"]
    assert r.content[head_length:] == floats.tobytes() + body[length + sizes[0] :]
    # one output as JSON, one binary: the binary one alone follows the header
    asked = [
        {"name": "w", "parameters": {"binary_data": True}},
        {"name": "f", "parameters": {"binary_data": False}},
    ]
    body, length = binary_request([("f", "FP32", floats), ("w", "BYTES", words)], asked)
    r = await client.post(
        "/v2/models/echo/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(length)},
    )
    head_length = int(r.headers["inference-header-content-length"])
    head = orjson.loads(r.content[:head_length])
    assert head["outputs"][1]["data"] == floats.flatten().tolist()
    assert r.content[head_length:] == body[length + floats.nbytes :]
    # BF16 only as binary data, and back
    bf16 = torch.tensor([1.5, -2.0], dtype=torch.bfloat16)
    raw = bf16.view(torch.uint8).numpy().tobytes()
    header = {
        "inputs": [
            {"name": "h", "datatype": "BF16", "shape": [2], "parameters": {"binary_data_size": 4}}
        ]
    }
    head_bytes = orjson.dumps(header)
    r = await client.post(
        "/v2/models/echo/infer",
        content=head_bytes + raw,
        headers={"Inference-Header-Content-Length": str(len(head_bytes))},
    )
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [1.5, -2.0]
    r = await client.post(
        "/v2/models/echo/infer",
        content=head_bytes + raw + b"x",
        headers={"Inference-Header-Content-Length": str(len(head_bytes))},
    )
    assert r.status_code == 400


async def _linear_model_batches_with_plain_requests(client: httpx.AsyncClient) -> None:
    rows = [[[1.0, 2.0, 3.0]], [[0.5, -1.0, 2.0], [4.0, 0.0, -3.0]], [[9.0, 9.0, 9.0]]]
    answers: dict[int, httpx.Response] = {}

    async def oip(index: int, path: str) -> None:
        request = {
            "inputs": [
                {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [len(rows[index]), 3],
                    "data": rows[index],
                }
            ]
        }
        answers[index] = await client.post(path, json=request)

    async def plain() -> None:
        answers[-1] = await client.post("/predictions/linear", json=[1.0, 2.0, 3.0])

    async with trio.open_nursery() as nursery:  # one batch: OIP and plain requests mixed
        nursery.start_soon(oip, 0, "/v2/models/linear/infer")
        nursery.start_soon(oip, 1, "/v2/models/linear/versions/1.0/infer")
        nursery.start_soon(oip, 2, "/v2/models/line%61r/infer")  # the Quart app's route
        nursery.start_soon(plain)
    for index, batch in enumerate(rows):
        r = answers[index]
        assert r.status_code == 200, r.text
        (out,) = r.json()["outputs"]
        assert (out["name"], out["datatype"], out["shape"]) == ("scores", "FP32", [len(batch), 2])
        expected = in_process(batch)
        assert np.allclose(np.array(out["data"]).reshape(expected.shape), expected, atol=1e-6)
    assert np.allclose(answers[-1].json(), in_process([[1.0, 2.0, 3.0]])[0], atol=1e-6)
    wrong = {"inputs": [{"name": "x", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]}]}
    r = await client.post("/v2/models/linear/infer", json=wrong)
    assert (r.status_code, r.json()) == (
        400,
        {"error": "input 'x' is INT64; this model takes FP32"},
    )


async def _torchserve_handler_gets_the_json_request(client: httpx.AsyncClient) -> None:
    request = {
        "id": "ts-1",
        "inputs": [
            {"name": "a", "datatype": "INT64", "shape": [2, 2], "data": [[1, 2], [3, 4]]},
            {"name": "b", "datatype": "FP32", "shape": [1], "data": [0.5]},
        ],
    }
    r = await client.post("/v2/models/ts/infer", json={**request, "id": "refuse"})
    assert (r.status_code, r.json()) == (400, {"error": "ts: refused"})
    r = await client.post("/v2/models/ts/infer", json=request)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "ts-1"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["sum"]["data"] == [10.5]
    explain, seen = outputs["seen"]["data"]
    assert explain == "False"
    assert json.loads(seen) == {
        "id": "ts-1",
        "inputs": [
            {"name": "a", "shape": [2, 2], "datatype": "INT64", "data": [1, 2, 3, 4]},
            {"name": "b", "shape": [1], "datatype": "FP32", "data": [0.5]},
        ],
    }


async def _metadata_declared_in_the_model_config(client: httpx.AsyncClient) -> None:
    r = await client.get("/v2/models/linear")
    assert r.status_code == 200
    assert (r.json()["inputs"], r.json()["outputs"]) == (
        LINEAR_OIP["inputs"],
        LINEAR_OIP["outputs"],
    )
    r = await client.get("/v2/models/echo")
    assert (r.json()["inputs"], r.json()["outputs"]) == ([], [])


@pytest.mark.slow
async def test_the_protocols_oip_rest_examples(nursery, tmp_path):
    """docs/protocols.md, OIP v2 over REST: the doubler, with curl and with tritonclient."""
    pytest.importorskip("tritonclient.http")
    session = DocSession(tmp_path, nursery)
    await session.run(
        run_by(ROOT / "docs" / "protocols.md", "test_the_protocols_oip_rest_examples")
    )
    await session.stop()


async def _counted_with_the_oip_rest_label(client: httpx.AsyncClient, metrics_url: str) -> None:
    """Each OIP request is in the latency histogram with ``protocol="oip-rest"``."""

    def count(text: str, protocol: str) -> float:
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "supervisor_request_latency_seconds_count"
            and sample.labels.get("model_name") == "echo"
            and sample.labels.get("protocol") == protocol
        )

    before = count((await client.get(metrics_url)).text, "oip-rest")
    request = {"inputs": [{"name": "a", "datatype": "INT8", "shape": [1], "data": [1]}]}
    for _ in range(3):
        assert (await client.post("/v2/models/echo/infer", json=request)).status_code == 200
    after = count((await client.get(metrics_url)).text, "oip-rest")
    assert after - before == 3
    assert count((await client.get(metrics_url)).text, "rest") == 0  # none went as /predictions
