"""Configuration: frozen values plus one loader (TOML file, then CLI overrides).

Durations are in seconds everywhere (``SECONDS``/``MILLISECONDS`` make call sites
explicit); sizes in bytes (``KIB``/``MIB``). A TOML file looks like::

    [server]
    inference_address = "127.0.0.1:8080"
    model_store = "models"

    [defaults]            # applied to every model, under its own keys
    workers = 1
    [defaults.restart]
    max_restarts = 5

    [[models]]
    name = "iris"
    handler = "handlers.builtin.iris"

Every value is validated when loaded; a mistake raises ``ConfigError`` naming it.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
from attrs import validators as v

from supervisor import limits
from supervisor.policy import RestartPolicy

__all__ = [
    "DEFAULT_MODEL",
    "ENV_PREFIX",
    "KIB",
    "LOG_FORMATS",
    "MIB",
    "MILLISECONDS",
    "READINESS_MODES",
    "SECONDS",
    "ConfigError",
    "ModelConfig",
    "ServerConfig",
    "env_defaults",
    "env_settings",
    "load_config",
    "model_config",
    "name_from_url",
    "read_toml",
    "split_address",
]

SECONDS = 1.0
MILLISECONDS = 0.001
KIB = 1024
MIB = 1024 * KIB

_number = v.instance_of((int, float))  # so a string is named, not compared
_positive = v.and_(_number, v.gt(0.0))
_non_negative = v.and_(_number, v.ge(0.0))
_int = v.instance_of(int)  # TOML floats such as ``batch_size = 2.5`` are not counts
_duration = v.and_(_positive, limits.bounded(limits.MAX_DURATION, "seconds"))
_per_model = limits.bounded(
    limits.MAX_WORKERS_PER_MODEL, "workers per model (max_workers_per_model)"
)
MAX_MODEL_NAME_LENGTH = 255
_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.\-]{{0,{MAX_MODEL_NAME_LENGTH - 1}}}")
_NAME_RULE = (
    f"use 1-{MAX_MODEL_NAME_LENGTH} letters, digits, '_', '.' or '-', "
    "starting with a letter or digit"
)


def _name(_instance: Any, attribute: Any, value: Any) -> None:
    """A model name or version: it appears in URLs, metric labels and file names."""
    if not (isinstance(value, str) and _NAME.fullmatch(value)):
        raise ValueError(f"model {attribute.name} {_brief(value)} is invalid: {_NAME_RULE}")


def _brief(value: Any) -> str:
    """``value`` for a message: its repr, cut short (a name may be thousands of characters)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".mar", ".zip")
LOG_FORMATS = ("text", "json")
"""The values of ``log_format``."""
READINESS_MODES = ("all", "any")
"""The values of ``readiness``: every start-up model ready, or at least one."""


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid."""


_SCHEMES = ("http", "https")


def split_address(address: str) -> tuple[str, str]:
    """A listener address as ``(scheme, "host:port")``.

    ``"https://127.0.0.1:8443"`` gives ``("https", "127.0.0.1:8443")``; a bare
    ``"127.0.0.1:8080"`` is http.
    """
    scheme, sep, rest = address.partition("://")
    return (scheme.lower(), rest) if sep else ("http", address)


def _address(_instance: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name}: expected a string, got {_brief(value)}")
    scheme, rest = split_address(value)
    if scheme not in _SCHEMES or not rest:
        raise ValueError(
            f"{attribute.name} {_brief(value)}: expected HOST:PORT, http://HOST:PORT "
            "or https://HOST:PORT"
        )


def _grpc_address(_instance: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name}: expected a string, got {_brief(value)}")
    host, sep, port = value.rpartition(":")
    if "://" in value or not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{attribute.name} {_brief(value)}: expected HOST:PORT (no scheme)")


def _patterns(value: Any) -> tuple[str, ...]:
    """``allowed_urls`` as a tuple; a lone string is one pattern, not its characters."""
    return (value,) if isinstance(value, str) else tuple(value)


def _regex(_instance: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name}: each pattern must be a string, got {value!r}")
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(
            f"{attribute.name}: {value!r} is not a regular expression: {exc}"
        ) from None


@attrs.frozen
class ModelConfig:
    """One model version and how its workers run.

    Attributes:
        name: the model's name in URLs.
        handler: ``module``, ``module:Class`` or ``module:function`` run by workers;
            may be empty when ``url`` is given (the archive's manifest names it).
        url: an archive or model directory name in the model store, or a URL, that
            the model is loaded from; empty for a model given by ``handler`` and
            ``model_dir`` alone. A handler or a url (or both) is required.
        version: the model's version.
        model_dir: directory with the model's files (put on the worker's sys.path).
        workers: workers started at load (the minimum kept running).
        max_workers: the most workers scaling may reach.
        batch_size: the most requests handed to a worker at once.
        max_batch_delay: under load, how long a batch may wait to fill, in seconds.
        job_queue_size: requests that may wait for a worker; more get 503 at once.
        client_timeout: seconds a request may wait for its answer (0: no limit); a
            request past it gets 504 and is never handed to a worker afterwards.
        torch_threads: torch's intra-op threads per worker; 0 shares the machine's
            cores among all the workers running on it.
        warm_spare: keep one standby worker with the model loaded, which takes over
            the moment a worker dies (then another is started in the background).
        response_timeout: the longest a worker may take on one batch, in seconds.
        startup_timeout: the longest a worker may take to load the model, in seconds.
        heartbeat_interval: seconds between heartbeats to an idle or busy worker.
        heartbeat_timeout: a worker silent this long is hung and gets replaced.
        stop_grace: seconds between SIGTERM and SIGKILL when stopping a worker.
        memory_limit_mb: the most resident memory a worker (with its own
            subprocesses) may use, in MiB; a worker over it is ended and replaced.
            0: no limit.
        log_lines: the most log lines kept per worker.
        log_bytes: the most log bytes kept per worker.
        restart: the restart policy.
        handler_config: free-form settings handed to the handler.
    """

    name: str = attrs.field(validator=_name)
    handler: str = attrs.field(default="", validator=v.instance_of(str))
    url: str = attrs.field(default="", validator=v.instance_of(str))
    version: str = attrs.field(default="1.0", validator=_name)
    model_dir: str = ""
    workers: int = attrs.field(default=1, validator=[_int, v.ge(0), _per_model])
    max_workers: int = attrs.field(default=0, validator=[_int, v.ge(0), _per_model])
    batch_size: int = attrs.field(
        default=1, validator=[_int, v.ge(1), limits.bounded(limits.MAX_BATCH_SIZE)]
    )
    max_batch_delay: float = attrs.field(
        default=10 * MILLISECONDS,
        validator=[_non_negative, limits.bounded(limits.MAX_BATCH_DELAY, "seconds")],
    )
    job_queue_size: int = attrs.field(
        default=100, validator=[_int, v.ge(1), limits.bounded(limits.MAX_JOB_QUEUE_SIZE)]
    )
    client_timeout: float = attrs.field(
        default=0.0, validator=[_non_negative, limits.bounded(limits.MAX_DURATION, "seconds")]
    )
    torch_threads: int = attrs.field(
        default=0, validator=[_int, v.ge(0), limits.bounded(limits.MAX_TORCH_THREADS)]
    )
    warm_spare: bool = attrs.field(default=False, validator=v.instance_of(bool))
    response_timeout: float = attrs.field(default=120 * SECONDS, validator=_duration)
    startup_timeout: float = attrs.field(default=120 * SECONDS, validator=_duration)
    heartbeat_interval: float = attrs.field(default=1 * SECONDS, validator=_duration)
    heartbeat_timeout: float = attrs.field(default=10 * SECONDS, validator=_duration)
    stop_grace: float = attrs.field(
        default=2 * SECONDS,
        validator=[_non_negative, limits.bounded(limits.MAX_STOP_GRACE, "seconds")],
    )
    memory_limit_mb: int = attrs.field(
        default=0, validator=[_int, v.ge(0), limits.bounded(limits.MAX_MEMORY_LIMIT_MB, "MiB")]
    )
    log_lines: int = attrs.field(
        default=200, validator=[_int, v.ge(1), limits.bounded(limits.MAX_LOG_LINES)]
    )
    log_bytes: int = attrs.field(
        default=64 * KIB, validator=[_int, v.ge(1), limits.bounded(limits.MAX_LOG_BYTES)]
    )
    restart: RestartPolicy = attrs.field(factory=RestartPolicy)
    handler_config: Mapping[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if not self.handler and not self.url:
            raise ValueError("a 'handler' or a 'url' is required")

    @property
    def worker_limit(self) -> int:
        """The most workers this model may run (at least ``workers``)."""
        return max(self.workers, self.max_workers)


DEFAULT_MODEL = ModelConfig(name="iris", handler="handlers.builtin.iris")
"""The built-in model served when no model is configured."""


@attrs.frozen
class ServerConfig:
    """The server: its listeners, its model store and its models.

    Attributes:
        inference_address: ``host:port`` of the inference API; ``https://host:port``
            serves it over TLS (so do the other two addresses).
        management_address: ``host:port`` of the management API.
        metrics_address: ``host:port`` of the metrics API.
        certificate_file: the PEM certificate (chain) the https ports present.
        private_key_file: the PEM private key of that certificate; it must not be
            readable by group or others, nor encrypted.
        model_store: directory that relative ``model_dir`` values are resolved in.
        models: the models loaded at start-up.
        shutdown_grace: seconds in-flight requests get to finish on SIGTERM.
        pre_stop_delay: seconds between SIGTERM and the start of the drain: the
            readiness probe answers 503 at once, every answer closes its
            connection, and the listeners keep serving, so that a load balancer
            takes the server out before it stops accepting (SIGINT and an
            embedder's ``shutdown`` event skip it).
        readiness: when ``/v2/health/ready`` says ready: ``all`` start-up models
            ready, or ``any`` (at least one).
        keys_from: a key file made beforehand (TorchServe's layout; e.g. a
            Kubernetes Secret mounted read-only) whose keys are used as they are;
            it is never written or removed, ``key_file`` is not written, and
            rotating a key over HTTP is refused. Empty: random keys at start.
        enable_model_api: allow registering and unregistering models over HTTP.
        disable_token_authorization: serve without bearer tokens (not recommended).
        key_file: where the tokens are written (mode 0600) when authorization is on.
        allowed_urls: regular expressions a registration ``url`` must match in full;
            empty allows only archives and directories inside the model store.
        max_request_size: the largest request body accepted, in bytes (413 beyond).
        download_timeout: seconds a remote archive download may take.
        max_download_size: the largest remote archive accepted, in bytes.
        read_timeout: seconds a client may take to send a request before it is dropped.
        keep_alive_timeout: seconds an idle keep-alive connection is kept open.
        write_timeout: seconds a client may take to take (read) each part of a
            response before its connection is dropped.
        max_connections: open connections on the lean inference port at most, and
            requests in progress on each Hypercorn port; more get 503.
        lean_http: serve the inference port with the lean HTTP/1.1 front end (the
            prediction routes without a framework); false serves it with Hypercorn
            and Quart like the other ports.
        max_workers_total: the most workers on this machine, all models and
            versions together; a registration or scale beyond it gets 400.
        log_dir: the directory of the log files that are on (TorchServe's ``logs``).
        access_log: one line per request (TorchServe's ``access_log.log``): true
            writes ``<log_dir>/access_log.log``, a string names the file; off by default.
        model_log: the workers' output, each line naming its model and worker
            (TorchServe's ``model_log.log``): true or a file, as ``access_log``.
        log_format: ``text``, or ``json`` (one object a line) for log shippers;
            applies to the server's log on stderr and to the log files.
        log_max_size: a log file is rotated when it reaches this size, in bytes.
        log_backups: rotated log files kept (``access_log.log.1`` ...).
        config_snapshots: after every management change, write a config snapshot
            (the models, versions, defaults and worker counts) to ``snapshot_dir``
            before answering, and at start restore the newest good one. On for
            ``python -m supervisor serve`` unless ``--ncs``; off by default here,
            so that an embedded server writes nothing unasked.
        snapshot_dir: where config snapshots are written (TorchServe's
            ``logs/config``, relative to the working directory).
        grpc: serve TorchServe's gRPC APIs and OIP v2 over gRPC on
            ``grpc_inference_address`` and ``grpc_management_address``. On for
            ``python -m supervisor serve`` unless ``--no-grpc``; off by default
            here, so that an embedded server opens no port unasked.
        grpc_inference_address: ``host:port`` of the gRPC inference port (port 0: a
            free one).
        grpc_management_address: ``host:port`` of the gRPC management port.
        grpc_tls: serve both gRPC ports over TLS with ``certificate_file`` and
            ``private_key_file`` (TorchServe's ``enable_grpc_ssl``).
        grpc_max_concurrent_calls: calls served at once on each gRPC port; one
            more is refused with RESOURCE_EXHAUSTED (a bound, not a queue).
        defaults: the model defaults (``[defaults]``), for models registered later.
    """

    inference_address: str = attrs.field(default="127.0.0.1:8080", validator=_address)
    management_address: str = attrs.field(default="127.0.0.1:8081", validator=_address)
    metrics_address: str = attrs.field(default="127.0.0.1:8082", validator=_address)
    certificate_file: str = attrs.field(default="", validator=v.instance_of(str))
    private_key_file: str = attrs.field(default="", validator=v.instance_of(str))
    model_store: str = ""
    models: tuple[ModelConfig, ...] = ()
    shutdown_grace: float = attrs.field(
        default=10 * SECONDS,
        validator=[_non_negative, limits.bounded(limits.MAX_STOP_GRACE, "seconds")],
    )
    pre_stop_delay: float = attrs.field(
        default=5 * SECONDS,
        validator=[_non_negative, limits.bounded(limits.MAX_STOP_GRACE, "seconds")],
    )
    readiness: str = attrs.field(default="all", validator=v.in_(READINESS_MODES))
    keys_from: str = attrs.field(default="", validator=v.instance_of(str))
    enable_model_api: bool = attrs.field(default=False, validator=v.instance_of(bool))
    disable_token_authorization: bool = attrs.field(default=False, validator=v.instance_of(bool))
    key_file: str = attrs.field(default="key_file.json", validator=v.instance_of(str))
    allowed_urls: tuple[str, ...] = attrs.field(
        default=(), converter=_patterns, validator=v.deep_iterable(_regex)
    )
    max_request_size: int = attrs.field(default=6553500, validator=[_int, v.gt(0)])
    download_timeout: float = attrs.field(default=60 * SECONDS, validator=_duration)
    max_download_size: int = attrs.field(default=1024 * MIB, validator=[_int, v.gt(0)])
    read_timeout: float = attrs.field(default=30 * SECONDS, validator=_duration)
    keep_alive_timeout: float = attrs.field(default=5 * SECONDS, validator=_duration)
    write_timeout: float = attrs.field(default=30 * SECONDS, validator=_duration)
    max_connections: int = attrs.field(default=1000, validator=[_int, v.gt(0)])
    lean_http: bool = attrs.field(default=True, validator=v.instance_of(bool))
    max_workers_total: int = attrs.field(
        default=limits.DEFAULT_MAX_WORKERS_TOTAL,
        validator=[_int, v.ge(1), limits.bounded(limits.MAX_WORKERS_TOTAL)],
    )
    config_snapshots: bool = attrs.field(default=False, validator=v.instance_of(bool))
    snapshot_dir: str = attrs.field(
        default="logs/config", validator=[v.instance_of(str), v.min_len(1)]
    )
    grpc: bool = attrs.field(default=False, validator=v.instance_of(bool))
    grpc_inference_address: str = attrs.field(default="127.0.0.1:7070", validator=_grpc_address)
    grpc_management_address: str = attrs.field(default="127.0.0.1:7071", validator=_grpc_address)
    grpc_tls: bool = attrs.field(default=False, validator=v.instance_of(bool))
    grpc_max_concurrent_calls: int = attrs.field(
        default=256, validator=[_int, v.gt(0), v.le(65536)]
    )
    log_dir: str = attrs.field(default="logs", validator=v.instance_of(str))
    access_log: bool | str = attrs.field(default=False, validator=v.instance_of((bool, str)))
    model_log: bool | str = attrs.field(default=False, validator=v.instance_of((bool, str)))
    log_format: str = attrs.field(default="text", validator=v.in_(LOG_FORMATS))
    log_max_size: int = attrs.field(default=100 * MIB, validator=[_int, v.gt(0)])
    log_backups: int = attrs.field(default=5, validator=[_int, v.ge(0)])
    defaults: Mapping[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        workers = sum(m.workers for m in self.models)
        why = limits.check_total("workers", workers, 0, self.max_workers_total)
        if why is not None:
            raise ValueError(f"the configured models, all together: {why}")
        self._check_tls()

    @property
    def tls_addresses(self) -> tuple[str, ...]:
        """The addresses served over TLS (``https://``)."""
        addresses = (self.inference_address, self.management_address, self.metrics_address)
        return tuple(a for a in addresses if split_address(a)[0] == "https")

    def _check_tls(self) -> None:
        if self.tls_addresses and not (self.certificate_file and self.private_key_file):
            raise ValueError(
                f"{self.tls_addresses[0]} is https: set certificate_file and "
                "private_key_file (PEM files) too"
            )
        if self.grpc and self.grpc_tls and not (self.certificate_file and self.private_key_file):
            raise ValueError("grpc_tls: set certificate_file and private_key_file (PEM files) too")


ENV_PREFIX = "SUPERVISOR_"
"""``SUPERVISOR_<KEY>`` sets the ``[server]`` key ``key`` (``SUPERVISOR_PRE_STOP_DELAY``)."""
_NOT_FROM_ENV = frozenset({"models", "defaults", "allowed_urls"})
_IDENTITY = frozenset({"name", "handler", "url", "version", "model_dir"})
_SCALARS = ("int", "float", "bool", "str", "bool | str")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def env_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``[server]`` keys that ``SUPERVISOR_<KEY>`` environment variables set.

    Every server key can be set so except ``models``, ``defaults`` and
    ``allowed_urls`` (the environment alone does not widen where models are
    downloaded from, as with TorchServe's ``use_env_allowed_urls``). Values are
    read as the key's type: numbers, ``true``/``false`` (also 1/0, yes/no,
    on/off), or text.

    Raises:
        ConfigError: a value is not of its key's type (the variable is named).
    """
    return _from_env(ServerConfig, ENV_PREFIX, environ, _NOT_FROM_ENV)


def env_defaults(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``[defaults]`` keys that ``SUPERVISOR_DEFAULTS_<KEY>`` variables set.

    ``SUPERVISOR_DEFAULTS_RESTART_<KEY>`` sets ``[defaults.restart]`` keys. A
    model's identity (``name``, ``handler``, ``url``, ``version``, ``model_dir``)
    and ``handler_config`` are not model defaults.

    Raises:
        ConfigError: a value is not of its key's type (the variable is named).
    """
    found = _from_env(ModelConfig, f"{ENV_PREFIX}DEFAULTS_", environ, _IDENTITY)
    restart = _from_env(RestartPolicy, f"{ENV_PREFIX}DEFAULTS_RESTART_", environ, frozenset())
    if restart:
        found["restart"] = restart
    return found


def _from_env(
    cls: type[Any], prefix: str, environ: Mapping[str, str], skip: frozenset[str]
) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for field in attrs.fields(cls):
        name, kind = prefix + field.name.upper(), str(field.type)
        if field.name in skip or kind not in _SCALARS or name not in environ:
            continue
        found[field.name] = _env_value(name, kind, environ[name])
    return found


def _env_value(name: str, kind: str, raw: str) -> Any:
    text = raw.strip()
    if kind in ("bool", "bool | str") and text.lower() in _TRUE + _FALSE:
        return text.lower() in _TRUE
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {_brief(raw)}") from None
    if kind == "bool":
        raise ConfigError(f"{name}: expected true or false, got {_brief(raw)}")
    return raw


def _build(cls: type[Any], table: Mapping[str, Any], where: str) -> Any:
    known = {f.name for f in attrs.fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    try:
        return cls(**table)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def model_config(
    table: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
) -> ModelConfig:
    """Build one model's config from its table layered over ``defaults``.

    Args:
        table: the model's own keys (``restart`` may be a nested table).
        defaults: keys applied first, under the model's own.
    """
    table = _table(table, "model")
    merged = {**(defaults or {}), **table}
    restart = {
        **_table((defaults or {}).get("restart", {}), "defaults restart"),
        **_table(table.get("restart", {}), f"model {table.get('name', '?')} restart"),
    }
    merged["restart"] = _build(RestartPolicy, restart, f"model {table.get('name', '?')} restart")
    if "name" not in merged and isinstance(merged.get("url"), str):
        merged["name"] = name_from_url(merged["url"])
    where = f"model {str(merged.get('name', '?'))[:60]}"  # a name may be very long
    if "name" not in merged or not ({"handler", "url"} & merged.keys()):
        raise ConfigError(f"{where}: 'name' and a 'handler' or a 'url' are required")
    return _build(ModelConfig, merged, where)  # type: ignore[no-any-return]


def name_from_url(url: str) -> str:
    """The default model name for ``url``: its last path segment, less an archive suffix.

    ``"resnet-18.mar"``, ``"https://host/m/resnet-18.tar.gz?sig=x"`` and
    ``"resnet-18/"`` all give ``"resnet-18"`` (TorchServe's fallback when a
    manifest has no ``modelName``).
    """
    path = urlsplit(url).path if "://" in url else url
    name = path.rstrip("/").rsplit("/", 1)[-1]
    for suffix in _ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def load_config(
    path: str | Path | None = None,
    *,
    server: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
    models: list[Mapping[str, Any]] | None = None,
) -> ServerConfig:
    """Load the TOML file at ``path`` (if any), then apply overrides.

    Args:
        path: a TOML file with ``[server]``, ``[defaults]`` and ``[[models]]``.
        server: server keys that win over the file's.
        defaults: model keys that win over the file's ``[defaults]``.
        models: model tables that replace the file's models when given.

    Returns:
        The validated configuration; the built-in model when none is configured.
    """
    data = read_toml(path)
    file_defaults = _table(data.get("defaults", {}), "[defaults]")
    model_defaults = {**file_defaults, **(defaults or {})}
    if "restart" in file_defaults and defaults and "restart" in defaults:
        file_restart = _table(file_defaults["restart"], "[defaults.restart]")
        model_defaults["restart"] = {**file_restart, **defaults["restart"]}
    tables = models if models is not None else data.get("models") or []
    if not isinstance(tables, list):
        raise ConfigError(f"models: expected an array of tables ([[models]]), got {tables!r}")
    built = tuple(model_config(t, model_defaults) for t in tables)
    if not built:
        builtin = {"name": DEFAULT_MODEL.name, "handler": DEFAULT_MODEL.handler}
        built = (model_config(builtin, model_defaults),)
    _check_unique(built)
    server_table = {**_table(data.get("server", {}), "[server]"), **(server or {})}
    table = {**server_table, "models": built, "defaults": model_defaults}
    config: ServerConfig = _build(ServerConfig, table, "server")
    return _resolve_model_dirs(config)


def read_toml(path: str | Path | None) -> dict[str, Any]:
    """A config file's sections, checked: ``server`` and ``defaults`` tables, ``models``.

    Returns:
        ``{"server": {...}, "defaults": {...}, "models": [...] or None}`` (empty
        tables and None when ``path`` is None).
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
    unknown = sorted(set(data) - {"server", "defaults", "models"})
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)}")
    for section in ("server", "defaults"):
        _table(data.setdefault(section, {}), f"[{section}]")
    data.setdefault("models", None)
    return data


def _resolve_model_dirs(config: ServerConfig) -> ServerConfig:
    """Make model dirs absolute: relative ones are found in the model store (or cwd)."""
    store = os.path.abspath(config.model_store or ".")
    models = tuple(
        attrs.evolve(m, model_dir=os.path.join(store, m.model_dir)) if m.model_dir else m
        for m in config.models
    )
    return attrs.evolve(config, models=models)


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a table, got {value!r}")
    return dict(value)


def _check_unique(models: tuple[ModelConfig, ...]) -> None:
    seen = set()
    for m in models:
        if (m.name, m.version) in seen:
            raise ConfigError(f"model {m.name} version {m.version} is configured twice")
        seen.add((m.name, m.version))
