"""Turning a registration (``POST /models`` or a configured ``url``) into a model.

The ``url`` is resolved (store name, or allowed remote URL downloaded into the
store), unpacked, and its manifest read. Settings are layered, most specific
first: the request's parameters, then the archive's ``model-config.yaml``, then
the server's model defaults. (TorchServe lets the YAML win over the request,
against its own documentation; see docs/torchserve-compat.md.) As in TorchServe,
``POST /models`` starts no workers unless asked to, and its parameters are read
leniently: values TorchServe ignores are ignored here too, with a warning.

Our extensions make a registration a safe update: ``set_default`` switches the
default version only once the new one passes its canaries (``canaries``: a JSON
list, or a canary file in the model store; else the archive's ``canaries.json``),
and ``retire_old`` then drains and unloads the old default.
"""

from __future__ import annotations

import logging
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

__all__ = [
    "Registration",
    "parse_flag",
    "parse_registration",
    "prepare_model",
    "request_canaries",
]

log = logging.getLogger("supervisor.models")

_INTS = ("batch_size", "initial_workers")
_FLOATS = ("max_batch_delay", "response_timeout", "startup_timeout")
_RUNTIMES = ("python", "python3")
_SHOWN = 40
"""The most characters of an ignored value that a warning quotes."""


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

    Lenient where TorchServe is: a number parameter that is not a number, a
    negative ``initial_workers`` and a ``response_timeout`` or ``startup_timeout``
    of 0 or less are ignored (the default applies), and a ``synchronous`` that is
    not a boolean is false; each is logged as a warning naming the value.

    Raises:
        InvalidRequest: no url, a runtime other than python, ``startup_timeout``
            of 0 or less with workers to start, or extensions that do not combine.
        ModelNotFound: an empty url (TorchServe's ``empty url``).
    """
    url = params.get("url")
    if url is None:
        raise InvalidRequest("Parameter url is required.")
    if url == "":
        raise ModelNotFound("empty url")
    _check_runtime(params.get("runtime"))
    values: dict[str, Any] = {"url": str(url)}
    for key in ("model_name", "handler"):
        if params.get(key):
            values[key] = str(params[key])
    values.update(_numbers(params))
    for key, default in (("synchronous", True), ("set_default", False), ("retire_old", False)):
        if key in params:
            values[key] = parse_flag(key, params[key], default)
    reg = Registration(**values)
    _check_extensions(reg)
    return reg


def parse_flag(key: str, raw: Any, default: bool) -> bool:
    """A boolean parameter: ``true``/``1``/``yes`` or ``false``/``0``/``no``.

    Anything else is false, as TorchServe's ``Boolean.parseBoolean`` reads it,
    with a warning; an empty value (``key=``) is ``default``.
    """
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    if text == "":
        return default
    log.warning("%s=%r is not true or false; taken as false", key, str(raw)[:_SHOWN])
    return False


def _check_runtime(runtime: Any) -> None:
    """TorchServe's runtimes that run here: ``python`` and ``python3`` (its 400 otherwise)."""
    if runtime is None or runtime in _RUNTIMES:
        return
    text = str(runtime)[:_SHOWN]
    if text == "LSP":
        raise InvalidRequest(
            "Invalid RuntimeType value: LSP (not supported: handlers run as Python)"
        )
    raise InvalidRequest(f"Invalid RuntimeType value: {text}")


def _numbers(params: Mapping[str, Any]) -> dict[str, Any]:
    """The number parameters that are usable; the others are logged and ignored."""
    values: dict[str, Any] = {}
    for key, kind in [(k, int) for k in _INTS] + [(k, float) for k in _FLOATS]:
        raw = params.get(key)
        if raw is None or raw == "":
            continue
        value = _number(key, raw, kind)
        if value is not None and _usable(key, value, params):
            values[key] = value
    return values


def _number(key: str, raw: Any, kind: type[int] | type[float]) -> int | float | None:
    """``raw`` as a number, or None (logged) if it is not one, as TorchServe ignores it."""
    try:
        if isinstance(raw, bool):
            raise TypeError(raw)
        return kind(raw)
    except (TypeError, ValueError, OverflowError):
        what = "an integer" if kind is int else "a number"
        log.warning("ignoring %s=%r: not %s; using the default", key, str(raw)[:_SHOWN], what)
        return None


def _usable(key: str, value: float, params: Mapping[str, Any]) -> bool:
    """Whether ``value`` is used; TorchServe ignores these values (logged here).

    Raises:
        InvalidRequest: ``startup_timeout`` of 0 or less for workers asked for at
            once (TorchServe's workers then fail to start: a 500).
    """
    if key == "initial_workers" and value < 0:
        log.warning("ignoring initial_workers=%d: below 0; using the default", value)
        return False
    if key in ("response_timeout", "startup_timeout") and value <= 0:
        if key == "startup_timeout" and _asks_for_workers(params):
            raise InvalidRequest(
                f"startup_timeout={value:g} leaves the initial workers no time to start; "
                "give more seconds, or leave it out for the default"
            )
        log.warning("ignoring %s=%g: not above 0; using the default", key, value)
        return False
    return True


def _asks_for_workers(params: Mapping[str, Any]) -> bool:
    try:
        return int(params.get("initial_workers") or 0) > 0
    except (TypeError, ValueError):
        return False


def _check_extensions(reg: Registration) -> None:
    if reg.retire_old and not reg.set_default:
        raise InvalidRequest("retire_old=true needs set_default=true")
    if reg.set_default and not reg.synchronous:
        raise InvalidRequest(
            "set_default=true needs synchronous=true: the switch waits for the new workers"
        )


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
        base: the settings under the archive's ``model-config.yaml``; None for
            ``POST /models``: the server's model defaults, with TorchServe's
            default of no workers (see ``_api_defaults``).

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
            _layers, files, _api_defaults(reg, server) if base is None else base
        )
        return _model_config(reg, files, layers), files
    except BaseException:
        await trio.to_thread.run_sync(remove_paths, files.leftovers())
        raise


def _api_defaults(reg: Registration, server: ServerConfig) -> Mapping[str, Any]:
    """The model defaults under a ``POST /models`` registration's YAML.

    As in TorchServe, such a registration starts no workers unless it asks for
    them (``initial_workers``), its YAML does (``minWorkers``), or the server's
    default workers are configured (``default_workers_per_model``, ``workers``
    in ``[defaults]``, ``--workers``). A safe update (``set_default``) starts the
    model defaults' workers (1 if none are configured): its switch needs them.
    """
    if reg.set_default or "workers" in server.defaults:
        return server.defaults
    return {**server.defaults, "workers": 0}


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
