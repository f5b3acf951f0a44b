"""Open Inference Protocol v2 over gRPC, called with Triton's own client (``tritonclient``).

The server of tests/test_oip_infer.py (the built-in ``tensor_handler`` serving a
TorchScript ``Linear(3, 2)``, a handler echoing its tensors) with gRPC on:
health and metadata, inference with FP32, INT64 and BYTES inputs compared with
the model called in-process, errors as ``InferenceServerException`` with our
messages, tokens. Typed ``contents`` (which tritonclient never sends: it sends
raw contents) are sent with the client generated from TorchServe's proto, under
TorchServe's service name.
"""

from __future__ import annotations

from functools import partial

import grpc
import httpx
import numpy as np
import pytest
import trio
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from supervisor.grpc.protos import open_inference_grpc_pb2 as oip
from supervisor.grpc.protos import open_inference_grpc_pb2_grpc as oip_grpc
from supervisor.server import serve
from tests.test_grpc import LOCAL0
from tests.test_oip_infer import LINEAR_OIP, in_process, oip_models
from tests.test_security import read_keys, secure_config

pytestmark = pytest.mark.slow


@pytest.fixture
async def served(nursery, tmp_path, handler_dir):
    config = secure_config(
        tmp_path,
        *oip_models(tmp_path, handler_dir),
        grpc=True,
        grpc_inference_address=LOCAL0,
        grpc_management_address=LOCAL0,
    )
    shutdown = trio.Event()
    urls = await nursery.start(partial(serve, config, shutdown=shutdown, handle_signals=False))
    client = triton.InferenceServerClient(urls.grpc_inference)
    keys = read_keys(config)
    headers = {"authorization": f"Bearer {keys['inference']}"}
    with trio.fail_after(120):
        for name in ("linear", "echo", "ts"):
            while not await trio.to_thread.run_sync(  # noqa: ASYNC110
                partial(client.is_model_ready, name, headers=headers)
            ):
                await trio.sleep(0.05)
    yield client, headers, urls
    client.close()
    shutdown.set()


def raised(fn, *args, **kwargs) -> InferenceServerException:
    try:
        fn(*args, **kwargs)
    except InferenceServerException as exc:
        return exc
    raise AssertionError(f"{fn} succeeded")


async def test_tritonclient_health_metadata_and_inference(served):
    client, headers, urls = served
    await trio.to_thread.run_sync(_health_and_metadata, client, headers)
    await trio.to_thread.run_sync(_inference, client, headers)
    await trio.to_thread.run_sync(_errors, client, headers)
    await trio.to_thread.run_sync(
        _typed_contents_under_torchserves_name, urls.grpc_inference, headers
    )
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{urls.metrics}/metrics")).text
    assert any(
        line.startswith("supervisor_request_latency_seconds_count")
        and 'protocol="oip-grpc"' in line
        and 'model_name="linear"' in line
        for line in metrics.splitlines()
    )


def _health_and_metadata(client: triton.InferenceServerClient, headers: dict[str, str]) -> None:
    assert client.is_server_live()  # probes need no token
    assert client.is_server_ready()
    assert client.is_model_ready("linear", headers=headers)
    server = client.get_server_metadata(headers=headers)
    assert server.name == "trio-supervisor"
    model = client.get_model_metadata("linear", headers=headers)
    assert (model.name, list(model.versions), model.platform) == (
        "linear",
        ["1.0"],
        "pytorch_torchserve",
    )
    declared = [
        {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in model.inputs
    ]
    assert declared == LINEAR_OIP["inputs"]


def _inference(client: triton.InferenceServerClient, headers: dict[str, str]) -> None:
    rows = np.array([[1.0, 2.0, 3.0], [-0.5, 0.25, 4.0]], dtype=np.float32)
    x = triton.InferInput("x", list(rows.shape), "FP32")
    x.set_data_from_numpy(rows)
    result = client.infer("linear", [x], headers=headers, request_id="r-1")
    assert result.get_response().id == "r-1"
    assert np.allclose(result.as_numpy("scores"), in_process(rows.tolist()), atol=1e-6)

    ints = np.array([[-(2**63), 0], [7, 2**63 - 1]], dtype=np.int64)
    words = np.array([b"hello", "\u00e9t\u00e9".encode(), b""], dtype=np.object_)
    a = triton.InferInput("a", list(ints.shape), "INT64")
    a.set_data_from_numpy(ints)
    b = triton.InferInput("b", [3], "BYTES")
    b.set_data_from_numpy(words)
    result = client.infer("echo", [a, b], headers=headers)
    assert result.as_numpy("a").dtype == np.int64
    assert (result.as_numpy("a") == ints).all()
    assert list(result.as_numpy("b")) == list(words)


def _errors(client: triton.InferenceServerClient, headers: dict[str, str]) -> None:
    refuse = triton.InferInput("refuse", [1], "INT32")
    refuse.set_data_from_numpy(np.array([1], dtype=np.int32))
    refused = raised(client.infer, "echo", [refuse], headers=headers)
    assert refused.message() == "echo: refused on request"
    assert refused.status() == "StatusCode.FAILED_PRECONDITION"  # 422: TorchServe's 4xx
    unknown = raised(client.infer, "nope", [refuse], headers=headers)
    assert (unknown.status(), unknown.message()) == (
        "StatusCode.NOT_FOUND",
        "Model not found: nope",
    )
    missing = raised(client.get_model_metadata, "nope", headers=headers)
    assert missing.status() == "StatusCode.NOT_FOUND"
    for call in (
        partial(client.infer, "echo", [refuse]),
        partial(client.get_model_metadata, "linear"),
        partial(client.get_server_metadata),
    ):
        denied = raised(call)
        assert denied.status() == "StatusCode.UNAUTHENTICATED"
        assert "Token Authorization failed" in denied.message()
    wrong = triton.InferInput("x", [1, 2], "FP32")  # the model takes 3 columns
    wrong.set_data_from_numpy(np.zeros((1, 2), dtype=np.float32))
    failed = raised(client.infer, "linear", [wrong], headers=headers)
    assert failed.status() != "StatusCode.OK"
    assert failed.message()


def _typed_contents_under_torchserves_name(target: str, headers: dict[str, str]) -> None:
    metadata = list(headers.items())
    with grpc.insecure_channel(target) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)  # TorchServe's package name
        x = oip.ModelInferRequest.InferInputTensor(
            name="x",
            datatype="FP32",
            shape=[1, 3],
            contents=oip.InferTensorContents(fp32_contents=[1.0, 2.0, 3.0]),
        )
        request = oip.ModelInferRequest(model_name="linear", inputs=[x])
        response = stub.ModelInfer(request, metadata=metadata)
        (scores,) = response.raw_output_contents
        got = np.frombuffer(scores, dtype="<f4").reshape(list(response.outputs[0].shape))
        assert np.allclose(got, in_process([[1.0, 2.0, 3.0]]), atol=1e-6)

        a = oip.ModelInferRequest.InferInputTensor(
            name="a",
            datatype="INT64",
            shape=[2],
            contents=oip.InferTensorContents(int64_contents=[5, -6]),
        )
        b = oip.ModelInferRequest.InferInputTensor(
            name="b",
            datatype="BYTES",
            shape=[1],
            contents=oip.InferTensorContents(bytes_contents=[b"xyz"]),
        )
        response = stub.ModelInfer(
            oip.ModelInferRequest(model_name="echo", inputs=[a, b]), metadata=metadata
        )
        names = [o.name for o in response.outputs]
        raws = dict(zip(names, response.raw_output_contents, strict=True))
        assert np.frombuffer(raws["a"], dtype="<i8").tolist() == [5, -6]
        assert raws["b"] == b"\x03\x00\x00\x00xyz"

        half = oip.ModelInferRequest.InferInputTensor(name="h", datatype="FP16", shape=[1])
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(
                oip.ModelInferRequest(model_name="echo", inputs=[half]), metadata=metadata
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "raw_input_contents" in caught.value.details()
        live = stub.ServerLive(oip.ServerLiveRequest())
        assert live.live
