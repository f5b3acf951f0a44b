"""TorchServe's gRPC management API (``ManagementAPIsService``) over the REST implementation.

Each call does what its REST route does, through the same functions of
``supervisor.api.management``, and answers ``ManagementResponse.msg``: the REST
answer's ``status`` text, or for ``DescribeModel`` and ``ListModels`` its JSON
(indented, as TorchServe's). The ``authorization`` metadata must carry the
management key (else UNAUTHENTICATED); with the model API off, ``RegisterModel``
and ``UnregisterModel`` fail with PERMISSION_DENIED, as TorchServe's. Numbers
left at 0 take TorchServe's defaults (``min_worker`` 1, ``max_worker`` =
``min_worker``; registration's are the REST defaults). A synchronous call waits
for its workers until shortly before the client's deadline, then answers that
they are still starting.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from supervisor.api.management import (
    ManagementContext,
    describe_models,
    list_models,
    register_model,
    require_model_api,
    scale_workers,
    set_default_version,
    unregister_model,
)
from supervisor.errors import InvalidRequest, SupervisorError
from supervisor.grpc.bridge import Bridge, Context, Rpc, abort
from supervisor.grpc.protos import management_pb2 as pb
from supervisor.grpc.status import code_for, failure_message, token_accepted
from supervisor.http.replies import TOKEN_FAILED

__all__ = ["SERVICE", "SYNC_MARGIN", "ManagementService"]

log = logging.getLogger("supervisor.grpc")

SERVICE = "org.pytorch.serve.grpc.management.ManagementAPIsService"
"""The service's full name (TorchServe's proto package)."""

SYNC_MARGIN = 0.5
"""Seconds before the client's deadline that a synchronous call answers "still starting"."""

Work = Callable[[Rpc], Awaitable[str]]
Handler = Callable[..., Awaitable[pb.ManagementResponse]]


class ManagementService:
    """The handlers of ``ManagementAPIsService``, run in grpcio's asyncio loop.

    Args:
        bridge: the way into the trio loop.
        ctx: what the management routes work with (supervisor, config, keys).
    """

    def __init__(self, bridge: Bridge, ctx: ManagementContext) -> None:
        self.bridge = bridge
        self.ctx = ctx

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's method handlers, for ``grpc.Server.add_generic_rpc_handlers``."""
        methods: dict[
            str, tuple[Callable[..., Awaitable[pb.ManagementResponse]], type[Message]]
        ] = {
            "DescribeModel": (self.describe_model, pb.DescribeModelRequest),
            "ListModels": (self.list_models, pb.ListModelsRequest),
            "RegisterModel": (self.register_model, pb.RegisterModelRequest),
            "ScaleWorker": (self.scale_worker, pb.ScaleWorkerRequest),
            "SetDefault": (self.set_default, pb.SetDefaultRequest),
            "UnregisterModel": (self.unregister_model, pb.UnregisterModelRequest),
        }
        reply = pb.ManagementResponse.SerializeToString
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(fn, kind.FromString, reply)
            for name, (fn, kind) in methods.items()
        }
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    async def describe_model(
        self, request: pb.DescribeModelRequest, context: Context
    ) -> pb.ManagementResponse:
        """Each version's description, as ``GET /models/{name}[/{version}]``."""

        async def work(rpc: Rpc) -> str:
            version = request.model_version or None
            body = await describe_models(
                self.ctx.sup, request.model_name, version, customized=request.customized
            )
            return _json(body)

        return await self._answer(context, work)

    async def list_models(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ManagementResponse:
        """A page of the registered models, as ``GET /models``."""

        async def work(rpc: Rpc) -> str:
            return _json(list_models(self.ctx.sup, request.limit, request.next_page_token))

        return await self._answer(context, work)

    async def register_model(
        self, request: pb.RegisterModelRequest, context: Context
    ) -> pb.ManagementResponse:
        """Register a model, as ``POST /models`` (PERMISSION_DENIED with the model API off)."""

        async def work(rpc: Rpc) -> str:
            require_model_api(self.ctx.config)
            answered = await register_model(self.ctx, _registration(request), _sync_until(rpc))
            return str(answered.body["status"])

        return await self._answer(context, work)

    async def scale_worker(
        self, request: pb.ScaleWorkerRequest, context: Context
    ) -> pb.ManagementResponse:
        """Scale a version's workers, as ``PUT /models/{name}[/{version}]``."""

        async def work(rpc: Rpc) -> str:
            low = request.min_worker if request.min_worker > 0 else 1
            high = request.max_worker if request.max_worker > 0 else low
            answered = await scale_workers(
                self.ctx.sup,
                request.model_name,
                request.model_version or None,
                low,
                high,
                request.synchronous,
                _sync_until(rpc),
            )
            return str(answered.body["status"])

        return await self._answer(context, work)

    async def set_default(
        self, request: pb.SetDefaultRequest, context: Context
    ) -> pb.ManagementResponse:
        """Make a version the default, as ``PUT /models/{name}/{version}/set-default``."""

        async def work(rpc: Rpc) -> str:
            name, version = request.model_name, request.model_version
            body = await set_default_version(self.ctx, name, version, None, retire_old=False)
            return str(body["status"])

        return await self._answer(context, work)

    async def unregister_model(
        self, request: pb.UnregisterModelRequest, context: Context
    ) -> pb.ManagementResponse:
        """Unregister a version, as ``DELETE /models/{name}[/{version}]``."""

        async def work(rpc: Rpc) -> str:
            require_model_api(self.ctx.config)
            if not request.model_name:
                raise InvalidRequest("Parameter model_name is required.")
            grace = self.ctx.config.shutdown_grace
            version = request.model_version or None
            body = await unregister_model(self.ctx.sup, request.model_name, version, grace=grace)
            return str(body["status"])

        return await self._answer(context, work)

    async def _answer(self, context: Context, work: Work) -> pb.ManagementResponse:
        """Check the key, run ``work`` in trio, and answer its text (or end with its error)."""
        if not token_accepted(context.invocation_metadata(), self.ctx.tokens, "management"):
            await abort(context, grpc.StatusCode.UNAUTHENTICATED, TOKEN_FAILED)
        rpc = self.bridge.rpc(context)
        try:
            text = await rpc.run(work, rpc)
        except SupervisorError as exc:
            await abort(context, code_for(exc.status), failure_message(exc, exc.message))
        except Exception as exc:  # a bug: INTERNAL for this call; the server stays
            log.exception("gRPC management call failed")
            await abort(context, grpc.StatusCode.INTERNAL, f"internal error: {exc!r}")
        if text is None:
            await abort(context, grpc.StatusCode.CANCELLED, "the call ended before its answer")
        return pb.ManagementResponse(msg=text)


def _json(body: Any) -> str:
    return json.dumps(body, indent=2)


def _sync_until(rpc: Rpc) -> float:
    """Until when a synchronous call waits for workers: shortly before the client's deadline."""
    return rpc.deadline() - SYNC_MARGIN


def _registration(request: pb.RegisterModelRequest) -> dict[str, Any]:
    """The registration parameters a request sets (TorchServe: 0 and "" are unset)."""
    params: dict[str, Any] = {"url": request.url, "synchronous": request.synchronous}
    for key in ("model_name", "handler", "runtime"):
        if getattr(request, key):
            params[key] = getattr(request, key)
    for key in (
        "batch_size",
        "initial_workers",
        "max_batch_delay",
        "response_timeout",
        "startup_timeout",
    ):
        if getattr(request, key) > 0:
            params[key] = getattr(request, key)
    return params
