"""The composition root: supervisor, HTTP listeners and signals in one nursery tree.

::

    root nursery
    ├── signal watcher (SIGTERM/SIGINT -> graceful shutdown; a second one -> now)
    └── supervisor nursery (outlives HTTP, so in-flight requests can finish)
        ├── pool per model version -> slot per worker -> worker incarnation
        └── HTTP nursery: hypercorn serve() for inference, management, metrics

Workers are spawned before the listeners open, so the interpreter start-up of
the workers overlaps with the server's own. On shutdown the listeners stop
accepting, requests in flight get ``shutdown_grace`` seconds to be answered
(after that, queued ones get 503), then the workers are stopped.
"""

from __future__ import annotations

import logging
import shlex
import signal
from functools import partial

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from quart_trio import QuartTrio

from supervisor.api.inference import inference_app
from supervisor.api.management import management_app
from supervisor.api.metrics import metrics_app
from supervisor.config import DEFAULT_MODEL, ServerConfig
from supervisor.core import Supervisor, open_supervisor
from supervisor.errors import WorkerStartFailed
from supervisor.process import Launcher

__all__ = ["Endpoints", "serve"]

log = logging.getLogger("supervisor.server")

IRIS_EXAMPLE = "[5.1, 3.5, 1.4, 0.2]"


@attrs.frozen
class Endpoints:
    """The base URLs the server listens on."""

    inference: str
    management: str
    metrics: str


async def serve(
    config: ServerConfig,
    *,
    shutdown: trio.Event | None = None,
    handle_signals: bool = True,
    launcher: Launcher | None = None,
    task_status: trio.TaskStatus[Endpoints] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the server until ``shutdown`` is set (or SIGTERM/SIGINT arrives).

    Args:
        config: listeners and models.
        shutdown: set it to start a graceful shutdown.
        handle_signals: capture SIGTERM and SIGINT (only in the main thread).
        launcher: starts worker processes.
        task_status: receives the ``Endpoints`` once every listener is bound.
    """
    shutdown = trio.Event() if shutdown is None else shutdown
    async with trio.open_nursery() as root:
        if handle_signals:
            await root.start(_watch_signals, shutdown, root.cancel_scope)
        async with open_supervisor(None, launcher=launcher, grace=config.shutdown_grace) as sup:
            for model in config.models:
                await sup.load_model(model, wait=False)
            async with trio.open_nursery() as helpers:
                async with trio.open_nursery() as listeners:
                    endpoints = await _start_listeners(listeners, sup, config, shutdown)
                    helpers.start_soon(_announce, sup, config, endpoints)
                    helpers.start_soon(_drain_after_grace, sup, shutdown, config.shutdown_grace)
                    task_status.started(endpoints)
                helpers.cancel_scope.cancel()  # the listeners have drained
            log.info("listeners closed; stopping workers")
        root.cancel_scope.cancel()
    log.info("stopped")


async def _start_listeners(
    nursery: trio.Nursery, sup: Supervisor, config: ServerConfig, shutdown: trio.Event
) -> Endpoints:
    urls = []
    for app, address in (
        (inference_app(sup), config.inference_address),
        (management_app(sup), config.management_address),
        (metrics_app(sup), config.metrics_address),
    ):
        urls.append(await nursery.start(_serve_app, app, address, config.shutdown_grace, shutdown))
    return Endpoints(*urls)


async def _serve_app(
    app: QuartTrio,
    address: str,
    grace: float,
    shutdown: trio.Event,
    *,
    task_status: trio.TaskStatus[str],
) -> None:
    hc = HypercornConfig()
    hc.bind = [address]
    hc.graceful_timeout = grace + 1.0
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            partial(hypercorn_serve, app, hc, shutdown_trigger=shutdown.wait)
        )
        task_status.started(binds[0])


async def _drain_after_grace(sup: Supervisor, shutdown: trio.Event, grace: float) -> None:
    """When the grace period is over, answer every request still queued (503)."""
    await shutdown.wait()
    log.info("shutting down: no new connections; %g s for requests in flight", grace)
    await trio.sleep(grace)
    for pool in list(sup.registry):
        pool.stop(f"is stopping: the server is shutting down and {grace:g} s of grace are over")


async def _announce(sup: Supervisor, config: ServerConfig, endpoints: Endpoints) -> None:
    log.info(
        "listening: inference %s, management %s, metrics %s",
        endpoints.inference,
        endpoints.management,
        endpoints.metrics,
    )
    for model in config.models:
        pool = sup.pool(model.name, model.version)
        try:
            await pool.wait_ready()
        except WorkerStartFailed as exc:
            log.error("model %s could not start: %s", pool.label, exc.message)
            continue
        url = f"{endpoints.inference}/predictions/{model.name}"
        if model.handler == DEFAULT_MODEL.handler:
            data = f"-H 'Content-Type: application/json' -d {shlex.quote(IRIS_EXAMPLE)}"
            log.info("serving the built-in iris classifier as %r; try:", model.name)
        else:
            data = "-T INPUT_FILE"
            log.info("serving model %s (%s); try:", pool.label, model.handler)
        log.info("  curl -X POST %s %s", url, data)


async def _watch_signals(
    shutdown: trio.Event,
    cancel_scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            if shutdown.is_set():
                log.warning("second %s: stopping now", signal.Signals(signum).name)
                cancel_scope.cancel()
                return
            log.info("%s received: graceful shutdown", signal.Signals(signum).name)
            shutdown.set()
