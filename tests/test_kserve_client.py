"""KServe's own Python clients (REST v2 and v1, gRPC) against a real server.

kserve 0.21 cannot share the test environment: it requires ``psutil<6`` and the
server requires ``psutil>=7.2``. So the client runs in a virtual environment of
its own, made here on first use (``.nox/kserve-client``, or the directory in
``KSERVE_CLIENT_VENV``) with ``pip install kserve==0.21.0``, and each scenario is
a script run by that environment's Python against a server in this process.
The script prints what the client returned (or the exception it raised) as
JSON; the answers are compared with the model called here. The gRPC client
(``InferenceGRPCClient``) speaks OIP's ``GRPCInferenceService`` on the gRPC
inference port, its token in the ``authorization`` metadata.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import torch
import trio

from supervisor import ModelConfig, ServerConfig
from supervisor.server import BaseURLs, serve
from tests.docblocks import ROOT, run_by
from tests.docrunner import DocSession
from tests.helpers import FAST_RESTARTS
from tests.test_builtin_handlers import linear_model
from tests.test_kserve_v1 import linear_dir
from tests.test_security import read_keys, secure_config

pytestmark = pytest.mark.slow

KSERVE = "kserve==0.21.0"
VENV = Path(os.environ.get("KSERVE_CLIENT_VENV", Path(__file__).parents[1] / ".nox/kserve-client"))

TRIPLE_HANDLER = """
class Triple:
    def infer_tensors(self, requests, context):
        return [{"tripled": inputs["ids"] * 3 + 1} for inputs in requests]

    def handle(self, batch, context):
        return [{"plain": True} for _ in batch]
"""

LINEAR_OIP = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
    "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, 2]}],
}

REST_SCRIPT = """
import asyncio, json, sys

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

base, token = sys.argv[1], sys.argv[2]
auth = {"Authorization": f"Bearer {token}"}
X = np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]], dtype=np.float32)
IDS = np.array([[1, -2], [2**40, 0]], dtype=np.int64)


def outputs(response):
    return {
        "id": response.id,
        "model_name": response.model_name,
        "outputs": {
            o.name: [o.datatype, list(o.shape), o.as_numpy().tolist()] for o in response.outputs
        },
    }


async def refused(call):
    try:
        await call
    except httpx.HTTPStatusError as exc:
        return [exc.response.status_code, str(exc)]
    return "no exception"


def request(model, name, array, datatype, binary, rid=None):
    tensor = InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return InferRequest(model_name=model, infer_inputs=[tensor], request_id=rid)


async def main():
    seen = {}
    v2 = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    seen["v2 live"] = await v2.is_server_live(base)
    seen["v2 ready"] = await v2.is_server_ready(base)
    seen["v2 model ready"] = await v2.is_model_ready(base, "linear", headers=auth)
    for binary in (False, True):
        req = request("linear", "x", X, "FP32", binary, rid=f"r-{binary}")
        seen[f"fp32 binary={binary}"] = outputs(
            await v2.infer(base, req, model_name="linear", headers=dict(auth))
        )
        req = request("triple", "ids", IDS, "INT64", binary)
        seen[f"int64 binary={binary}"] = outputs(
            await v2.infer(base, req, model_name="triple", headers=dict(auth))
        )
    req = request("nope", "x", X, "FP32", False)
    seen["v2 unknown model"] = await refused(v2.infer(base, req, "nope", headers=dict(auth)))
    req = request("linear", "x", X, "FP32", False)
    req.inputs[0].shape = [2, 5]
    seen["v2 bad shape"] = await refused(v2.infer(base, req, "linear", headers=dict(auth)))
    req = request("linear", "x", X, "FP32", False)
    seen["v2 no token"] = await refused(v2.infer(base, req, "linear"))
    await v2.close()

    v1 = InferenceRESTClient(RESTConfig(protocol="v1", timeout=60))
    seen["v1 live"] = await v1.is_server_live(base)
    seen["v1 model ready"] = await v1.is_model_ready(base, "linear", headers=auth)
    body = {"instances": X.tolist()}
    seen["v1 predict"] = await v1.infer(base, body, model_name="linear", headers=auth)
    seen["v1 explain"] = await v1.explain(base, "linear", body, headers=auth)
    seen["v1 unknown model"] = await refused(v1.infer(base, body, "nope", headers=auth))
    seen["v1 bad body"] = await refused(v1.infer(base, {"rows": []}, "linear", headers=auth))
    await v1.close()
    print(json.dumps(seen))


asyncio.run(main())
"""


GRPC_SCRIPT = """
import asyncio, json, sys

import grpc
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest

url, token = sys.argv[1], sys.argv[2]
auth = (("authorization", f"Bearer {token}"),)
X = np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]], dtype=np.float32)
IDS = np.array([[1, -2], [2**40, 0]], dtype=np.int64)


def outputs(response):
    return {
        "id": response.id,
        "model_name": response.model_name,
        "outputs": {
            o.name: [o.datatype, list(o.shape), o.as_numpy().tolist()] for o in response.outputs
        },
    }


def request(model, name, array, datatype, raw, rid=None):
    tensor = InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=raw)
    return InferRequest(model_name=model, infer_inputs=[tensor], request_id=rid)


async def refused(call):
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return [exc.code().name, exc.details()]
    return "no exception"


async def main():
    seen = {}
    client = InferenceGRPCClient(url, timeout=60, retries=0)
    seen["live"] = await client.is_server_live(headers=auth)
    seen["ready"] = await client.is_server_ready(headers=auth)
    seen["model ready"] = await client.is_model_ready("linear", headers=auth)
    for raw in (False, True):
        req = request("linear", "x", X, "FP32", raw, rid=f"g-{raw}")
        seen[f"fp32 raw={raw}"] = outputs(await client.infer(req, headers=auth))
        req = request("triple", "ids", IDS, "INT64", raw)
        seen[f"int64 raw={raw}"] = outputs(await client.infer(req, headers=auth))
    req = request("nope", "x", X, "FP32", True)
    seen["unknown model"] = await refused(client.infer(req, headers=auth))
    req = request("linear", "x", X, "FP32", True)
    req.inputs[0].shape = [2, 5]
    seen["bad shape"] = await refused(client.infer(req, headers=auth))
    seen["no token"] = await refused(client.infer(request("linear", "x", X, "FP32", True)))
    await client.close()
    print(json.dumps(seen))


asyncio.run(main())
"""


def _kserve_installed(python: Path) -> bool:
    if not python.exists():
        return False
    check = "import importlib.metadata as m, kserve; print(m.version('kserve'))"
    found = subprocess.run([python, "-c", check], capture_output=True, text=True, check=False)
    return found.stdout.strip() == KSERVE.split("==")[1]


@pytest.fixture(scope="session")
def kserve_python() -> Path:
    """The Python of a virtual environment with kserve's client, made on first use."""
    python = VENV / "bin" / "python"
    if not _kserve_installed(python):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
        pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", KSERVE]
        subprocess.run(pip, check=True, timeout=1200)
    assert _kserve_installed(python), f"{KSERVE} did not install into {VENV}"
    return python


def client_models(tmp_path: Path, handler_dir) -> list[ModelConfig]:
    common: dict[str, Any] = {"startup_timeout": 120.0, "restart": FAST_RESTARTS}
    return [
        ModelConfig(
            name="linear",
            handler="tensor_handler",
            model_dir=str(linear_dir(tmp_path)),
            handler_config={"oip": LINEAR_OIP},
            **common,
        ),
        ModelConfig(
            name="triple",
            handler="triple",
            model_dir=str(handler_dir("triple", TRIPLE_HANDLER)),
            **common,
        ),
    ]


async def ready(base: str) -> None:
    """Wait until every model is READY (``/v2/health/ready``)."""
    async with httpx.AsyncClient(timeout=30) as client:
        with trio.fail_after(120):
            while True:
                if (await client.get(f"{base}/v2/health/ready")).status_code == 200:
                    return
                await trio.sleep(0.05)


async def started(nursery: trio.Nursery, config: ServerConfig) -> tuple[BaseURLs, trio.Event]:
    """A server in this process, its models READY; set the event to stop it."""
    shutdown = trio.Event()
    urls = await nursery.start(partial(serve, config, shutdown=shutdown, handle_signals=False))
    await ready(urls.inference)
    return urls, shutdown


def flat(rows: list[list[float]]) -> list[float]:
    return [value for row in rows for value in row]


async def run_script(python: Path, script: str, *args: str) -> dict[str, Any]:
    with trio.fail_after(300):
        done = await trio.run_process(
            [str(python), "-c", script, *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()[-4000:]
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


async def test_kserve_rest_client_v2_and_v1(nursery, tmp_path, handler_dir, kserve_python):
    config = secure_config(tmp_path, *client_models(tmp_path, handler_dir))
    urls, shutdown = await started(nursery, config)
    seen = await run_script(
        kserve_python, REST_SCRIPT, urls.inference, read_keys(config)["inference"]
    )
    shutdown.set()

    x = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]])
    with torch.no_grad():
        scores = linear_model()(x).tolist()
    assert seen["v2 live"] is True
    assert seen["v2 ready"] is True
    assert seen["v2 model ready"] is True
    for binary in (False, True):
        fp32 = seen[f"fp32 binary={binary}"]
        assert (fp32["id"], fp32["model_name"]) == (f"r-{binary}", "linear")
        [(name, (datatype, shape, data))] = fp32["outputs"].items()
        assert (name, datatype, shape) == ("scores", "FP32", [2, 2])
        assert flat(data) == pytest.approx(flat(scores), abs=1e-5)
        int64 = seen[f"int64 binary={binary}"]
        ids = [[1, -2], [2**40, 0]]
        assert int64["outputs"] == {
            "tripled": ["INT64", [2, 2], [[v * 3 + 1 for v in row] for row in ids]]
        }

    status, message = seen["v2 unknown model"]
    assert status == 404
    assert message.startswith("Model not found: nope, '404 Not Found'")
    status, message = seen["v2 bad shape"]
    assert status == 400
    assert "'x'" in message
    assert seen["v2 no token"][0] == 401

    assert seen["v1 live"] is True
    assert seen["v1 model ready"] is True
    for key, answer in (("predictions", seen["v1 predict"]), ("explanations", seen["v1 explain"])):
        assert list(answer) == [key]
        assert flat(answer[key]) == pytest.approx(flat(scores), abs=1e-5)
    status, message = seen["v1 unknown model"]
    assert (status, message.split(",")[0]) == (404, "Model not found: nope")
    status, message = seen["v1 bad body"]
    assert status == 400
    assert message.startswith('KServe v1: "instances" (or "inputs") must be a list')


async def test_kserve_grpc_client(nursery, tmp_path, handler_dir, kserve_python):
    models = client_models(tmp_path, handler_dir)
    config = secure_config(tmp_path, *models, grpc=True, grpc_inference_address="127.0.0.1:0")
    config = attrs.evolve(config, grpc_management_address="127.0.0.1:0")
    urls, shutdown = await started(nursery, config)
    key = read_keys(config)["inference"]
    seen = await run_script(kserve_python, GRPC_SCRIPT, urls.grpc_inference, key)
    shutdown.set()

    x = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]])
    with torch.no_grad():
        scores = linear_model()(x).tolist()
    assert (seen["live"], seen["ready"], seen["model ready"]) == (True, True, True)
    for raw in (False, True):
        fp32 = seen[f"fp32 raw={raw}"]
        assert (fp32["id"], fp32["model_name"]) == (f"g-{raw}", "linear")
        [(name, (datatype, shape, data))] = fp32["outputs"].items()
        assert (name, datatype, shape) == ("scores", "FP32", [2, 2])
        assert flat(data) == pytest.approx(flat(scores), abs=1e-5)
        ids = [[1, -2], [2**40, 0]]
        assert seen[f"int64 raw={raw}"]["outputs"] == {
            "tripled": ["INT64", [2, 2], [[v * 3 + 1 for v in row] for row in ids]]
        }
    assert seen["unknown model"][0] == "NOT_FOUND"
    assert "Model not found: nope" in seen["unknown model"][1]
    assert seen["bad shape"][0] == "INVALID_ARGUMENT"
    assert "'x'" in seen["bad shape"][1]
    assert seen["no token"][0] == "UNAUTHENTICATED"


async def test_the_protocols_kserve_v1_examples(nursery, tmp_path, kserve_python):
    """docs/protocols.md, KServe v1: the adder, with curl and with kserve's client.

    The page's ``python`` is the kserve environment's (the server is started
    with the test environment's Python, as every page's ``serve`` is).
    """
    session = DocSession(tmp_path, nursery)
    session.env["PATH"] = f"{kserve_python.parent}{os.pathsep}{session.env['PATH']}"
    await session.run(
        run_by(ROOT / "docs" / "protocols.md", "test_the_protocols_kserve_v1_examples")
    )
    await session.stop()
