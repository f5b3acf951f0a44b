"""The management API (port 8081): register, scale, describe, unregister, list.

The answers are TorchServe's, down to its leniency: a registration starts no
worker unless asked to, parameters TorchServe ignores are ignored (and logged),
and a final ``/`` in a path changes nothing. Registering a version with
``set_default=true`` and ``PUT .../set-default`` are safe updates: the version's
canaries must pass before the default switches; see docs/updates.md.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import orjson
import trio
from quart import Response, request
from quart_trio import QuartTrio

from supervisor import limits
from supervisor.api.common import json_response
from supervisor.api.describe import describe_model, model_url
from supervisor.auth import Tokens, bearer_matches, write_key_file
from supervisor.config import ModelConfig, ServerConfig
from supervisor.errors import (
    Forbidden,
    InvalidRequest,
    MethodNotAllowed,
    ModelUnavailable,
    SupervisorError,
    Unauthorized,
)
from supervisor.models.archive import remove_paths
from supervisor.models.canary import Canary
from supervisor.models.registration import (
    Registration,
    parse_flag,
    parse_registration,
    prepare_model,
    request_canaries,
)
from supervisor.supervision.core import Supervisor
from supervisor.supervision.rollout import UpdateResult

__all__ = [
    "MODEL_API_OFF",
    "SYNC_REPLY_SHARE",
    "Answered",
    "ManagementContext",
    "add_management_routes",
    "describe_models",
    "list_models",
    "register_model",
    "require_model_api",
    "scale_workers",
    "set_default_version",
    "sync_reply_budget",
    "unregister_model",
]

log = logging.getLogger("supervisor.api")

MODEL_API_OFF = "Model API is disabled; start the server with --enable-model-api to allow it."

SYNC_REPLY_SHARE = 0.8
"""The share of ``read_timeout`` a synchronous call may wait for workers.

Hypercorn drops a connection that received nothing for ``read_timeout`` seconds,
even while its request is being answered; a synchronous register or scale whose
workers are slower than that would get no answer at all. So it waits at most
this share of it, then answers 202 with where to poll (the workers go on starting).
"""


def sync_reply_budget(config: ServerConfig) -> float:
    """Seconds a synchronous management call may wait before it answers 202."""
    return SYNC_REPLY_SHARE * max(1.0, round(config.read_timeout))  # as hypercorn rounds it


@attrs.frozen
class ManagementContext:
    """What the management routes work with."""

    sup: Supervisor
    config: ServerConfig
    tokens: Tokens | None
    scratch: Path


@attrs.frozen
class Answered:
    """A management call's answer, for any protocol to render.

    Attributes:
        status: the HTTP status (200, or 202 while workers still start).
        body: the JSON-ready body.
        location: where to poll for the model's state (a 202's ``Location``).
    """

    status: int
    body: Any
    location: str | None = None


def require_model_api(config: ServerConfig) -> None:
    """Refuse a call that registers or unregisters models while the model API is off.

    Raises:
        MethodNotAllowed: ``enable_model_api`` is off.
    """
    if not config.enable_model_api:
        raise MethodNotAllowed(MODEL_API_OFF)


def list_models(sup: Supervisor, limit: int, start: int) -> dict[str, Any]:
    """A page of the registered models (TorchServe's ``limit`` and ``next_page_token``)."""
    limit = 100 if limit <= 0 or limit > 100 else limit
    start = max(0, start)
    names = sup.registry.names()
    page = names[start : start + limit]
    models = [{"modelName": n, "modelUrl": model_url(sup.pool(n).config)} for n in page]
    body: dict[str, Any] = {"models": models}
    if start + limit < len(names):
        body["nextPageToken"] = str(start + limit)
    return body


async def describe_models(
    sup: Supervisor, name: str, version: str | None, *, customized: bool
) -> list[dict[str, Any]]:
    """``GET /models/{name}[/{version}]``: each version's description."""
    stats = sup.describe(name, version)
    body = [describe_model(s) for s in stats]
    if customized and version != "all":
        body[0]["customizedMetadata"] = await _customized(sup, name, version)
    return body


async def set_default_version(
    ctx: ManagementContext, name: str, version: str, canaries: Any, *, retire_old: bool
) -> dict[str, Any]:
    """Make ``version`` the default once its canaries pass (see docs/updates.md)."""
    if retire_old:
        require_model_api(ctx.config)
    checked = await _canaries(ctx, canaries)
    result = await ctx.sup.promote(
        name, version, canaries=checked, retire_old=retire_old, grace=ctx.config.shutdown_grace
    )
    message = f'Default version successfully updated for model "{name}" to "{version}"'
    return {"status": message + _outcome(result, switch=False)}


def _respond(answered: Answered) -> Response:
    response = json_response(answered.body, answered.status)
    if answered.location is not None:
        response.headers["Location"] = answered.location
    return response


def add_management_routes(app: QuartTrio, ctx: ManagementContext) -> None:
    """Add every management route to ``app``."""
    sup = ctx.sup

    @app.route("/models", methods=["GET"])
    async def list_route() -> Response:
        limit, start = _int_arg("limit", 100), _int_arg("next_page_token", 0)
        return json_response(list_models(sup, limit, start))

    @app.route("/models", methods=["POST"])
    async def register() -> Response:
        deadline = trio.current_time() + sync_reply_budget(ctx.config)
        require_model_api(ctx.config)
        return _respond(await register_model(ctx, await _params(), deadline))

    @app.route("/models/<name>", methods=["GET"])
    @app.route("/models/<name>/<version>", methods=["GET"])
    async def describe(name: str, version: str | None = None) -> Response:
        body = await describe_models(sup, name, version, customized=_flag("customized"))
        return json_response(body)

    @app.route("/models/<name>", methods=["PUT"])
    @app.route("/models/<name>/<version>", methods=["PUT"])
    async def scale(name: str, version: str | None = None) -> Response:
        deadline = trio.current_time() + sync_reply_budget(ctx.config)
        low = _int_arg("min_worker", 1)
        high = _int_arg("max_worker", low)
        version = version or request.args.get("model_version")
        synchronous = _flag("synchronous")
        answered = await scale_workers(sup, name, version, low, high, synchronous, deadline)
        return _respond(answered)

    @app.route("/models/<name>", methods=["DELETE"])
    @app.route("/models/<name>/<version>", methods=["DELETE"])
    async def unregister(name: str, version: str | None = None) -> Response:
        require_model_api(ctx.config)
        body = await unregister_model(sup, name, version, grace=ctx.config.shutdown_grace)
        return json_response(body)

    @app.route("/models/<name>/<version>/set-default", methods=["PUT"])
    async def set_default(name: str, version: str) -> Response:
        retire_old = _flag("retire_old")
        if retire_old:
            require_model_api(ctx.config)
        canaries = await _set_default_canaries()
        body = await set_default_version(ctx, name, version, canaries, retire_old=retire_old)
        return json_response(body)

    @app.route("/models/<name>/<version>/workers/<worker_id>/restart", methods=["POST"])
    async def restart_worker(name: str, version: str, worker_id: str) -> Response:
        label = sup.pool(name, version).restart_worker(worker_id)
        status = f"Worker {label} of model {name} version {version} is restarting"
        return json_response({"status": status}, 202)

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


async def register_model(
    ctx: ManagementContext, params: Mapping[str, Any], deadline: float
) -> Answered:
    """``POST /models``: register (and with workers, start) a model; see docs/updates.md.

    A synchronous registration waits for its workers until ``deadline``
    (``trio.current_time()``), then answers 202 with where to poll.
    """
    reg = parse_registration(params)
    canaries = await _canaries(ctx, params.get("canaries"))
    config, files = await prepare_model(reg, ctx.config, ctx.scratch)
    if reg.synchronous and config.workers > 0:
        update = _Update(ctx, reg, config, files.leftovers(), canaries)
        ctx.sup.start_task(update.run)  # the supervisor's: it goes on after a 202
        with trio.move_on_at(deadline):
            await update.done.wait()
        if not update.done.is_set():
            return _still_starting(config.name, config.version)
        result = update.result()
        return Answered(200, {"status": _registered(config) + _outcome(result)})
    try:
        if reg.set_default:
            raise InvalidRequest("set_default=true needs initial_workers of 1 or more")
        await ctx.sup.load_model(config, wait=False, owned=files.leftovers(), canaries=canaries)
    except SupervisorError:
        await trio.to_thread.run_sync(remove_paths, files.leftovers())  # no-op once unloaded
        raise
    if config.workers == 0:
        message = f"{_registered(config)}. Use scale workers API to add workers for the model."
        return Answered(200, {"status": message})
    return Answered(202, {"status": "Processing worker updates..."})


@attrs.define
class _Update:
    """A synchronous registration, run in the supervisor's nursery (it may outlive the call)."""

    ctx: ManagementContext
    reg: Registration
    config: ModelConfig
    owned: tuple[Path, ...]
    canaries: tuple[Canary, ...] | None
    done: trio.Event = attrs.field(factory=trio.Event)
    _outcome: UpdateResult | SupervisorError | None = None

    async def run(self) -> None:
        """Load, check and switch; workers or canaries that fail are rolled back."""
        try:
            self._outcome = await self._update()
        finally:
            self.done.set()

    async def _update(self) -> UpdateResult | SupervisorError:
        failure: SupervisorError
        try:
            return await self.ctx.sup.update(
                self.config,
                owned=self.owned,
                canaries=self.canaries,
                set_default=self.reg.set_default,
                retire_old=self.reg.retire_old,
                grace=self.ctx.config.shutdown_grace,
            )
        except SupervisorError as exc:
            failure = exc
            log.warning("registering %s failed: %s", self.config.name, exc.message)
        except Exception as exc:  # a bug: a 500 for this call, as Quart gives; the server stays
            log.exception("registering %s failed", self.config.name)
            failure = SupervisorError(f"internal error: {exc!r}")
        await trio.to_thread.run_sync(remove_paths, self.owned)  # no-op once unloaded
        return failure

    def result(self) -> UpdateResult:
        """What the update did, once ``done`` is set; raises what it raised."""
        if isinstance(self._outcome, SupervisorError):
            raise self._outcome
        if self._outcome is None:
            raise ModelUnavailable(f"the server stopped while {self.config.name} was loading")
        return self._outcome


def _still_starting(name: str, version: str | None) -> Answered:
    """202: a synchronous call whose workers are still starting; where to poll."""
    where = f"/models/{name}" + (f"/{version}" if version else "")
    body = {"status": f"Workers are still starting; poll GET {where} for the model's state"}
    return Answered(202, body, where)


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


async def scale_workers(
    sup: Supervisor,
    name: str,
    version: str | None,
    low: int,
    high: int,
    synchronous: bool,
    deadline: float,
) -> Answered:
    """``PUT /models/{name}``: scale to ``low`` workers (``high`` at most, as describe shows).

    A synchronous call waits for the workers until ``deadline``, then answers 202.
    """
    pool = sup.pool(name, version)
    pool.check_scale(low, "min_worker")
    why = limits.check_workers("max_worker", high)
    if why is not None:
        raise InvalidRequest(why)
    if high < low:
        raise InvalidRequest("max_worker cannot be less than min_worker.")
    before = pool.config
    pool.config = attrs.evolve(before, workers=low, max_workers=high)  # what describe shows
    try:
        pool.scale(low, "min_worker")
    except SupervisorError:
        pool.config = before
        raise
    await sup.changed()  # a config snapshot records the new count before the answer
    if not synchronous:
        return Answered(202, {"status": "Processing worker updates..."})
    with trio.move_on_at(deadline):
        await pool.wait_ready(low)  # WorkerStartFailed carries the reason and the log tail
        return _scaled(name, version, low)
    return _still_starting(name, version)


def _scaled(name: str, version: str | None, low: int) -> Answered:
    suffix = f", version: {version}" if version else ""
    return Answered(200, {"status": f"Workers scaled to {low} for model: {name}{suffix}"})


async def unregister_model(
    sup: Supervisor, name: str, version: str | None, *, grace: float
) -> dict[str, Any]:
    """Drain the version (its queued and in-flight requests are served), then stop it."""
    pool = sup.pool(name, version)
    others = [p for p in sup.registry.versions(name) if p is not pool]
    if others and sup.registry.is_default(pool):
        raise Forbidden(f"Cannot remove default version for model {name}")
    await sup.unload(name, version=pool.config.version, grace=grace)
    return {"status": f'Model "{name}" unregistered'}


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
    """An integer query parameter; one that is not a number is ignored, as TorchServe does."""
    raw = request.args.get(key)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        log.warning("ignoring %s=%r: not an integer; using %d", key, raw[:40], default)
        return default


def _flag(key: str) -> bool:
    """A boolean query parameter (false when absent; see ``parse_flag``)."""
    return parse_flag(key, request.args.get(key, ""), default=False)
