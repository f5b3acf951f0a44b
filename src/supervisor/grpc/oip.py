"""Open Inference Protocol v2 over gRPC (``GRPCInferenceService``) on the inference port.

The service answers under two names: ``inference.GRPCInferenceService``, the
KServe and Triton proto's (what OIP clients such as ``tritonclient`` call), and
``org.pytorch.serve.grpc.openinference.GRPCInferenceService``, the package
TorchServe's copy of the proto gives it. The messages are the same on the wire.

Health and metadata come from the REST renderers (``supervisor.api.oip``):
``ServerLive`` and ``ServerReady`` need no token (probes); ``ModelReady``,
``ServerMetadata`` and ``ModelMetadata`` need the inference key, as over REST.
``ModelInfer`` goes through ``Predictor.infer`` with the tensor codec
(``supervisor.api.oipcodec``): inputs as typed ``contents`` (by datatype:
``bool``, ``int`` for INT8 to INT32, ``int64``, ``uint`` for UINT8 to UINT32,
``uint64``, ``fp32``, ``fp64``, ``bytes``) or as ``raw_input_contents`` (every
datatype, FP16 and BF16 included); outputs always as ``raw_output_contents``.
A handler's answer that holds no tensors is an INTERNAL error (gRPC has no
other shape for it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import grpc
from google.protobuf.message import Message

from supervisor.api.oip import (
    Readiness,
    model_metadata,
    model_ready,
    server_metadata,
    server_ready,
)
from supervisor.api.oipcodec import OIP_FIELD, Request, decode_reply, decode_split, render_split
from supervisor.api.predict import Call, Outcome, Predictor, settled, worker_fields
from supervisor.auth import Tokens
from supervisor.errors import InvalidRequest, SupervisorError
from supervisor.grpc.bridge import Bridge, Context, Rpc, abort
from supervisor.grpc.protos import open_inference_grpc_pb2 as pb
from supervisor.grpc.status import code_for, failure_message, metadata_headers, token_accepted
from supervisor.grpc.torchserve import client_address
from supervisor.http.replies import TOKEN_FAILED

__all__ = ["PROTOCOL", "SERVICES", "OipService"]

Handler = Callable[..., Awaitable[Message]]

PROTOCOL = "oip-grpc"
SERVICES = (
    "inference.GRPCInferenceService",
    "org.pytorch.serve.grpc.openinference.GRPCInferenceService",
)
"""The names the service answers under: KServe's and TorchServe's."""

_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
"""Each datatype's typed contents field (FP16 and BF16 have none: raw only)."""


class OipService:
    """The handlers of ``GRPCInferenceService``, run in grpcio's asyncio loop.

    Args:
        bridge: the way into the trio loop.
        predictor: the one prediction pipeline (its supervisor gives the states).
        tokens: the keys, if authorization is on.
        version: the server's version (``ServerMetadata``).
        readiness: what ``ServerReady`` weighs besides the models' states.
    """

    def __init__(
        self,
        bridge: Bridge,
        predictor: Predictor,
        tokens: Tokens | None,
        version: str,
        readiness: Readiness,
    ) -> None:
        self.bridge = bridge
        self.predictor = predictor
        self.tokens = tokens
        self.version = version
        self.readiness = readiness

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        """The method handlers, once per service name."""
        methods: dict[
            str, tuple[Callable[..., Awaitable[Message]], type[Message], type[Message]]
        ] = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": (
                self.server_metadata,
                pb.ServerMetadataRequest,
                pb.ServerMetadataResponse,
            ),
            "ModelMetadata": (
                self.model_metadata,
                pb.ModelMetadataRequest,
                pb.ModelMetadataResponse,
            ),
            "ModelInfer": (self.model_infer, pb.ModelInferRequest, pb.ModelInferResponse),
        }
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                fn, request.FromString, response.SerializeToString
            )
            for name, (fn, request, response) in methods.items()
        }
        return [grpc.method_handlers_generic_handler(name, handlers) for name in SERVICES]

    async def server_live(
        self, request: pb.ServerLiveRequest, context: Context
    ) -> pb.ServerLiveResponse:
        """Live: answering at all (no token)."""
        return pb.ServerLiveResponse(live=True)

    async def server_ready(
        self, request: pb.ServerReadyRequest, context: Context
    ) -> pb.ServerReadyResponse:
        """Ready as ``/v2/health/ready`` says (no token)."""
        r = self.readiness
        stats = await self._run(context, _statistics, self.predictor)
        _, body = server_ready(stats, mode=r.mode, missing=r.missing, stopping=r.stopping.is_set())
        return pb.ServerReadyResponse(ready=body["ready"])

    async def model_ready(
        self, request: pb.ModelReadyRequest, context: Context
    ) -> pb.ModelReadyResponse:
        """Whether a model version is READY; NOT_FOUND for an unknown one."""
        await self._authorize(context)
        stats = await self._run(context, _statistics, self.predictor)
        status, body = model_ready(stats, request.name, request.version or None)
        if status == 404:
            await abort(context, grpc.StatusCode.NOT_FOUND, body["error"])
        return pb.ModelReadyResponse(ready=body["ready"])

    async def server_metadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        """The server's name, version and (no) extensions."""
        await self._authorize(context)
        return pb.ServerMetadataResponse(**server_metadata(self.version))

    async def model_metadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        """A model's name, versions, platform and tensors; NOT_FOUND for an unknown one."""
        await self._authorize(context)
        stats = await self._run(context, _statistics, self.predictor)
        status, body = model_metadata(stats, request.name, request.version or None)
        if status == 404:
            await abort(context, grpc.StatusCode.NOT_FOUND, body["error"])
        tensors = {key: [_tensor_metadata(t) for t in body[key]] for key in ("inputs", "outputs")}
        return pb.ModelMetadataResponse(
            name=body["name"], versions=body["versions"], platform=body["platform"], **tensors
        )

    async def model_infer(
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse:
        """One inference through the pipeline; outputs as ``raw_output_contents``."""
        rpc = self.bridge.rpc(context)
        headers = metadata_headers(context.invocation_metadata())
        fields = worker_fields(headers, client_address(context.peer()))
        fields[OIP_FIELD] = "v2"
        response = await rpc.run(self._infer, rpc, request, fields)
        if response is None:
            await abort(context, grpc.StatusCode.CANCELLED, "the call ended before its answer")
        if isinstance(response, _Failed):
            await abort(context, code_for(response.status), response.message)
        return response

    async def _infer(
        self, rpc: Rpc, request: pb.ModelInferRequest, fields: dict[str, str]
    ) -> pb.ModelInferResponse | _Failed:
        """Infer, then render the worker's tensors; or why the request failed."""
        decoded: list[Request] = []

        def params() -> dict[str, tuple[str, bytes]]:
            decoded.append(decode_split(_header(request), list(request.raw_input_contents)))
            return decoded[0].params

        model, version = request.model_name, request.model_version or None
        deadline = rpc.deadline()
        call = Call(model, version, fields, params, PROTOCOL, deadline=deadline, gone=rpc.gone)
        answer = await _answer(await self.predictor.infer(call))
        if isinstance(answer, _Failed):
            return answer
        body, content_type = answer
        try:
            tensors = decode_reply(body, content_type)
            if tensors is None:
                return _Failed(500, f"the model's answer holds no OIP tensors: {body[:200]!r}")
            served = self._served(model, version)
            head, raws = render_split(decoded[0], tensors, model=model, version=served)
        except InvalidRequest as exc:
            return _Failed(exc.status, exc.message)
        outputs = [pb.ModelInferResponse.InferOutputTensor(**o) for o in head["outputs"]]
        return pb.ModelInferResponse(
            model_name=head["model_name"],
            model_version=head.get("model_version", ""),
            id=head.get("id", ""),
            outputs=outputs,
            raw_output_contents=raws,
        )

    def _served(self, model: str, version: str | None) -> str | None:
        try:
            return self.predictor.sup.pool(model, version).config.version or None
        except SupervisorError:
            return version

    async def _authorize(self, context: Context) -> None:
        if not token_accepted(context.invocation_metadata(), self.tokens, "inference"):
            await abort(context, grpc.StatusCode.UNAUTHENTICATED, TOKEN_FAILED)

    async def _run(self, context: Context, fn: Callable[..., Any], *args: Any) -> Any:
        result = await self.bridge.rpc(context).run(fn, *args)
        if result is None:
            await abort(context, grpc.StatusCode.CANCELLED, "the call ended before its answer")
        return result


async def _statistics(predictor: Predictor) -> Any:
    return predictor.sup.statistics()


@attrs.frozen
class _Failed:
    """Why an inference failed: the HTTP status (mapped to a gRPC code) and the message."""

    status: int
    message: str


async def _answer(outcome: Outcome) -> tuple[bytes, str] | _Failed:
    """The worker's answer (a stream's parts joined) and its content type, or the failure."""
    outcome = await settled(outcome)
    if outcome.reply is None or not outcome.reply.ok:
        return _Failed(outcome.status, failure_message(outcome.error, outcome.message))
    return outcome.reply.body, outcome.reply.content_type


def _header(request: pb.ModelInferRequest) -> dict[str, Any]:
    """The request's fields as the JSON request has them (typed contents as ``data``).

    Raises:
        InvalidRequest: an input without raw contents whose datatype has no typed field.
    """
    inputs = []
    for tensor in request.inputs:
        spec: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if not request.raw_input_contents:
            spec["data"] = _contents(tensor)
        inputs.append(spec)
    header: dict[str, Any] = {"inputs": inputs}
    if request.id:
        header["id"] = request.id
    if request.outputs:
        header["outputs"] = [{"name": o.name} for o in request.outputs]
    return header


def _contents(tensor: pb.ModelInferRequest.InferInputTensor) -> list[Any]:
    field = _CONTENTS.get(tensor.datatype)
    if field is None:
        raise InvalidRequest(
            f"input '{tensor.name}': {tensor.datatype} has no typed contents; "
            "send it in raw_input_contents"
        )
    return list(getattr(tensor.contents, field))


def _tensor_metadata(spec: dict[str, Any]) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec["name"], datatype=spec["datatype"], shape=spec["shape"]
    )
