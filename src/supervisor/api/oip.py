"""Open Inference Protocol v2 over REST: health and metadata (``/v2/...``).

The renderers (``server_ready``, ``model_metadata``, ``model_ready``) are pure:
they take a ``Supervisor.statistics()`` snapshot and return a status and a
JSON-ready body. ``add_oip_routes`` is the Quart shell around them. Errors use
OIP's shape, ``{"error": "..."}``, not TorchServe's.

A model is not ready while its version is LOADING or FAILED. The server is
ready (``Readiness``) when every model's default version is ready and no
start-up model failed to load (``readiness = "all"``), or when at least one is
ready (``"any"``); it is not ready from the moment it starts to stop (SIGTERM's
pre-stop delay, then the drain), whatever its models. Liveness is answering at
all: it depends on the server's own loop only, never on a model.

A model's ``inputs`` and ``outputs`` are what its model-config.yaml declares in
an ``oip:`` section (``inputs:`` and ``outputs:``, each a list of ``name``,
``datatype``, ``shape`` with -1 for a variable dimension); a model that declares
none has ``[]`` for both (it may still take any tensors). Inference itself is
``supervisor.api.oiprest``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import trio
from quart import Response, request
from quart_trio import QuartTrio

from supervisor.api.common import RecordedResponse, json_response, routes_check_token, to_response
from supervisor.api.oipcodec import DATATYPES
from supervisor.api.oiprest import OipRest
from supervisor.supervision.core import Supervisor
from supervisor.supervision.stats import ModelStats

__all__ = [
    "OPEN_PATHS",
    "PLATFORM",
    "SERVER_NAME",
    "Readiness",
    "add_oip_infer_routes",
    "add_oip_routes",
    "declared_tensors",
    "model_metadata",
    "model_ready",
    "server_metadata",
    "server_ready",
]

SERVER_NAME = "trio-supervisor"
PLATFORM = "pytorch_torchserve"
_NOT_READY = ("LOADING", "FAILED")

OPEN_PATHS = ("/v2/health/live", "/v2/health/ready")
"""Probes carry no token, as for ``/ping``; the metadata routes need the inference key."""

Rendered = tuple[int, dict[str, Any]]


def server_metadata(version: str) -> dict[str, Any]:
    """``GET /v2``: the server's name, version and (no) extensions."""
    return {"name": SERVER_NAME, "version": version, "extensions": []}


@attrs.define
class Readiness:
    """What ``/v2/health/ready`` weighs besides the models' states.

    Attributes:
        mode: ``all`` start-up models ready, or ``any`` (at least one).
        stopping: set from the moment the server starts to stop.
        missing: start-up models that failed to load at all (never registered).
    """

    mode: str = "all"
    stopping: trio.Event = attrs.field(factory=trio.Event)
    missing: list[str] = attrs.field(factory=list)


def server_ready(
    stats: Sequence[ModelStats],
    *,
    mode: str = "all",
    missing: Sequence[str] = (),
    stopping: bool = False,
) -> Rendered:
    """``GET /v2/health/ready``: 200 when ready by ``mode``, 503 otherwise.

    Args:
        stats: every model version.
        mode: ``all``: no default version LOADING or FAILED, and every name in
            ``missing`` registered since; ``any``: at least one default version
            READY (or no model at all, nothing missing).
        missing: start-up models that failed to load at all.
        stopping: the server is stopping: never ready.
    """
    defaults = [s for s in stats if s.is_default]
    if stopping:
        ready = False
    elif mode == "any":
        ready = any(s.state == "READY" for s in defaults) or not (defaults or missing)
    else:
        names = {s.config.name for s in defaults}
        ready = not any(s.state in _NOT_READY for s in defaults) and names.issuperset(missing)
    return (200 if ready else 503), {"ready": ready}


def _find(stats: Sequence[ModelStats], name: str, version: str | None) -> ModelStats | str:
    """The named version (the default one if None), or the error message."""
    versions = [s for s in stats if s.config.name == name]
    if not versions:
        return f"Model not found: {name}"
    for s in versions:
        if s.config.version == version or (version is None and s.is_default):
            return s
    return f"Model version: {version} does not exist for model: {name}"


def model_metadata(stats: Sequence[ModelStats], name: str, version: str | None) -> Rendered:
    """``GET /v2/models/{name}[/versions/{version}]``: name, versions, platform, tensors."""
    found = _find(stats, name, version)
    if isinstance(found, str):
        return 404, {"error": found}
    versions = sorted(s.config.version for s in stats if s.config.name == name)
    return 200, {
        "name": name,
        "versions": versions,
        "platform": PLATFORM,
        "inputs": declared_tensors(found.config.handler_config, "inputs"),
        "outputs": declared_tensors(found.config.handler_config, "outputs"),
    }


def declared_tensors(handler_config: Mapping[str, Any], kind: str) -> list[dict[str, Any]]:
    """The tensors model-config.yaml declares under ``oip: {kind}:`` (``inputs``, ``outputs``).

    An entry without a name, a known datatype and a list of integer dimensions
    is left out.
    """
    section = handler_config.get("oip")
    entries = section.get(kind) if isinstance(section, Mapping) else None
    declared = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, Mapping):
            continue
        name, datatype, shape = entry.get("name"), entry.get("datatype"), entry.get("shape")
        if not (isinstance(name, str) and datatype in DATATYPES and isinstance(shape, list)):
            continue
        if all(type(d) is int and d >= -1 for d in shape):
            declared.append({"name": name, "datatype": datatype, "shape": shape})
    return declared


def model_ready(stats: Sequence[ModelStats], name: str, version: str | None) -> Rendered:
    """``GET /v2/models/{name}[/versions/{version}]/ready``: 200 only when READY."""
    found = _find(stats, name, version)
    if isinstance(found, str):
        return 404, {"error": found}
    ready = found.state == "READY"
    return (200 if ready else 503), {"name": name, "ready": ready}


def add_oip_routes(
    app: QuartTrio, sup: Supervisor, version: str, server_readiness: Readiness | None = None
) -> None:
    """Add the ``/v2`` health and metadata routes to the inference app.

    ``server_readiness`` (default: ``all``, never stopping) shapes ``/v2/health/ready``.
    """
    r = server_readiness or Readiness()

    def render(rendered: Rendered) -> Response:
        return json_response(rendered[1], rendered[0])

    async def metadata() -> Response:
        return json_response(server_metadata(version))

    async def live() -> Response:
        return json_response({"live": True})  # answering at all is being live

    async def ready() -> Response:
        stopping = r.stopping.is_set()
        return render(
            server_ready(sup.statistics(), mode=r.mode, missing=r.missing, stopping=stopping)
        )

    async def model(name: str, model_version: str | None = None) -> Response:
        return render(model_metadata(sup.statistics(), name, model_version))

    async def readiness(name: str, model_version: str | None = None) -> Response:
        return render(model_ready(sup.statistics(), name, model_version))

    app.add_url_rule("/v2", "oip_server_metadata", metadata)
    app.add_url_rule("/v2/health/live", "oip_live", live)
    app.add_url_rule("/v2/health/ready", "oip_ready", ready)
    app.add_url_rule("/v2/models/<name>", "oip_model", model)
    app.add_url_rule("/v2/models/<name>/versions/<model_version>", "oip_model", model)
    app.add_url_rule("/v2/models/<name>/ready", "oip_model_ready", readiness)
    app.add_url_rule(
        "/v2/models/<name>/versions/<model_version>/ready", "oip_model_ready", readiness
    )


def add_oip_infer_routes(app: QuartTrio, rest: OipRest) -> None:
    """Add ``POST /v2/models/{name}[/versions/{version}]/infer`` (``supervisor.api.oiprest``).

    The lean front end answers these itself; Quart gets what it leaves (an
    unusual path, say), answered the same way. The route checks the token in
    the pipeline, so ``require_token`` lets it through.
    """

    async def infer(name: str, model_version: str | None = None) -> Response:
        body = await request.get_data(True, False, False)
        client = (request.scope.get("client") or ["<local>"])[0]
        answer = await rest.answer((name, model_version), request.scope["headers"], body, client)
        return to_response(answer, RecordedResponse)

    app.add_url_rule("/v2/models/<name>/infer", "oip_infer", infer, methods=["POST"])
    app.add_url_rule(
        "/v2/models/<name>/versions/<model_version>/infer", "oip_infer", infer, methods=["POST"]
    )
    routes_check_token(app, ["oip_infer"])
