"""Turning a registration (``POST /models`` or a configured ``url``) into a model.

The ``url`` is resolved (store name, or allowed remote URL downloaded into the
store), unpacked, and its manifest read. Settings are layered, most specific
first: the request's parameters, then the archive's ``model-config.yaml``, then
the server's model defaults. (TorchServe lets the YAML win over the request,
against its own documentation; see docs/torchserve-compat.md.)

Our extensions make a registration a safe update: ``set_default`` switches the
default version only once the new one passes its canaries (``canaries``: a JSON
list, or a canary file in the model store; else the archive's ``canaries.json``),
and ``retire_old`` then drains and unloads the old default.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import trio

from supervisor.config import ConfigError, ModelConfig, ServerConfig, model_config, name_from_url
from supervisor.errors import InvalidModel, InvalidRequest, ModelNotFound
from supervisor.models.archive import (
    ModelFiles,
    check_manifest_paths,
    check_url,
    local_source,
    open_model,
    remove_paths,
    store_entry,
)
from supervisor.models.canary import Canary, CanaryError, parse_canaries, read_canaries
from supervisor.models.download import fetch
from supervisor.models.sweep import DOWNLOAD_JOURNAL
from supervisor.models.tsconfig import MAX_YAML_BYTES, model_yaml_settings

__all__ = ["Registration", "parse_registration", "prepare_model", "request_canaries"]

_INTS = ("batch_size", "initial_workers")
_FLOATS = ("max_batch_delay", "response_timeout", "startup_timeout")


@attrs.frozen
class Registration:
    """What a client asked to register (unset values are None).

    Attributes:
        url: the archive or directory name in the store, or an allowed URL.
        model_name: overrides the manifest's ``modelName``.
        handler: overrides the manifest's handler.
        batch_size: the most requests per batch.
        max_batch_delay: milliseconds, as in TorchServe's API.
        initial_workers: workers to start.
        synchronous: answer only when the workers are ready.
        response_timeout: seconds.
        startup_timeout: seconds.
        set_default: make the new version the default once it passes its canaries.
        retire_old: after that switch, drain and unload the old default version.
    """

    url: str
    model_name: str | None = None
    handler: str | None = None
    batch_size: int | None = None
    max_batch_delay: float | None = None
    initial_workers: int | None = None
    synchronous: bool = True
    response_timeout: float | None = None
    startup_timeout: float | None = None
    set_default: bool = False
    retire_old: bool = False


def parse_registration(params: Mapping[str, Any]) -> Registration:
    """Validate the parameters of ``POST /models`` (query string or JSON body).

    Raises:
        InvalidRequest: a missing url or a value of the wrong type.
    """
    if params.get("url") in (None, ""):
        raise InvalidRequest("Parameter url is required.")
    values: dict[str, Any] = {"url": str(params["url"])}
    for key in ("model_name", "handler"):
        if params.get(key):
            values[key] = str(params[key])
    for key, kind in [(k, int) for k in _INTS] + [(k, float) for k in _FLOATS]:
        if params.get(key) not in (None, ""):
            values[key] = _number(key, params[key], kind)
    for key in ("synchronous", "set_default", "retire_old"):
        if key in params:
            values[key] = str(params[key]).lower() in ("true", "1", "yes")
    reg = Registration(**values)
    if reg.retire_old and not reg.set_default:
        raise InvalidRequest("retire_old=true needs set_default=true")
    if reg.set_default and not reg.synchronous:
        raise InvalidRequest(
            "set_default=true needs synchronous=true: the switch waits for the new workers"
        )
    return reg


def request_canaries(raw: Any, model_store: str) -> tuple[Canary, ...] | None:
    """The canaries a request gives: a JSON list, or a canary file's name in the model store.

    ``body_file`` entries are read from the model store. Returns None when none
    are given (``raw`` is None or empty), so that a version's own are used.

    Raises:
        InvalidRequest: a list or file that is not a valid canary list, or a name
            that is not a file in the model store.
    """
    if raw is None or raw == "":
        return None
    store = Path(model_store) if model_store else None
    try:
        if isinstance(raw, str):
            return read_canaries(_store_file(raw, store))
        return parse_canaries(raw, store)
    except CanaryError as exc:
        raise InvalidRequest(f"canaries: {exc}") from None


def _store_file(name: str, store: Path | None) -> Path:
    if store is None:
        raise InvalidRequest("canaries: a canary file needs a model store")
    if "/" in name or "\\" in name or ".." in name or name.startswith("."):
        raise InvalidRequest(f"canaries: not a file name in the model store: {name}")
    try:
        path = store_entry(name, store)
    except ModelNotFound:
        path = None
    except InvalidRequest as exc:
        raise InvalidRequest(f"canaries: {exc.message}") from None
    if path is None or not path.is_file():
        raise InvalidRequest(f"canaries: no such file in the model store: {name}")
    return path


def _number(key: str, raw: Any, kind: type[int] | type[float]) -> int | float:
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise InvalidRequest(f"Parameter {key} must be a number, got {raw!r}") from None
    return value


async def prepare_model(
    reg: Registration,
    server: ServerConfig,
    scratch: Path,
    base: Mapping[str, Any] | None = None,
) -> tuple[ModelConfig, ModelFiles]:
    """Fetch and unpack the model named by ``reg.url``; build its configuration.

    Args:
        reg: the registration.
        server: allowed URLs, the model store, download bounds, model defaults.
        scratch: where archives are unpacked.
        base: the settings under the archive's ``model-config.yaml`` (the server's
            model defaults when None).

    Returns:
        The model's configuration and its files (remove ``files.leftovers()``
        when the model is unloaded).
    """
    downloaded = None
    if check_url(reg.url, server.allowed_urls):
        source = downloaded = await fetch(
            reg.url,
            Path(server.model_store or scratch),
            allowed_urls=server.allowed_urls,
            max_bytes=server.max_download_size,
            time_limit=server.download_timeout,
            journal=scratch / DOWNLOAD_JOURNAL,  # a crashed server's downloads are swept
        )
    else:
        source = local_source(reg.url, server.model_store)
    try:
        files = await trio.to_thread.run_sync(open_model, source, scratch)
    except BaseException:
        if downloaded is not None:
            await trio.to_thread.run_sync(remove_paths, (downloaded,))
        raise
    files = attrs.evolve(files, downloaded=downloaded)
    try:
        # read and parsed in a thread: a YAML of a megabyte takes a while
        layers = await trio.to_thread.run_sync(
            _layers, files, server.defaults if base is None else base
        )
        return _model_config(reg, files, layers), files
    except BaseException:
        await trio.to_thread.run_sync(remove_paths, files.leftovers())
        raise


def _layers(files: ModelFiles, base: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with the archive's model-config.yaml on top (restart keys merged).

    Blocking (it reads and parses the file): run it in a thread.
    """
    path = check_manifest_paths(files)  # the config file, resolved inside the model
    if not path.is_file():
        return dict(base)
    try:
        with path.open("rb") as file:  # no more than the limit, plus one to tell
            keys, handler_config = model_yaml_settings(file.read(MAX_YAML_BYTES + 1))
    except (ConfigError, OSError) as exc:
        raise InvalidModel(f"{path.name}: {exc}") from None
    restart = {**dict(base.get("restart", {})), **dict(keys.pop("restart", {}))}
    return {**base, **keys, "restart": restart, "handler_config": handler_config}


def _model_config(reg: Registration, files: ModelFiles, layers: Mapping[str, Any]) -> ModelConfig:
    model = files.model
    table: dict[str, Any] = {
        "name": reg.model_name or model.get("modelName") or name_from_url(reg.url),
        "version": str(model.get("modelVersion") or "1.0"),
        "handler": reg.handler or files.handler(),
        "model_dir": str(files.directory),
        "url": reg.url,
    }
    if not table["handler"]:
        raise InvalidModel(f"no handler: give one, or put it in the manifest of {reg.url}")
    table.update(_request_settings(reg))
    try:
        return model_config(table, layers)
    except ConfigError as exc:
        raise InvalidRequest(str(exc)) from None


def _request_settings(reg: Registration) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    if reg.batch_size is not None:
        settings["batch_size"] = reg.batch_size
    if reg.max_batch_delay is not None:
        settings["max_batch_delay"] = reg.max_batch_delay / 1000
    if reg.initial_workers is not None:
        settings["workers"] = reg.initial_workers
    if reg.response_timeout is not None:
        settings["response_timeout"] = reg.response_timeout
    if reg.startup_timeout is not None:
        settings["startup_timeout"] = reg.startup_timeout
    return settings
