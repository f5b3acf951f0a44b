"""The gRPC ports: grpcio's servers beside the trio loop, started and drained with HTTP's.

::

    run()                          a task of the server's listeners nursery
    ├── inference port (7070)      TorchServe's InferenceAPIsService, OIP's GRPCInferenceService
    └── management port (7071)     TorchServe's ManagementAPIsService

Each port is a ``grpc.server`` with a thread pool of its own (at most
``grpc_max_concurrent_calls`` calls at once, each holding a thread while it
waits; one more is refused with RESOURCE_EXHAUSTED rather than queued unseen;
the threads are started as calls need them); each call is bridged into
the trio loop (``supervisor.grpc.bridge``). ``run`` reports the bound addresses
(port 0 picks a free one) and, when ``shutdown`` is set, stops both servers with
``shutdown_grace``: new calls are refused, calls in flight get the grace to be
answered, then the rest are cancelled; the thread pools and grpcio's own
threads are joined, so no thread outlives ``run``. ``SO_REUSEPORT`` is off, so a port
that is taken fails the start (``ListenError``) instead of being shared.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from importlib import metadata
from pathlib import Path

import attrs
import grpc
import trio

from supervisor.api.management import ManagementContext
from supervisor.api.oip import Readiness
from supervisor.api.predict import Predictor
from supervisor.config import ConfigError, ServerConfig, split_address
from supervisor.grpc.management import ManagementService
from supervisor.grpc.oip import OipService
from supervisor.grpc.torchserve import InferenceService
from supervisor.http.listeners import ListenError
from supervisor.http.tls import server_context

__all__ = [
    "GRPCIO_THREADS",
    "GrpcAddresses",
    "GrpcServices",
    "run",
]

GRPCIO_THREADS = ("(_serve)", "(cancel_all_calls_after_grace)")
"""How the threads grpcio's server starts are named (``Thread-N (function)``)."""
JOIN_TIMEOUT = 5.0
"""Seconds a stopped server's own threads get to end (they end at once)."""


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
    token = trio.lowlevel.current_trio_token()
    inference = [InferenceService(token, services.management.sup, services.predictor).handler()]
    tokens = services.management.tokens
    oip = OipService(token, services.predictor, tokens, services.version, services.readiness)
    inference += oip.handlers()
    management = [ManagementService(token, services.management).handler()]
    credentials = _credentials(config)
    with contextlib.ExitStack() as stack:
        ports = [
            stack.enter_context(_port("inference", inference, config)),
            stack.enter_context(_port("management", management, config)),
        ]
        addresses = [
            port.bind(address, credentials)
            for port, address in zip(
                ports, (config.grpc_inference_address, config.grpc_management_address), strict=True
            )
        ]
        try:
            for port in ports:
                port.start()
            task_status.started(GrpcAddresses(*addresses))
            await shutdown.wait()
            await _stop(ports, config.shutdown_grace)
        finally:
            with trio.CancelScope(shield=True):
                await _stop(ports, 0)


@attrs.define
class _Port:
    """One grpcio server, its thread pool, and the threads grpcio starts for it."""

    name: str
    server: grpc.Server
    pool: ThreadPoolExecutor
    threads: list[threading.Thread] = attrs.field(factory=list)

    def start(self) -> None:
        """Start serving (grpcio starts its polling thread: noted, to be joined at ``stop``)."""
        self.threads += _started_by(self.server.start)

    def bind(self, address: str, credentials: grpc.ServerCredentials | None) -> str:
        """Bind ``address`` (port 0: a free one); the bound ``host:port``.

        Raises:
            ListenError: it cannot be bound.
        """
        try:
            if credentials is None:
                port = self.server.add_insecure_port(address)
            else:
                port = self.server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise ListenError(f"cannot listen on {address} (gRPC {self.name}): {exc}") from None
        if port == 0:  # older grpcio report a failed bind so
            raise ListenError(f"cannot listen on {address} (gRPC {self.name})")
        host = address.rpartition(":")[0]
        return f"{host}:{port}"

    def stop(self, grace: float) -> None:
        """Refuse new calls, give those in flight ``grace`` seconds, then join the threads."""
        done: list[threading.Event] = []
        self.threads += _started_by(lambda: done.append(self.server.stop(grace)))
        done[0].wait()
        self.pool.shutdown(wait=True, cancel_futures=True)
        for thread in self.threads:
            thread.join(JOIN_TIMEOUT)  # each ends as soon as the server has stopped


@contextlib.contextmanager
def _port(
    name: str, handlers: Sequence[grpc.GenericRpcHandler], config: ServerConfig
) -> Iterator[_Port]:
    threads = config.grpc_max_concurrent_calls
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"grpc-{name}")
    options = [
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", config.max_request_size),
    ]
    server = grpc.server(
        pool, handlers=list(handlers), options=options, maximum_concurrent_rpcs=threads
    )
    port = _Port(name, server, pool)
    try:
        yield port
    finally:
        port.stop(0)


def _started_by(fn: Callable[[], object]) -> list[threading.Thread]:
    """grpcio's threads that ``fn`` started (grpcio never joins them)."""
    before = set(threading.enumerate())
    fn()
    new = [t for t in threading.enumerate() if t not in before]
    return [t for t in new if t.name.endswith(GRPCIO_THREADS)]


async def _stop(ports: Sequence[_Port], grace: float) -> None:
    """Stop every port at once (each in a thread: ``stop`` blocks until it is over)."""
    async with trio.open_nursery() as nursery:
        for port in ports:
            stop = partial(trio.to_thread.run_sync, port.stop, grace, abandon_on_cancel=grace > 0)
            nursery.start_soon(stop)


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
