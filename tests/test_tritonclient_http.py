"""Triton's own HTTP client (``tritonclient[http]``, sync, defaults) against a real server.

The client sends tensors with the binary tensor extension and asks for binary
outputs by default, so these tests exercise it as users run it: server and
model live/ready/metadata, inference with FP32, INT64 and BYTES inputs (answers
compared with the models called here), and errors raised as the client's
``InferenceServerException`` carrying our message. The sync client runs in a
worker thread (``trio.to_thread.run_sync``); the server runs in the test's
nursery with real workers and tokens on.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import trio

from supervisor import ModelConfig
from supervisor.server import serve
from tests.helpers import FAST_RESTARTS
from tests.test_builtin_handlers import torchscript_bytes
from tests.test_oip_infer import LINEAR_OIP, in_process, linear_dir
from tests.test_security import bearer, read_keys, secure_config

httpclient = pytest.importorskip("tritonclient.http")
triton_utils = pytest.importorskip("tritonclient.utils")

WORDS = """
import torch

class Words:
    def infer_tensors(self, requests, context):
        return [
            {
                "upper": [w.upper() for w in inputs["words"]],
                "length": torch.tensor([len(w) for w in inputs["words"]], dtype=torch.int64),
            }
            for inputs in requests
        ]

    def handle(self, batch, context):
        return [None for _ in batch]
"""


class Affine(torch.nn.Module):
    """An INT64 model: ``3 * x + 1``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 3 + 1


def affine_dir(root: Path) -> Path:
    directory = root / "affine"
    (directory / "MAR-INF").mkdir(parents=True)
    example = torch.zeros(1, 2, dtype=torch.int64)
    (directory / "affine.pt").write_bytes(torchscript_bytes(Affine(), example))
    manifest = {
        "runtime": "python",
        "model": {
            "modelName": "affine",
            "handler": "tensor_handler",
            "serializedFile": "affine.pt",
        },
    }
    (directory / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))
    return directory


def triton_models(tmp_path: Path, handler_dir) -> list[ModelConfig]:
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
            name="affine",
            handler="tensor_handler",
            model_dir=str(affine_dir(tmp_path)),
            handler_config={"handler": {"dtype": "int64"}},
            **common,
        ),
        ModelConfig(
            name="words",
            handler="words",
            model_dir=str(handler_dir("words", WORDS)),
            **common,
        ),
    ]


@pytest.fixture
async def triton(nursery, tmp_path, handler_dir):
    """A tritonclient for a real server, and the inference key's header.

    Pass ``headers=dict(auth)`` to ``infer``: the client adds its own headers to the
    dict it is given, so a shared one would carry a request's
    ``Inference-Header-Content-Length`` into the next.
    """
    config = secure_config(tmp_path, *triton_models(tmp_path, handler_dir), lean_http=True)
    shutdown = trio.Event()
    urls = await nursery.start(partial(serve, config, shutdown=shutdown, handle_signals=False))
    client = httpclient.InferenceServerClient(url=urls.inference.removeprefix("http://"))
    try:
        yield client, bearer(read_keys(config)["inference"])
    finally:
        client.close()
        shutdown.set()


def wait_ready(client: Any, within: float = 120.0) -> None:
    """Poll the server's readiness from the client's thread (all start-up models loaded)."""
    import time

    deadline = time.monotonic() + within
    while not client.is_server_ready():
        assert time.monotonic() < deadline, "the server did not become ready"
        time.sleep(0.05)


@pytest.mark.slow
async def test_tritonclient_health_and_metadata(triton):
    client, auth = triton

    def check() -> None:
        assert client.is_server_live()
        wait_ready(client)
        assert client.is_model_ready("linear", headers=auth)
        assert client.is_model_ready("linear", "1.0", headers=auth)
        assert not client.is_model_ready("nope", headers=auth)
        server = client.get_server_metadata(headers=auth)
        assert server["name"] == "trio-supervisor"
        metadata = client.get_model_metadata("linear", headers=auth)
        assert metadata["inputs"] == LINEAR_OIP["inputs"]
        assert metadata["outputs"] == LINEAR_OIP["outputs"]
        with pytest.raises(triton_utils.InferenceServerException, match="Model not found: nope"):
            client.get_model_metadata("nope", headers=auth)

    await trio.to_thread.run_sync(check)


@pytest.mark.slow
async def test_tritonclient_infers_fp32_int64_and_bytes(triton):
    client, auth = triton
    rows = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 4.0]], dtype=np.float32)
    ints = np.array([[1, -2], [2**40, 7]], dtype=np.int64)
    words = np.array([b"hello", b"", "grüße".encode()], dtype=np.object_)

    def check() -> None:
        wait_ready(client)
        x = httpclient.InferInput("x", list(rows.shape), "FP32")
        x.set_data_from_numpy(rows)  # binary data, the default
        result = client.infer("linear", [x], headers=dict(auth), request_id="r-1")
        assert result.get_response()["id"] == "r-1"
        assert np.allclose(result.as_numpy("scores"), in_process(rows.tolist()), atol=1e-6)

        json_x = httpclient.InferInput("x", list(rows.shape), "FP32")
        json_x.set_data_from_numpy(rows, binary_data=False)
        asked = [httpclient.InferRequestedOutput("scores", binary_data=False)]
        result = client.infer("linear", [json_x], outputs=asked, headers=dict(auth))
        assert np.allclose(result.as_numpy("scores"), in_process(rows.tolist()), atol=1e-6)

        n = httpclient.InferInput("x", list(ints.shape), "INT64")
        n.set_data_from_numpy(ints)
        result = client.infer("affine", [n], headers=dict(auth))
        (name,) = [o["name"] for o in result.get_response()["outputs"]]
        assert np.array_equal(result.as_numpy(name), Affine()(torch.from_numpy(ints)).numpy())

        w = httpclient.InferInput("words", [len(words)], "BYTES")
        w.set_data_from_numpy(words)
        result = client.infer("words", [w], headers=dict(auth))
        assert result.as_numpy("upper").tolist() == [w.upper() for w in words.tolist()]
        assert result.as_numpy("length").tolist() == [5, 0, 7]  # bytes, as the handler counts

    await trio.to_thread.run_sync(check)


@pytest.mark.slow
async def test_tritonclient_raises_our_errors(triton):
    client, auth = triton
    rows = np.ones((2, 3), dtype=np.float32)

    def check() -> None:
        wait_ready(client)
        x = httpclient.InferInput("x", [2, 3], "FP32")
        x.set_data_from_numpy(rows)
        with pytest.raises(triton_utils.InferenceServerException) as unknown:
            client.infer("nope", [x], headers=dict(auth))
        assert unknown.value.message() == "Model not found: nope"
        assert unknown.value.status() == "404"
        x.set_shape([4, 3])  # the data holds 6 elements, the shape says 12
        with pytest.raises(triton_utils.InferenceServerException) as shape:
            client.infer("linear", [x], headers=dict(auth))
        assert "input 'x': shape [4, 3] needs 12 FP32 elements" in shape.value.message()
        assert shape.value.status() == "400"
        with pytest.raises(triton_utils.InferenceServerException) as denied:
            client.infer("linear", [x])
        assert "Token Authorization failed" in denied.value.message()

    await trio.to_thread.run_sync(check)
