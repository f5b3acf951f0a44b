"""Opening a port: the lean server or Hypercorn, with the server's limits.

``serve_lean_port`` runs the lean HTTP/1.1 server (an ASGI app behind a router
of fast routes); ``serve_asgi_port`` runs Hypercorn with the guard in front of
the app. Both report the URL they listen on through ``task_status`` and turn a
failure to listen into one ``ListenError`` that says why. An ``https://``
address is served over TLS with the context ``supervisor.http.tls`` built, the
one context every https port shares (Hypercorn is handed it instead of making
its own).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Iterator
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from supervisor.config import ServerConfig, split_address
from supervisor.http.asgi import ASGIApp
from supervisor.http.exchange import Router
from supervisor.http.framing import MAX_HEAD
from supervisor.http.guard import Guard, GuardLimits, patch_hypercorn
from supervisor.http.lean import LeanLimits, serve_lean

__all__ = ["ListenError", "serve_asgi_port", "serve_lean_port"]


class ListenError(OSError):
    """A listener could not be opened (address in use, no permission, bad address)."""


async def serve_lean_port(
    app: ASGIApp,
    router: Router,
    config: ServerConfig,
    shutdown: trio.Event,
    *,
    tls: ssl.SSLContext | None = None,
    draining: trio.Event | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the inference port with the lean server until ``shutdown``.

    ``tls`` serves it over TLS when ``config.inference_address`` is https; once
    ``draining`` is set, answers carry ``Connection: close``.

    Raises:
        ListenError: ``config.inference_address`` cannot be listened on.
    """
    limits = LeanLimits(
        max_request_size=config.max_request_size,
        read_timeout=config.read_timeout,
        keep_alive_timeout=config.keep_alive_timeout,
        graceful_timeout=config.shutdown_grace + 1.0,
        write_timeout=config.write_timeout,
        max_connections=config.max_connections,
    )
    address = config.inference_address
    host_port, context = _secured(address, tls)
    serve = partial(
        serve_lean, app, router, host_port, limits, shutdown, tls=context, draining=draining
    )
    async with trio.open_nursery() as nursery:
        with _listen_errors(address):
            url = await nursery.start(serve)
        task_status.started(url)


async def serve_asgi_port(
    app: ASGIApp,
    address: str,
    config: ServerConfig,
    shutdown: trio.Event,
    *,
    tls: ssl.SSLContext | None = None,
    draining: trio.Event | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``address`` with Hypercorn, behind the guard, until ``shutdown``.

    ``tls`` serves it over TLS when ``address`` is https; once ``draining`` is
    set, answers carry ``Connection: close``.

    Raises:
        ListenError: ``address`` cannot be listened on.
    """
    patch_hypercorn()
    limits = GuardLimits(
        max_request_size=config.max_request_size, max_requests=config.max_connections
    )
    guarded: Any = Guard(app, limits, draining)  # an ASGI app; hypercorn's types want a function
    hc = _hypercorn_config(address, config, tls)
    async with trio.open_nursery() as nursery:
        with _listen_errors(address):
            binds: list[str] = await nursery.start(
                partial(hypercorn_serve, guarded, hc, shutdown_trigger=shutdown.wait)
            )
        task_status.started(binds[0])


def _secured(address: str, tls: ssl.SSLContext | None) -> tuple[str, ssl.SSLContext | None]:
    """``address`` as ``host:port``, and the TLS context if it is https.

    Raises:
        ValueError: ``address`` is https and there is no context (a caller's bug).
    """
    scheme, host_port = split_address(address)
    if scheme != "https":
        return host_port, None
    if tls is None:
        raise ValueError(f"{address} is https but no TLS context was given")
    return host_port, tls


class _TLSConfig(HypercornConfig):
    """Hypercorn's settings with the server's own TLS context instead of one it builds."""

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__()
        self._context = context
        self.certfile = self.keyfile = "-"  # only so that ``ssl_enabled`` is true

    def create_ssl_context(self) -> ssl.SSLContext:
        return self._context


def _hypercorn_config(
    address: str, config: ServerConfig, tls: ssl.SSLContext | None
) -> HypercornConfig:
    """Hypercorn's settings for one port: the server's limits, no access log, TLS if https."""
    host_port, context = _secured(address, tls)
    hc = HypercornConfig() if context is None else _TLSConfig(context)
    hc.bind = [host_port]
    hc.ssl_handshake_timeout = config.read_timeout
    hc.h11_max_incomplete_size = MAX_HEAD + 4  # the lean front end's limit: 431 beyond
    hc.graceful_timeout = config.shutdown_grace + 1.0
    hc.read_timeout = max(1, round(config.read_timeout))  # a client that stops sending is dropped
    # hypercorn closes a connection stalled in its headers only when this fires
    hc.keep_alive_timeout = min(config.keep_alive_timeout, config.read_timeout)
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.write_timeout = config.write_timeout  # type: ignore[attr-defined]  # see patch_hypercorn
    return hc


@contextlib.contextmanager
def _listen_errors(address: str) -> Iterator[None]:
    """Turn the OSError of a failed listen (in a group) into one ListenError."""
    try:
        yield
    except* OSError as group:
        exc = _first_leaf(group)
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ListenError(f"cannot listen on {address}: {why}") from None


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
