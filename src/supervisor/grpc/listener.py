"""The gRPC ports: grpcio's asyncio servers in a thread of their own, started and drained by trio.

::

    run()                          a task of the server's listeners nursery
    ├── thread grpc-asyncio        grpcio's asyncio loop: both ports' servers
    │   ├── inference port (7070)  TorchServe's InferenceAPIsService, OIP's GRPCInferenceService
    │   └── management port (7071) TorchServe's ManagementAPIsService
    └── nursery                    each call's work in trio (``supervisor.grpc.bridge``)

Both ports are ``grpc.aio`` servers in one asyncio event loop, run by one
thread (``THREAD``) that ``run`` starts and joins. A call is an asyncio task
in that loop, which holds no thread while its work runs in trio; each port
serves at most ``grpc_max_concurrent_calls`` calls at once, and one more is
refused with RESOURCE_EXHAUSTED rather than queued unseen. ``run`` reports the
bound addresses (port 0 picks a free one) and, when ``shutdown`` is set, stops
both servers with ``shutdown_grace``: new calls are refused, calls in flight
get the grace to be answered, then the rest are cancelled (at once if ``run``
itself is cancelled); the loop's thread is joined, so no thread outlives
``run``. ``SO_REUSEPORT`` is off, so a port that is taken fails the start
(``ListenError``) instead of being shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import attrs
import grpc
import grpc.aio
import trio

from supervisor.api.management import ManagementContext
from supervisor.api.oip import Readiness
from supervisor.api.predict import Predictor
from supervisor.config import ConfigError, ServerConfig, split_address
from supervisor.grpc.bridge import Bridge
from supervisor.grpc.management import ManagementService
from supervisor.grpc.oip import OipService
from supervisor.grpc.torchserve import InferenceService
from supervisor.http.listeners import ListenError
from supervisor.http.tls import server_context

__all__ = ["THREAD", "GrpcAddresses", "GrpcServices", "run"]

THREAD = "grpc-asyncio"
"""The name of the thread that runs grpcio's asyncio loop."""

Handlers = list[grpc.GenericRpcHandler]


@attrs.frozen
class GrpcServices:
    """What the gRPC services work with.

    Attributes:
        predictor: the one prediction pipeline.
        management: what the management functions work with.
        readiness: what ``ServerReady`` weighs besides the models' states.
        version: the server's version (``ServerMetadata``).
    """

    predictor: Predictor
    management: ManagementContext
    readiness: Readiness
    version: str = attrs.field(factory=lambda: _installed_version())


@attrs.frozen
class GrpcAddresses:
    """The bound gRPC addresses (``host:port``, a gRPC target)."""

    inference: str
    management: str


async def run(
    services: GrpcServices,
    config: ServerConfig,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[GrpcAddresses] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve both gRPC ports until ``shutdown``, then drain them (see the module docstring).

    Raises:
        ListenError: a port cannot be bound.
        ConfigError: ``grpc_tls`` is on and the certificate or key cannot be read.
    """
    credentials = _credentials(config)
    async with trio.open_nursery() as calls:
        token = trio.lowlevel.current_trio_token()
        loop = _Loop(config, credentials, lambda bridge: _handlers(bridge, services), token, calls)
        thread = threading.Thread(target=loop.main, name=THREAD, daemon=True)
        thread.start()
        try:
            await loop.started.wait()
            if loop.error is not None:
                raise loop.error
            assert loop.addresses is not None
            task_status.started(loop.addresses)
            await shutdown.wait()
            loop.stop(config.shutdown_grace)
            await loop.stopped.wait()
        finally:
            with trio.CancelScope(shield=True):
                loop.stop(0)  # at once, if still serving
                await loop.stopped.wait()
                await trio.to_thread.run_sync(thread.join)  # it has returned
            calls.cancel_scope.cancel()  # work of calls already ended, if any is left


def _handlers(bridge: Bridge, services: GrpcServices) -> tuple[Handlers, Handlers]:
    """The inference port's and the management port's handlers."""
    ctx = services.management
    inference = [InferenceService(bridge, ctx.sup, services.predictor).handler()]
    oip = OipService(bridge, services.predictor, ctx.tokens, services.version, services.readiness)
    inference += oip.handlers()
    return inference, [ManagementService(bridge, ctx).handler()]


class _Loop:
    """grpcio's asyncio loop and both servers, run by ``main`` in a thread of their own.

    The trio side waits on ``started`` (then ``addresses`` or ``error`` is set)
    and ``stopped`` (the loop has ended), and calls ``stop``.
    """

    def __init__(
        self,
        config: ServerConfig,
        credentials: grpc.ServerCredentials | None,
        handlers: Callable[[Bridge], tuple[Handlers, Handlers]],
        token: trio.lowlevel.TrioToken,
        nursery: trio.Nursery,
    ) -> None:
        self.config = config
        self.credentials = credentials
        self.handlers = handlers
        self.token = token
        self.nursery = nursery
        self.started = trio.Event()
        self.stopped = trio.Event()
        self.addresses: GrpcAddresses | None = None
        self.error: Exception | None = None
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None  # set once serving
        self._grace: float | None = None  # the shortest grace asked for
        self._servers: list[grpc.aio.Server] = []
        self._done: asyncio.Event | None = None

    def main(self) -> None:
        """The thread: run the loop until both servers have stopped (this thread)."""
        try:
            asyncio.run(self._serve())
        except Exception as exc:  # a bug: reported to trio as the start's error
            self.error = self.error or exc
        finally:
            self._to_trio(self.started.set)
            self._to_trio(self.stopped.set)

    def stop(self, grace: float) -> None:
        """Stop both servers with ``grace`` seconds for the calls in flight (trio side).

        Asked before the servers have started, they stop as soon as they have.
        """
        with self._lock:
            self._grace = grace if self._grace is None else min(grace, self._grace)
            loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended
                loop.call_soon_threadsafe(self._stop_soon, grace)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        bridge = Bridge(self.token, self.nursery, loop)
        inference, management = self.handlers(bridge)
        addresses = (self.config.grpc_inference_address, self.config.grpc_management_address)
        try:
            bound = [
                self._bind(name, handlers, address)
                for name, handlers, address in zip(
                    ("inference", "management"), (inference, management), addresses, strict=True
                )
            ]
            for server in self._servers:
                await server.start()
        except ListenError as exc:
            self.error = exc
            await self._stop_all(0)
            return
        self.addresses = GrpcAddresses(*bound)
        with self._lock:
            self._loop = loop  # stop reaches the loop from now on
            grace = self._grace
        if grace is not None:  # asked while starting
            self._stop_soon(grace)
        self._to_trio(self.started.set)
        await self._done.wait()

    def _bind(self, name: str, handlers: Handlers, address: str) -> str:
        """A new server for ``handlers``, bound to ``address``; the bound ``host:port``.

        Raises:
            ListenError: it cannot be bound.
        """
        options = [
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", self.config.max_request_size),
        ]
        server = grpc.aio.server(
            handlers=handlers,
            options=options,
            maximum_concurrent_rpcs=self.config.grpc_max_concurrent_calls,
        )
        self._servers.append(server)
        try:
            if self.credentials is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, self.credentials)
        except RuntimeError as exc:
            raise ListenError(f"cannot listen on {address} (gRPC {name}): {exc}") from None
        if port == 0:  # older grpcio report a failed bind so
            raise ListenError(f"cannot listen on {address} (gRPC {name})")
        host = address.rpartition(":")[0]
        return f"{host}:{port}"

    def _stop_soon(self, grace: float) -> None:
        asyncio.get_running_loop().create_task(self._stop_all(grace))

    async def _stop_all(self, grace: float) -> None:
        """Stop both servers (a later, shorter grace cuts an earlier one short)."""
        await asyncio.gather(*(server.stop(grace) for server in self._servers))
        assert self._done is not None
        self._done.set()

    def _to_trio(self, fn: Callable[[], object]) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            self.token.run_sync_soon(fn)


def _installed_version() -> str:
    try:
        return metadata.version("trio-supervisor")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def _credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """The TLS credentials of ``grpc_tls`` (the HTTP ports' certificate and key), or None.

    The files pass the https ports' checks first (a key others may read, an
    encrypted key, a key that is not the certificate's, files that are not PEM).

    Raises:
        ConfigError: the files cannot be used (the message says why).
    """
    if not config.grpc_tls:
        return None
    https = f"https://{split_address(config.inference_address)[1]}"
    server_context(attrs.evolve(config, inference_address=https))  # the https ports' checks
    try:
        key = Path(config.private_key_file).read_bytes()
        chain = Path(config.certificate_file).read_bytes()
    except OSError as exc:
        raise ConfigError(f"grpc_tls: cannot read {exc.filename}: {exc.strerror}") from None
    return grpc.ssl_server_credentials([(key, chain)])
