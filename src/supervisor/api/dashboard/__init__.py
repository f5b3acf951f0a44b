"""The dashboard at ``/dashboard`` on the management port: a live view of the tree.

The page and its script and style are static files with no data in them, so
they are served without a key; everything with data needs the management key
as ``Authorization: Bearer``: the event stream (``/dashboard/events``,
Server-Sent Events read with ``fetch``) and the actions, which are the
management API's own routes. Every dashboard response carries a strict
Content-Security-Policy (no inline script or style, nothing from elsewhere).
See docs/dashboard.md.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib.resources import files

import trio
from quart import Response
from quart_trio import QuartTrio
from werkzeug.exceptions import NotFound, ServiceUnavailable

from supervisor.api.dashboard.hub import Hub

__all__ = ["CONTENT_SECURITY_POLICY", "OPEN_PATHS", "add_dashboard_routes", "stream_lifetime"]

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_STATIC = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
OPEN_PATHS = frozenset(
    {"/dashboard", "/dashboard/", *(f"/dashboard/static/{name}" for name in _STATIC)}
)
"""The paths served without a key: the page's static files (no data in them)."""
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def stream_lifetime(read_timeout: float) -> float:
    """Seconds an event stream stays open before the server ends it (the page reconnects).

    Hypercorn drops a connection that sent nothing for ``read_timeout`` seconds,
    even while its response is being sent; a stream ends cleanly before that.
    """
    return 0.8 * max(1.0, round(read_timeout))


def add_dashboard_routes(
    app: QuartTrio, hub: Hub, *, lifetime: float, key_required: bool = True
) -> None:
    """Add the page, its static files and the event stream; run ``hub`` while serving.

    Args:
        app: the management app.
        hub: samples and update streams.
        lifetime: seconds an event stream stays open (``stream_lifetime``).
        key_required: whether the management API wants a key (the page asks for one).
    """
    static = {name: (files(__package__) / "static" / name).read_bytes() for name in _STATIC}
    page = (files(__package__) / "static" / "index.html").read_bytes()
    if not key_required:
        page = page.replace(b'data-key="required"', b'data-key="none"')

    @app.before_serving
    async def _start_hub() -> None:
        app.nursery.start_soon(hub.run)

    @app.route("/dashboard", methods=["GET"])
    async def dashboard_page() -> Response:
        return _response(page, "text/html; charset=utf-8")

    @app.route("/dashboard/static/<name>", methods=["GET"])
    async def dashboard_static(name: str) -> Response:
        if name not in static:
            raise NotFound(f"no dashboard file {name}")
        return _response(static[name], _STATIC[name])

    @app.route("/dashboard/events", methods=["GET"])
    async def dashboard_events() -> Response:
        if hub.stopping:
            raise ServiceUnavailable("the server is stopping")
        response = _response(_stream(hub, lifetime), "text/event-stream")
        response.timeout = None  # it ends itself, after ``lifetime``
        return response


def _response(body: bytes | AsyncIterator[bytes], content_type: str) -> Response:
    response = Response(body, content_type=content_type)
    response.headers.update(_HEADERS)
    return response


async def _stream(hub: Hub, lifetime: float) -> AsyncIterator[bytes]:
    """A browser's events until ``lifetime`` passes or the hub drops it."""
    deadline = trio.current_time() + lifetime
    with hub.subscribe() as receive:
        while True:
            message = None
            with trio.move_on_at(deadline):
                try:
                    message = await receive.receive()
                except (trio.ClosedResourceError, trio.EndOfChannel):
                    return
            if message is None:
                return
            yield message
