"""TorchServe's gRPC inference API (``InferenceAPIsService``) over ``Predictor.infer``.

``Predictions`` answers with the worker's body (a streamed answer's parts
joined); ``StreamPredictions`` sends each part of a streamed answer as it comes
(one message for an answer that is not streamed); ``StreamPredictions2`` answers
each request of the client's stream in turn, its failures as the message's
``status`` (as TorchServe does), and echoes ``sequence_id``. Each entry of the
request's ``input`` map is a parameter the handler gets as bytes, as a form
field over HTTP. The token is the ``authorization`` metadata (``Bearer <inference
key>``), checked by the pipeline; ``Ping`` needs none, as ``/ping``. Failures end
the call with the code of their HTTP status (``supervisor.grpc.status``) and the
same message.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
from google.protobuf import empty_pb2
from google.rpc import status_pb2

from supervisor.api.predict import (
    FIELD_TYPE,
    Call,
    Outcome,
    Predictor,
    Stream,
    StreamAborted,
    worker_fields,
)
from supervisor.errors import InvalidRequest
from supervisor.grpc.bridge import Bridge, Context, Rpc, abort
from supervisor.grpc.protos import inference_pb2 as pb
from supervisor.grpc.status import code_for, failure_message, metadata_headers
from supervisor.supervision.core import Supervisor

__all__ = ["SERVICE", "InferenceService", "client_address"]

SERVICE = "org.pytorch.serve.grpc.inference.InferenceAPIsService"
"""The service's full name (TorchServe's proto package)."""

_ENDED = "the call ended before its answer"


def client_address(peer: str) -> str:
    """The client's address of a gRPC peer string (``ipv4:127.0.0.1:5000`` -> ``127.0.0.1``)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    return rest or peer


class InferenceService:
    """The handlers of ``InferenceAPIsService``, run in grpcio's asyncio loop.

    Args:
        bridge: the way into the trio loop.
        sup: the supervisor (``Ping`` asks it for unhealthy models).
        predictor: the one prediction pipeline.
    """

    def __init__(self, bridge: Bridge, sup: Supervisor, predictor: Predictor) -> None:
        self.bridge = bridge
        self.sup = sup
        self.predictor = predictor

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's method handlers, for ``grpc.Server.add_generic_rpc_handlers``."""
        request = pb.PredictionsRequest.FromString
        reply = pb.PredictionResponse.SerializeToString
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Ping": grpc.unary_unary_rpc_method_handler(
                    self.ping,
                    empty_pb2.Empty.FromString,
                    pb.TorchServeHealthResponse.SerializeToString,
                ),
                "Predictions": grpc.unary_unary_rpc_method_handler(
                    self.predictions, request, reply
                ),
                "StreamPredictions": grpc.unary_stream_rpc_method_handler(
                    self.stream_predictions, request, reply
                ),
                "StreamPredictions2": grpc.stream_stream_rpc_method_handler(
                    self.stream_predictions2, request, reply
                ),
            },
        )

    async def ping(self, request: empty_pb2.Empty, context: Context) -> pb.TorchServeHealthResponse:
        """TorchServe's health as JSON: ``Healthy``, or ``Unhealthy`` with the failed models."""
        del request
        failed = await self.bridge.rpc(context).run(_unhealthy, self.sup)
        body = {"status": "Unhealthy", "failedModels": failed} if failed else {"status": "Healthy"}
        return pb.TorchServeHealthResponse(health=json.dumps(body, indent=2))

    async def predictions(
        self, request: pb.PredictionsRequest, context: Context
    ) -> pb.PredictionResponse:
        """One prediction; a streamed answer's parts joined."""
        rpc = self.bridge.rpc(context)
        outcome = await self._infer(rpc, request)
        if outcome.stream is None:
            return pb.PredictionResponse(prediction=await _body(outcome, context))
        parts = [part async for part in _parts(rpc, outcome.stream, context)]
        return pb.PredictionResponse(prediction=b"".join(parts))

    async def stream_predictions(
        self, request: pb.PredictionsRequest, context: Context
    ) -> AsyncIterator[pb.PredictionResponse]:
        """One prediction, each part of a streamed answer as a message of its own."""
        rpc = self.bridge.rpc(context)
        outcome = await self._infer(rpc, request)
        if outcome.stream is None:
            yield pb.PredictionResponse(prediction=await _body(outcome, context))
            return
        async for part in _parts(rpc, outcome.stream, context):
            yield pb.PredictionResponse(prediction=part)

    async def stream_predictions2(
        self, requests: AsyncIterator[pb.PredictionsRequest], context: Context
    ) -> AsyncIterator[pb.PredictionResponse]:
        """Each request of the client's stream in turn; failures as the message's ``status``."""
        rpc = self.bridge.rpc(context)
        async for request in requests:
            sequence = request.sequence_id if request.HasField("sequence_id") else None
            outcome = await self._infer(rpc, request)
            if outcome.stream is not None:
                async for part in _parts(rpc, outcome.stream, context):
                    yield pb.PredictionResponse(prediction=part, sequence_id=sequence)
            elif outcome.reply is not None and outcome.reply.ok:
                yield pb.PredictionResponse(prediction=outcome.reply.body, sequence_id=sequence)
            else:
                status = status_pb2.Status(
                    code=code_for(outcome.status).value[0], message=outcome.message
                )
                yield pb.PredictionResponse(sequence_id=sequence, status=status)

    async def _infer(self, rpc: Rpc, request: pb.PredictionsRequest) -> Outcome:
        """Run the request through the pipeline (aborts the call if it ended first)."""
        headers = metadata_headers(rpc.context.invocation_metadata())
        fields = worker_fields(headers, client_address(rpc.context.peer()))
        inputs = {name: (FIELD_TYPE, value) for name, value in request.input.items()}

        def params() -> dict[str, tuple[str, bytes]]:
            if not request.model_name:
                raise InvalidRequest("Parameter model_name is required.")
            return inputs

        async def infer() -> Outcome:
            call = Call(
                request.model_name,
                request.model_version or None,
                fields,
                params,
                protocol="grpc",
                deadline=rpc.deadline(),
                gone=rpc.gone,
            )
            return await self.predictor.infer(call)

        outcome = await rpc.run(infer)
        if outcome is None:
            await abort(rpc.context, grpc.StatusCode.CANCELLED, _ENDED)
        return outcome


async def _unhealthy(sup: Supervisor) -> list[str]:
    return list(sup.unhealthy_models())


async def _body(outcome: Outcome, context: Context) -> bytes:
    """A reply's body; a failure or an error ends the call with its code and message."""
    if outcome.reply is not None and outcome.reply.ok:
        return outcome.reply.body
    await abort(context, code_for(outcome.status), failure_message(outcome.error, outcome.message))


async def _parts(rpc: Rpc, stream: Stream, context: Context) -> AsyncIterator[bytes]:
    """The parts of a streamed answer as they come; one that breaks off ends the call."""
    try:
        while (part := await rpc.run(stream.next_chunk)) is not None:
            yield part
    except StreamAborted as exc:
        await abort(context, grpc.StatusCode.INTERNAL, str(exc))
    finally:
        rpc.run_soon(stream.close)
