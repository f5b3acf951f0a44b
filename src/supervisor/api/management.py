"""The management API (port 8081): register, scale, describe, unregister, list.

Registering a version with ``set_default=true`` and ``PUT .../set-default`` are
safe updates: the version's canaries must pass before the default switches; see
docs/updates.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import orjson
import trio
from quart import Response, request
from quart_trio import QuartTrio

from supervisor.api.common import json_response
from supervisor.api.describe import describe_model, model_url
from supervisor.archive import remove_paths
from supervisor.auth import Tokens, bearer_matches, write_key_file
from supervisor.canary import Canary
from supervisor.config import ModelConfig, ServerConfig
from supervisor.core import Supervisor
from supervisor.errors import (
    Forbidden,
    InvalidRequest,
    MethodNotAllowed,
    ModelUnavailable,
    SupervisorError,
    Unauthorized,
)
from supervisor.registration import parse_registration, prepare_model, request_canaries
from supervisor.rollout import UpdateResult

__all__ = ["ManagementContext", "add_management_routes"]

MODEL_API_OFF = "Model API is disabled; start the server with --enable-model-api to allow it."


@attrs.frozen
class ManagementContext:
    """What the management routes work with."""

    sup: Supervisor
    config: ServerConfig
    tokens: Tokens | None
    scratch: Path


def add_management_routes(app: QuartTrio, ctx: ManagementContext) -> None:
    """Add every management route to ``app``."""
    sup = ctx.sup

    @app.route("/models", methods=["GET"])
    async def list_models() -> Response:
        limit = _int_arg("limit", 100)
        limit = 100 if limit <= 0 or limit > 100 else limit
        start = max(0, _int_arg("next_page_token", 0))
        names = sup.registry.names()
        page = names[start : start + limit]
        models = [{"modelName": n, "modelUrl": model_url(sup.pool(n).config)} for n in page]
        body: dict[str, Any] = {"models": models}
        if start + limit < len(names):
            body["nextPageToken"] = str(start + limit)
        return json_response(body)

    @app.route("/models", methods=["POST"])
    async def register() -> Response:
        if not ctx.config.enable_model_api:
            raise MethodNotAllowed(MODEL_API_OFF)
        return await _register(ctx, await _params())

    @app.route("/models/<name>", methods=["GET"])
    @app.route("/models/<name>/<version>", methods=["GET"])
    async def describe(name: str, version: str | None = None) -> Response:
        stats = sup.describe(name, version)
        body = [describe_model(s) for s in stats]
        if _flag("customized") and version != "all":
            body[0]["customizedMetadata"] = await _customized(sup, name, version)
        return json_response(body)

    @app.route("/models/<name>", methods=["PUT"])
    @app.route("/models/<name>/<version>", methods=["PUT"])
    async def scale(name: str, version: str | None = None) -> Response:
        return await _scale(sup, name, version or request.args.get("model_version"))

    @app.route("/models/<name>", methods=["DELETE"])
    @app.route("/models/<name>/<version>", methods=["DELETE"])
    async def unregister(name: str, version: str | None = None) -> Response:
        if not ctx.config.enable_model_api:
            raise MethodNotAllowed(MODEL_API_OFF)
        return await _unregister(sup, name, version, grace=ctx.config.shutdown_grace)

    @app.route("/models/<name>/<version>/set-default", methods=["PUT"])
    async def set_default(name: str, version: str) -> Response:
        retire_old = _flag("retire_old")
        if retire_old and not ctx.config.enable_model_api:
            raise MethodNotAllowed(MODEL_API_OFF)
        canaries = await _canaries(ctx, await _set_default_canaries())
        result = await sup.promote(
            name, version, canaries=canaries, retire_old=retire_old, grace=ctx.config.shutdown_grace
        )
        message = f'Default version successfully updated for model "{name}" to "{version}"'
        return json_response({"status": message + _outcome(result, switch=False)})

    @app.route("/token", methods=["GET"])
    async def rotate_token() -> Response:
        response = _rotate(ctx.tokens)
        if ctx.tokens is not None:
            write_key_file(ctx.config.key_file, ctx.tokens)  # clients read keys from the file
        return response


async def _params() -> Mapping[str, Any]:
    params: dict[str, Any] = dict(request.args)
    if request.mimetype == "application/json":
        body = await _json_body()
        if not isinstance(body, dict):
            raise InvalidRequest("the JSON body must be an object of registration parameters")
        params.update(body)
    return params


async def _json_body() -> Any:
    """The body parsed as JSON, or None if it is not JSON.

    Not Quart's ``get_json(silent=True)``: that still raises (a 500) on bytes
    that are not UTF-8 (found by tests/test_attacks.py).
    """
    try:
        return orjson.loads(await request.get_data())
    except orjson.JSONDecodeError:
        return None


async def _set_default_canaries() -> Any:
    """The canaries of a set-default call: a JSON list body, else the ``canaries`` query."""
    if not await request.get_data():
        return request.args.get("canaries")
    body = await _json_body()
    if not isinstance(body, list):
        raise InvalidRequest("the body of set-default must be a JSON list of canaries")
    return body


async def _canaries(ctx: ManagementContext, raw: Any) -> tuple[Canary, ...] | None:
    return await trio.to_thread.run_sync(request_canaries, raw, ctx.config.model_store)


async def _register(ctx: ManagementContext, params: Mapping[str, Any]) -> Response:
    reg = parse_registration(params)
    canaries = await _canaries(ctx, params.get("canaries"))
    config, files = await prepare_model(reg, ctx.config, ctx.scratch)
    try:
        if reg.synchronous and config.workers > 0:
            result = await ctx.sup.update(
                config,
                owned=files.leftovers(),
                canaries=canaries,
                set_default=reg.set_default,
                retire_old=reg.retire_old,
                grace=ctx.config.shutdown_grace,
            )  # workers that fail to start, or canaries that fail: rolled back
            return json_response({"status": _registered(config) + _outcome(result)})
        if reg.set_default:
            raise InvalidRequest("set_default=true needs initial_workers of 1 or more")
        await ctx.sup.load_model(config, wait=False, owned=files.leftovers(), canaries=canaries)
    except SupervisorError:
        await trio.to_thread.run_sync(remove_paths, files.leftovers())  # no-op once unloaded
        raise
    if config.workers == 0:
        message = f"{_registered(config)}. Use scale workers API to add workers for the model."
        return json_response({"status": message})
    return json_response({"status": "Processing worker updates..."}, 202)


def _registered(config: ModelConfig) -> str:
    return (
        f'Model "{config.name}" Version: {config.version} '
        f"registered with {config.workers} initial workers"
    )


def _outcome(result: UpdateResult, *, switch: bool = True) -> str:
    """What a safe update did beyond TorchServe's answer (nothing when there was nothing)."""
    parts = []
    if result.canaries:
        count = len(result.canaries)
        parts.append(f"{count} {'canary' if count == 1 else 'canaries'} passed")
    if switch and result.previous is not None:
        parts.append(f"default version {result.version} (was {result.previous})")
    if result.retired:
        parts.append(f"version {result.previous} retired")
    return "".join(f"; {part}" for part in parts)


async def _scale(sup: Supervisor, name: str, version: str | None) -> Response:
    pool = sup.pool(name, version)
    low = _int_arg("min_worker", 1)
    high = _int_arg("max_worker", low)
    if high < low:
        raise InvalidRequest("max_worker cannot be less than min_worker.")
    if pool.config.max_workers != high:
        pool.config = attrs.evolve(pool.config, max_workers=high)
    pool.scale(low)
    if not _flag("synchronous"):
        return json_response({"status": "Processing worker updates..."}, 202)
    await pool.wait_ready(low)  # WorkerStartFailed carries the reason and the log tail
    suffix = f", version: {version}" if version else ""
    return json_response({"status": f"Workers scaled to {low} for model: {name}{suffix}"})


async def _unregister(sup: Supervisor, name: str, version: str | None, *, grace: float) -> Response:
    """Drain the version (its queued and in-flight requests are served), then stop it."""
    pool = sup.pool(name, version)
    others = [p for p in sup.registry.versions(name) if p is not pool]
    if others and sup.registry.is_default(pool):
        raise Forbidden(f"Cannot remove default version for model {name}")
    await sup.unload(name, version=pool.config.version, grace=grace)
    return json_response({"status": f'Model "{name}" unregistered'})


async def _customized(sup: Supervisor, name: str, version: str | None) -> Any:
    pool = sup.pool(name, version)
    if not pool.active_slots():
        raise ModelUnavailable(
            f'Model "{name}" has no worker to serve describe request. '
            "Please use scale workers API to add workers."
        )
    reply = await sup.describe_handler(name, version)
    return reply if isinstance(reply, dict) else {}


def _rotate(tokens: Tokens | None) -> Response:
    if tokens is None:
        raise InvalidRequest("token authorization is disabled")
    if not bearer_matches(request.headers.get("Authorization"), tokens.api):
        raise Unauthorized('the API key ("API" in the key file) is required to rotate tokens')
    try:
        key = tokens.rotate(request.args.get("type", ""))
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    return json_response({"status": "Token regenerated", "key": key})


def _int_arg(key: str, default: int) -> int:
    try:
        return int(request.args.get(key, default))
    except ValueError:
        return default


def _flag(key: str) -> bool:
    return request.args.get(key, "false").lower() in ("true", "1", "yes")
