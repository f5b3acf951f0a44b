"""Assembling the three apps (inference, management, metrics) for one server."""

from __future__ import annotations

from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import attrs
from quart import Response
from quart_trio import QuartTrio

from supervisor.api.common import json_response, make_app, require_token
from supervisor.api.dashboard import OPEN_PATHS as DASHBOARD_PATHS
from supervisor.api.dashboard import add_dashboard_routes, stream_lifetime
from supervisor.api.dashboard.hub import Hub
from supervisor.api.inference import add_inference_routes, add_kserve_v1_routes
from supervisor.api.kservev1 import KServeV1
from supervisor.api.management import ManagementContext, add_management_routes
from supervisor.api.metrics import metrics_app
from supervisor.api.oip import OPEN_PATHS, Readiness, add_oip_infer_routes, add_oip_routes
from supervisor.api.oiprest import OipRest
from supervisor.api.openapi import openapi_document
from supervisor.api.predict import Predictor
from supervisor.auth import Tokens
from supervisor.config import ServerConfig
from supervisor.supervision.core import Supervisor
from supervisor.supervision.metrics import Metrics

__all__ = ["Apps", "build_apps"]

_DESCRIPTION_PATHS = ("/", "/api-description")


@attrs.frozen
class Apps:
    """The apps of one server, one per port, and the prediction pipeline they share.

    Attributes:
        inference: the inference port's app (the lean server's fallback).
        management: the management port's app.
        metrics: the metrics port's app.
        predictor: the one prediction pipeline, rendered by the inference app and
            by the lean front end's fast routes.
    """

    inference: QuartTrio
    management: QuartTrio
    metrics: QuartTrio
    predictor: Predictor


def build_apps(
    sup: Supervisor,
    config: ServerConfig,
    tokens: Tokens | None,
    metrics: Metrics,
    scratch: Path,
    readiness: Readiness | None = None,
) -> Apps:
    """Build the apps; with ``tokens``, the inference and management APIs need them.

    ``readiness`` shapes ``/v2/health/ready`` (see ``supervisor.api.oip``).
    """
    new_app = partial(
        make_app,
        max_request_size=config.max_request_size,
        read_timeout=config.read_timeout,
        on_response=metrics.count_response,
    )
    inference = new_app("trio-supervisor-inference")
    if tokens is not None:
        require_token(inference, tokens, "inference", {"/ping", *OPEN_PATHS, *_DESCRIPTION_PATHS})
    predictor = Predictor(sup, tokens, metrics.observe_request, metrics.count_response)
    add_inference_routes(inference, sup, predictor)
    add_kserve_v1_routes(inference, sup, KServeV1(predictor))
    add_oip_routes(inference, sup, _version(), readiness)
    add_oip_infer_routes(inference, OipRest(predictor))
    _add_description(inference, "inference")

    management = new_app("trio-supervisor-management")
    if tokens is not None:
        open_paths = {"/token", *_DESCRIPTION_PATHS, *DASHBOARD_PATHS}
        require_token(management, tokens, "management", open_paths)
    add_management_routes(management, ManagementContext(sup, config, tokens, scratch))
    stopping = readiness.stopping if readiness else None
    hub = Hub(sup, metrics.latency_counts, stopping=stopping, version=_version())
    lifetime = stream_lifetime(config.read_timeout)
    add_dashboard_routes(management, hub, lifetime=lifetime, key_required=tokens is not None)
    _add_description(management, "management")
    metrics_port = metrics_app(
        metrics, max_request_size=config.max_request_size, read_timeout=config.read_timeout
    )
    _add_description(metrics_port, "metrics")
    for app in (inference, management, metrics_port):
        _no_redirects(app)
    return Apps(inference, management, metrics_port, predictor)


def _no_redirects(app: QuartTrio) -> None:
    """Match paths as they are: no 308 to a merged-slash or slash-added path.

    Werkzeug redirects ``//predictions//x`` to ``/predictions/x`` (an HTML body,
    a Location built from the client's Host header). Here that path is simply not
    found (a JSON 404), like any other path no route has.
    """
    old = app.url_map
    new = type(old)(
        strict_slashes=False,
        merge_slashes=False,
        host_matching=old.host_matching,
        converters=old.converters,
    )
    for rule in list(old.iter_rules()):
        rule.map = None  # type: ignore[assignment]  # rebound (and recompiled) by add()
        rule.strict_slashes = False
        rule.merge_slashes = False
        new.add(rule)
    app.url_map = new


def _add_description(app: QuartTrio, kind: str) -> None:
    document = openapi_document(kind, _version())

    async def describe_api() -> Response:
        return json_response(document)

    app.add_url_rule("/", "describe_root", describe_api, methods=["OPTIONS"])
    app.add_url_rule("/api-description", "describe_api", describe_api, methods=["GET", "OPTIONS"])


def _version() -> str:
    try:
        return version("trio-supervisor")
    except PackageNotFoundError:
        return "0.0.0"
