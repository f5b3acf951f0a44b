"""The composition root: supervisor, HTTP listeners and signals in one nursery tree.

::

    root nursery
    ├── signal watcher (SIGTERM -> not ready, pre-stop delay, graceful shutdown;
    │   SIGINT -> graceful shutdown; a second one -> now)
    └── supervisor nursery (outlives HTTP, so in-flight requests can finish)
        ├── pool per model version -> slot per worker -> worker incarnation
        └── HTTP nursery: the lean server for inference (or Hypercorn with
            ``lean_http = false``), Hypercorn for management and metrics; with
            ``grpc``, the gRPC ports (grpcio's asyncio servers, calls bridged into trio)

Workers are spawned before the listeners open, so the interpreter start-up of
the workers overlaps with the server's own. On SIGTERM the server first stops
being ready (``/v2/health/ready`` answers 503 and every answer carries
``Connection: close``) while it keeps serving for ``pre_stop_delay`` seconds,
so that a load balancer takes it out before it stops accepting. Then, as on
SIGINT or when the caller's ``shutdown`` is set, the listeners stop accepting,
requests in flight get ``shutdown_grace`` seconds to be answered (after that,
queued ones get 503), then the workers are stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import ssl
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio

from supervisor.api.apps import Apps, build_apps
from supervisor.api.fastpath import FastRoutes
from supervisor.api.management import ManagementContext
from supervisor.api.oip import Readiness
from supervisor.api.predict import Predictor
from supervisor.auth import Tokens, read_key_file, remove_key_file, write_key_file
from supervisor.config import DEFAULT_MODEL, ConfigError, ModelConfig, ServerConfig, name_from_url
from supervisor.errors import SupervisorError, WorkerStartFailed
from supervisor.http.listeners import serve_asgi_port, serve_lean_port
from supervisor.http.tls import server_context
from supervisor.logsetup import open_log_files
from supervisor.models.archive import remove_paths
from supervisor.models.registration import Registration, prepare_model
from supervisor.models.sweep import open_scratch, sweep_leftovers
from supervisor.runner.readyfile import (
    FAILED,
    READY,
    ModelOutcome,
    ReadyReport,
    remove_ready_file,
    write_ready_file,
)
from supervisor.supervision.core import Supervisor, open_supervisor
from supervisor.supervision.metrics import Metrics
from supervisor.supervision.pool import Pool
from supervisor.supervision.process import Launcher
from supervisor.supervision.snapshot import Restored
from supervisor.supervision.snapshotdir import SnapshotDir

__all__ = ["BaseURLs", "serve"]

log = logging.getLogger("supervisor.server")

IRIS_EXAMPLE = "[5.1, 3.5, 1.4, 0.2]"
_IDENTITY = frozenset({"name", "version", "handler", "url", "model_dir"})


@attrs.frozen
class BaseURLs:
    """The base URLs the server listens on (the gRPC ones ``host:port``, empty when off)."""

    inference: str
    management: str
    metrics: str
    grpc_inference: str = ""
    grpc_management: str = ""


async def serve(
    config: ServerConfig,
    *,
    shutdown: trio.Event | None = None,
    handle_signals: bool = True,
    launcher: Launcher | None = None,
    ready_file: str | Path | None = None,
    restore_snapshot: bool = True,
    task_status: trio.TaskStatus[BaseURLs] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the server until ``shutdown`` is set (or SIGTERM/SIGINT arrives).

    Args:
        config: listeners and models.
        shutdown: set it to start a graceful shutdown at once (no pre-stop delay:
            a caller that wants one stops being ready first by other means).
        handle_signals: capture SIGTERM (with ``config.pre_stop_delay``) and
            SIGINT (only in the main thread).
        launcher: starts worker processes.
        ready_file: where to write the ready file once start-up is over (see
            ``supervisor.runner.readyfile``); removed when the server stops.
        restore_snapshot: with ``config.config_snapshots``, load the models of the
            newest good config snapshot instead of ``config.models`` (the CLI turns
            it off when ``--ts-config`` has a ``model_snapshot`` of its own).
        task_status: receives the ``BaseURLs`` once every listener is bound.

    Raises:
        ConfigError: an https address's certificate or key cannot be used, or
            the ``keys_from`` file cannot be read.
    """
    shutdown = trio.Event() if shutdown is None else shutdown
    stopping = trio.Event()  # not ready, answers close their connections
    tls = server_context(config)  # a bad certificate or key refuses before anything starts
    async with trio.open_nursery() as root:
        root.start_soon(_stopping_on, shutdown, stopping)
        if handle_signals:
            watch = partial(_watch_signals, shutdown, root.cancel_scope, stopping)
            await root.start(watch, config.pre_stop_delay)
        await trio.to_thread.run_sync(sweep_leftovers)  # what a killed server left behind
        with (
            open_log_files(config),
            open_scratch() as scratch,
            _key_file(config) as tokens,
            _ready_file(ready_file),
        ):
            async with open_supervisor(
                None,
                launcher=launcher,
                grace=config.shutdown_grace,
                max_workers_total=config.max_workers_total,
            ) as sup:
                config, snapshots = await _open_snapshots(config, restore_snapshot)
                keys = _key_path(config) if tokens is not None else None
                started = _Started(tokens, ready_file, task_status, tls, stopping, keys)
                await _serve_with(sup, config, Path(scratch), shutdown, started, snapshots)
        root.cancel_scope.cancel()
    log.info("stopped")


@attrs.frozen
class _Started:
    """Who hears that the server started: the keys for the log, the ready file, the caller.

    ``tls`` is the https ports' context (None when none is https); ``stopping``
    is set once the server starts to stop (readiness 503, answers close).
    """

    tokens: Tokens | None
    ready_file: str | Path | None
    task_status: trio.TaskStatus[BaseURLs]
    tls: ssl.SSLContext | None = None
    stopping: trio.Event = attrs.field(factory=trio.Event)
    key_path: str | None = None


async def _serve_with(
    sup: Supervisor,
    config: ServerConfig,
    scratch: Path,
    shutdown: trio.Event,
    started: _Started,
    snapshots: _Snapshots | None = None,
) -> None:
    restored = snapshots.restored if snapshots else None
    loaded = [
        (m, await _load_configured(sup, m, config, scratch, _settings(restored, m)))
        for m in config.models
    ]
    if snapshots is not None:  # after the start-up models: a snapshot records changes
        directory = snapshots.directory
        sup.on_change = lambda: _record(directory, sup, shutdown)
    metrics = Metrics(sup.statistics)
    sup.on_batch = metrics.observe_batch
    missing = [m.name for m, pool in loaded if isinstance(pool, str)]
    readiness = Readiness(config.readiness, started.stopping, missing)
    apps = build_apps(sup, config, started.tokens, metrics, scratch, readiness)
    fast = FastRoutes(apps.predictor)
    async with trio.open_nursery() as helpers:
        async with trio.open_nursery() as listeners:
            endpoints = await _start_listeners(listeners, apps, fast, config, shutdown, started)
            if config.grpc:
                context = ManagementContext(sup, config, started.tokens, scratch)
                grpc = partial(_start_grpc, listeners, apps.predictor, context, readiness)
                endpoints = await grpc(endpoints, config, shutdown)
            helpers.start_soon(_announce, loaded, endpoints, started)
            helpers.start_soon(_drain_after_grace, sup, shutdown, config.shutdown_grace)
            started.task_status.started(endpoints)
        helpers.cancel_scope.cancel()  # the listeners have drained
    log.info("listeners closed; stopping workers")


async def _load_configured(
    sup: Supervisor,
    model: ModelConfig,
    config: ServerConfig,
    scratch: Path,
    settings: Mapping[str, Any] | None = None,
) -> Pool | str:
    """Load a configured model; one given by ``url`` is fetched and unpacked first.

    ``settings`` (a restored snapshot's) win over the archive's model-config.yaml.

    Returns:
        The model's pool, or why it could not be loaded (also logged).
    """
    if not model.url:
        try:
            await sup.load_model(model, wait=False)
        except SupervisorError as exc:
            log.error("model %s cannot be loaded: %s", model.name, exc.message)
            return exc.message
        return sup.pool(model.name, model.version)
    # a name that is only the archive's file name gives way to the manifest's modelName
    named = model.name != name_from_url(model.url)
    reg = Registration(
        url=model.url, model_name=model.name if named else None, handler=model.handler or None
    )
    own = attrs.asdict(model, recurse=False, filter=lambda a, _: a.name not in _IDENTITY)
    own["restart"] = attrs.asdict(model.restart)
    try:
        prepared, files = await prepare_model(reg, config, scratch, base=own)
    except SupervisorError as exc:
        log.error("model %s (%s) cannot be loaded: %s", model.name, model.url, exc.message)
        return exc.message
    try:
        prepared = attrs.evolve(prepared, **(settings or {}))
        await sup.load_model(prepared, wait=False, owned=files.leftovers())
    except SupervisorError as exc:
        await trio.to_thread.run_sync(remove_paths, files.leftovers())
        log.error("model %s (%s) cannot be loaded: %s", model.name, model.url, exc.message)
        return exc.message
    return sup.pool(prepared.name, prepared.version)


@attrs.frozen
class _Snapshots:
    """The config snapshot directory, and the snapshot restored at start (if one was)."""

    directory: SnapshotDir
    restored: Restored | None


async def _open_snapshots(
    config: ServerConfig, restore: bool
) -> tuple[ServerConfig, _Snapshots | None]:
    """Open the snapshot directory; with ``restore``, the newest good snapshot's models.

    Returns:
        The config, its models replaced by a restored snapshot's, and the snapshots
        (None when they are off, or the directory cannot be used: logged).
    """
    if not config.config_snapshots:
        return config, None
    directory = SnapshotDir(Path(config.snapshot_dir), config)
    try:
        await trio.to_thread.run_sync(directory.open)
    except OSError as exc:
        log.error("config snapshots are OFF: cannot use %s: %s", config.snapshot_dir, exc)
        return config, None
    found = await trio.to_thread.run_sync(directory.newest, config.defaults) if restore else None
    if found is None:
        return config, _Snapshots(directory, None)
    try:
        restored_config = attrs.evolve(config, models=found.models)
    except ValueError as exc:  # e.g. more workers than max_workers_total allows
        log.warning("skipping config snapshot %s: %s", found.source, exc)
        return config, _Snapshots(directory, None)
    names = ", ".join(sorted({m.name for m in config.models}))
    log.info(
        "restoring %d model version(s) from config snapshot %s, instead of the configured "
        "ones (%s); --ncs starts from the configuration",
        len(found.models),
        found.source,
        names or "none",
    )
    return restored_config, _Snapshots(directory, found)


async def _record(directory: SnapshotDir, sup: Supervisor, shutdown: trio.Event) -> None:
    """Write a snapshot of the models; none once shutting down (stopping pools are no change)."""
    if shutdown.is_set():
        log.info("shutting down: this change is not written to a config snapshot")
        return
    await directory.write(sup.restorable)


def _settings(restored: Restored | None, model: ModelConfig) -> Mapping[str, Any] | None:
    return restored.settings.get((model.name, model.version)) if restored else None


@contextlib.contextmanager
def _key_file(config: ServerConfig) -> Iterator[Tokens | None]:
    """Make the API keys and keep them in the key file while the server runs.

    With ``keys_from``, the keys are that file's, and no key file is written.
    """
    if config.disable_token_authorization:
        log.warning("token authorization is DISABLED: anyone who reaches the ports can use them")
        yield None
        return
    if config.keys_from:
        yield _provided_keys(config.keys_from)
        return
    tokens = Tokens()
    path = write_key_file(config.key_file, tokens)
    log.info("token authorization is on; keys are in %s (mode 0600)", path)
    try:
        yield tokens
    finally:
        if not remove_key_file(path, tokens):
            log.warning("left %s alone: it no longer holds this server's keys", path)


def _provided_keys(path: str) -> Tokens:
    """The keys of a key file made beforehand (``keys_from``), used as they are.

    Raises:
        ConfigError: the file cannot be read or holds no usable keys.
    """
    try:
        tokens = read_key_file(path)
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(f"keys_from {path}: {why}") from None
    log.info("token authorization is on; keys from %s (never written or removed)", path)
    return tokens


async def _start_listeners(
    nursery: trio.Nursery,
    apps: Apps,
    fast: FastRoutes,
    config: ServerConfig,
    shutdown: trio.Event,
    started: _Started,
) -> BaseURLs:
    tls, draining = started.tls, started.stopping
    if config.lean_http:
        app, route = apps.inference, fast.route
        lean = partial(serve_lean_port, app, route, config, shutdown, tls=tls, draining=draining)
        urls = [await nursery.start(lean)]
    else:
        address = config.inference_address
        inference = partial(
            serve_asgi_port, apps.inference, address, config, shutdown, tls=tls, draining=draining
        )
        urls = [await nursery.start(inference)]
    for app, address in (
        (apps.management, config.management_address),
        (apps.metrics, config.metrics_address),
    ):
        port = partial(serve_asgi_port, app, address, config, shutdown, tls=tls, draining=draining)
        urls.append(await nursery.start(port))
    return BaseURLs(*urls)


async def _start_grpc(
    nursery: trio.Nursery,
    predictor: Predictor,
    context: ManagementContext,
    readiness: Readiness,
    endpoints: BaseURLs,
    config: ServerConfig,
    shutdown: trio.Event,
) -> BaseURLs:
    """Start the gRPC ports beside the HTTP ones; they drain on ``shutdown`` alike."""
    from supervisor.grpc.listener import GrpcServices, run  # grpcio loads only when it is on

    services = GrpcServices(predictor, context, readiness)
    grpc = await nursery.start(run, services, config, shutdown)
    return attrs.evolve(endpoints, grpc_inference=grpc.inference, grpc_management=grpc.management)


async def _drain_after_grace(sup: Supervisor, shutdown: trio.Event, grace: float) -> None:
    """When the grace period is over, answer every request still queued (503)."""
    await shutdown.wait()
    log.info("shutting down: no new connections; %g s for requests in flight", grace)
    await trio.sleep(grace)
    for pool in list(sup.registry):
        pool.stop(f"is stopping: the server is shutting down and {grace:g} s of grace are over")


@contextlib.contextmanager
def _ready_file(path: str | Path | None) -> Iterator[None]:
    """Remove a stale ready file now, and ours when the server stops."""
    if path is None:
        yield
        return
    remove_ready_file(path)
    try:
        yield
    finally:
        remove_ready_file(path)


async def _announce(
    loaded: list[tuple[ModelConfig, Pool | str]], endpoints: BaseURLs, started: _Started
) -> None:
    """Log the addresses, then each model as it settles; then write the ready file."""
    log.info(
        "listening: inference %s, management %s, metrics %s",
        endpoints.inference,
        endpoints.management,
        endpoints.metrics,
    )
    if endpoints.grpc_inference:
        log.info(
            "listening: gRPC inference %s, gRPC management %s",
            endpoints.grpc_inference,
            endpoints.grpc_management,
        )
    keys = started.key_path
    outcomes = [await _settled(model, pool, endpoints, keys) for model, pool in loaded]
    if started.ready_file is not None:
        e = endpoints
        report = ReadyReport(os.getpid(), e.inference, e.management, e.metrics, tuple(outcomes))
        try:
            await trio.to_thread.run_sync(write_ready_file, started.ready_file, report)
        except OSError as exc:
            log.error("cannot write the ready file %s: %s", started.ready_file, exc)


async def _settled(
    configured: ModelConfig, pool: Pool | str, endpoints: BaseURLs, key_path: str | None
) -> ModelOutcome:
    """Wait until a start-up model is ready or failed; log how to call a ready one."""
    if isinstance(pool, str):
        return ModelOutcome(configured.name, None, FAILED, pool)
    model = pool.config
    try:
        await pool.wait_ready()
    except WorkerStartFailed as exc:
        log.error("model %s could not start: %s", pool.label, exc.message)
        return ModelOutcome(model.name, model.version, FAILED, exc.message, exc.log_tail)
    _log_try_line(pool, endpoints, key_path)
    return ModelOutcome(model.name, model.version, READY)


def _key_path(config: ServerConfig) -> str:
    """Where the keys are: the provided file, else the key file this server writes."""
    if config.keys_from:
        return config.keys_from
    given = Path(config.key_file)
    return str(given.parent.resolve() / given.name)


def _log_try_line(pool: Pool, endpoints: BaseURLs, key_path: str | None) -> None:
    """Log a curl command that works; the key is read from its file, never logged."""
    model = pool.config
    url = f"{endpoints.inference}/predictions/{model.name}"
    auth = '-H "Authorization: Bearer $KEY" ' if key_path else ""
    if model.handler == DEFAULT_MODEL.handler:
        data = f"{auth}-H 'Content-Type: application/json' -d {shlex.quote(IRIS_EXAMPLE)}"
        log.info("serving the built-in iris classifier as %r; try:", model.name)
    else:
        data = f"{auth}-T INPUT_FILE"
        log.info("serving model %s (%s); try:", pool.label, model.handler)
    if key_path:
        read = "import json, sys; print(json.load(open(sys.argv[1]))['inference']['key'])"
        log.info("  KEY=$(python3 -c %s %s)", shlex.quote(read), shlex.quote(key_path))
    log.info("  curl -X POST %s %s", url, data)


async def _stopping_on(shutdown: trio.Event, stopping: trio.Event) -> None:
    """A shutdown (however it starts) makes the server stop being ready too."""
    await shutdown.wait()
    stopping.set()


async def _watch_signals(
    shutdown: trio.Event,
    cancel_scope: trio.CancelScope,
    stopping: trio.Event,
    pre_stop_delay: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """SIGTERM: not ready at once, shutdown after ``pre_stop_delay``; SIGINT: shutdown now.

    A second signal (or one after the shutdown began) stops at once.
    """
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as delays:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if stopping.is_set():
                    log.warning("second %s: stopping now", name)
                    cancel_scope.cancel()
                    return
                stopping.set()
                delay = pre_stop_delay if signum == signal.SIGTERM else 0.0
                delays.start_soon(_shut_down_after, shutdown, delay, name)


async def _shut_down_after(shutdown: trio.Event, delay: float, name: str) -> None:
    """Serve on, not ready, for ``delay`` seconds; then start the graceful shutdown."""
    if delay > 0:
        log.info(
            "%s received: not ready; still serving for %g s (pre_stop_delay), "
            "then graceful shutdown",
            name,
            delay,
        )
        await trio.sleep(delay)
    else:
        log.info("%s received: graceful shutdown", name)
    shutdown.set()
