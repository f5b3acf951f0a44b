"""TorchServe's configuration, read as-is: ``config.properties`` and ``model-config.yaml``.

Pure: plain values in, the tables ``supervisor.config.load_config`` takes out
(``read_properties`` is the one function that reads a file; nothing here
imports trio). ``config.properties`` keys and where they go:

============================= ==========================================================
TorchServe key                ours
============================= ==========================================================
inference_address             server.inference_address (``http://H:P`` becomes ``H:P``,
                              ``https://H:P`` stays; unix: ConfigError)
management_address            server.management_address
metrics_address               server.metrics_address
certificate_file              server.certificate_file (PEM, for the https addresses)
private_key_file              server.private_key_file (PEM, mode 0600, not encrypted)
model_store                   server.model_store
max_request_size              server.max_request_size (bytes)
allowed_urls                  server.allowed_urls (comma-separated regular expressions)
enable_model_api              server.enable_model_api
disable_token_authorization   server.disable_token_authorization
key_file                      server.key_file (ours; TorchServe has no such key)
default_workers_per_model     defaults.workers (0, TorchServe's "one per GPU or CPU",
                              leaves our default)
NUM_WORKERS                   defaults.workers when default_workers_per_model is 0
job_queue_size                defaults.job_queue_size
default_response_timeout      defaults.response_timeout (seconds in both)
default_startup_timeout       defaults.startup_timeout (seconds in both)
load_models                   model tables: ``x.mar`` gives ``{"url": "x.mar"}``,
                              ``n=x.mar`` ``{"name": "n", "url": "x.mar"}``, ``all`` one
                              table per archive or directory in the store
models                        per-model settings layered under those tables
model_snapshot                its models are loaded instead of ``load_models``, the
                              ``defaultVersion`` one of each name first (the first
                              version loaded is the default)
enable_envvars_config         ``true``: ``TS_<KEY>`` environment variables set these keys
                              (``env_properties``); ``TS_ALLOWED_URLS`` only with
                              ``use_env_allowed_urls=true`` too
============================= ==========================================================

Per-model keys, in the ``models`` JSON and in ``model-config.yaml``: ``minWorkers``
-> ``workers``, ``maxWorkers`` -> ``max_workers``, ``batchSize`` -> ``batch_size``,
``maxBatchDelay`` (milliseconds) -> ``max_batch_delay`` (seconds),
``responseTimeout`` -> ``response_timeout``, ``startupTimeout`` ->
``startup_timeout``, ``jobQueueSize`` -> ``job_queue_size``, ``memoryLimitMb``
(ours) -> ``memory_limit_mb``; the JSON's
``marName`` -> ``url``, and our ``handler`` and ``modelDir`` (a model given by a
handler, not an archive, in our config snapshots) -> ``handler`` and ``model_dir``;
the YAML's ``maxRetryTimeoutInSec`` -> ``restart.window``.

Every other key is ignored, as TorchServe ignores keys it does not know;
``ignored_keys`` names them so that the caller can log them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import yaml

from supervisor.config import MIB, MILLISECONDS, SECONDS, ConfigError, name_from_url
from supervisor.models.archive import ARCHIVE_SUFFIXES

__all__ = [
    "ALL_MODELS",
    "ENV_VARS",
    "MAX_YAML_BYTES",
    "env_properties",
    "ignored_keys",
    "model_yaml_settings",
    "parse_properties",
    "parse_snapshot_models",
    "read_properties",
    "server_settings",
    "store_tables",
    "substitute_env",
    "with_model_params",
]

ALL_MODELS = "all"
"""The ``load_models`` (and ``--models``) value that loads every model in the store."""

_Table = dict[str, Any]
_Convert = Callable[[str, Any], Any]

_FILE = "config.properties"
_YAML = "model-config.yaml"

MAX_YAML_BYTES = 1 * MIB
"""The largest model-config.yaml read."""
MAX_YAML_EXPANDED = 10 * MIB
"""The most a model-config.yaml may hold with its aliases expanded: a node counts
one, a scalar one more per character (so a 1 KB "billion laughs" cannot become the
gigabytes of JSON that go to every worker)."""
MAX_YAML_DEPTH = 100
"""The deepest nesting of collections in a model-config.yaml."""

# libyaml's parser when PyYAML has it: the pure-Python one takes seconds a megabyte.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# TorchServe keys that exist there and have no effect here (JVM, Netty, TLS,
# CORS, metrics modes, GPUs, workflows, ...): logged, never an error.
# fmt: off
_UNSUPPORTED = frozenset((
    "async_logging", "blacklist_env_vars", "cors_allowed_headers",
    "cors_allowed_methods", "cors_allowed_origin", "cpu_launcher_args", "cpu_launcher_enable",
    "debug", "decode_input_request", "default_service_handler", "disable_system_metrics",
    "enable_metrics_api", "grpc_inference_max_connection_age_grace_ms",
    "grpc_inference_max_connection_age_ms", "grpc_management_max_connection_age_grace_ms",
    "grpc_management_max_connection_age_ms", "initial_distribution_port",
    "initial_worker_port", "install_py_dep_per_model", "io_ratio",
    "ipex_enable", "keystore", "keystore_pass", "keystore_type", "limit_max_image_pixels",
    "max_response_size", "metric_time_interval", "metrics_config", "metrics_format",
    "metrics_mode", "model_metrics_auto_detect", "model_server_home", "netty_client_threads",
    "number_of_gpu", "number_of_netty_threads", "plugins_path", "prefer_direct_buffer",
    "python", "service_envelope", "snapshot_store", "system_metrics_cmd",
    "token_expiration_min", "ts_header_key_sequence_end", "ts_header_key_sequence_id",
    "ts_header_key_sequence_start", "ts_open_inference_protocol", "tsConfigFile",
    "unregister_model_timeout", "use_native_io", "version", "vmargs",
    "workflow_store"
))
# fmt: on


# --- .properties syntax -----------------------------------------------------------

_NEWLINE = re.compile(r"\r\n|\r|\n")
_BLANK = " \t\f"
# A key runs to the first unescaped "=", ":" or blank; the separator is blanks
# with at most one "=" or ":" among them (java.util.Properties.load).
_LINE = re.compile(r"((?:\\.|[^=: \t\f\\])*)[ \t\f]*(?:[=:][ \t\f]*)?(.*)", re.DOTALL)
_ESCAPE = re.compile(r"\\(u[0-9A-Fa-f]{4}|u|.|$)", re.DOTALL)
_ESCAPED = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}
_ENV_REF = re.compile(r"\$\$([^$]+[^$])\$\$")  # TorchServe's $$NAME$$


def parse_properties(text: str, *, source: str = _FILE) -> dict[str, str]:
    """Parse Java ``.properties`` text the way ``java.util.Properties.load`` does.

    ``key=value``, ``key: value`` and ``key value``; ``#`` and ``!`` comment lines;
    leading blanks are dropped; a line ending in an odd number of backslashes
    continues on the next, whose leading blanks are dropped too. Escapes are
    ``\\t``, ``\\n``, ``\\r``, ``\\f`` and ``\\uXXXX``; any other escaped character
    stands for itself (``\\:``, ``\\=``, ``\\ ``, ``\\#``, ``\\\\``). A key given
    twice keeps its last value. Values keep their trailing blanks.

    Args:
        text: the file's text.
        source: the file's name, for error messages.

    Raises:
        ConfigError: a malformed ``\\uXXXX`` escape.
    """
    props: dict[str, str] = {}
    for line in _logical_lines(text):
        if match := _LINE.fullmatch(line):
            try:
                props[_unescape(match[1])] = _unescape(match[2])
            except ConfigError as exc:
                raise ConfigError(f"{source}: {exc}") from None
    return props


def _logical_lines(text: str) -> Iterator[str]:
    parts: list[str] = []
    for natural in _NEWLINE.split(text):
        line = natural.lstrip(_BLANK)
        if not parts and (not line or line[0] in "#!"):
            continue  # a comment never continues, but a continued line may start with '#'
        if (len(line) - len(line.rstrip("\\"))) % 2:
            parts.append(line[:-1])
            continue
        parts.append(line)
        yield "".join(parts)
        parts = []
    if parts:
        yield "".join(parts)


def _unescape(raw: str) -> str:
    return _ESCAPE.sub(_escaped, raw)


def _escaped(match: re.Match[str]) -> str:
    code = match[1]
    if code == "u":
        raise ConfigError(f"malformed \\uxxxx escape in {match.string!r}")
    if len(code) == 5:
        return chr(int(code[1:], 16))
    return _ESCAPED.get(code, code)


def read_properties(path: str | Path) -> dict[str, str]:
    """Read and parse a ``config.properties`` file (UTF-8, a superset of Java's ASCII).

    Raises:
        ConfigError: the file cannot be read, or it is malformed.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read TorchServe config {path}: {exc}") from None
    return parse_properties(text, source=str(path))


def substitute_env(
    props: Mapping[str, str], environ: Mapping[str, str], *, source: str = _FILE
) -> dict[str, str]:
    """Replace TorchServe's ``$$NAME$$`` references with values from ``environ``.

    ``source`` names the file in error messages.

    Raises:
        ConfigError: a referenced variable is not set (TorchServe refuses to start too).
    """
    resolved: dict[str, str] = {}
    for key, value in props.items():
        for name in _ENV_REF.findall(value):
            if name not in environ:
                raise ConfigError(f"{source} {key}: environment variable {name} is not set")
        resolved[key] = _ENV_REF.sub(lambda m: environ[m[1]], value)
    return resolved


# --- TS_* environment variables ----------------------------------------------------

# The keys of TorchServe's ConfigManager fields named TS_*: with
# enable_envvars_config=true, the variable TS_<NAME> sets the key.
# fmt: off
_ENV_KEYS = (
    "allowed_urls", "async_logging", "blacklist_env_vars", "certificate_file",
    "cors_allowed_headers", "cors_allowed_methods", "cors_allowed_origin", "cpp_log_config",
    "cpu_launcher_args", "cpu_launcher_enable", "debug", "decode_input_request",
    "default_response_timeout", "default_service_handler", "default_startup_timeout",
    "default_workers_per_model", "disable_system_metrics", "disable_token_authorization",
    "enable_grpc_ssl", "enable_metrics_api", "enable_model_api", "grpc_inference_address",
    "grpc_inference_max_connection_age_grace_ms", "grpc_inference_max_connection_age_ms",
    "grpc_inference_port", "grpc_management_address",
    "grpc_management_max_connection_age_grace_ms", "grpc_management_max_connection_age_ms",
    "grpc_management_port", "inference_address", "initial_distribution_port",
    "initial_worker_port", "install_py_dep_per_model", "ipex_enable", "ipex_gpu_enable",
    "job_queue_size", "keystore", "keystore_pass", "keystore_type", "limit_max_image_pixels",
    "load_models", "management_address", "max_request_size", "max_response_size",
    "metrics_address", "metrics_config", "metrics_mode", "model_metrics_auto_detect",
    "model_server_home", "model_store", "netty_client_threads", "number_of_gpu",
    "number_of_netty_threads", "prefer_direct_buffer", "private_key_file", "service_envelope",
    "unregister_model_timeout", "workflow_store",
)
# fmt: on
ENV_VARS: Mapping[str, str] = {
    **{f"TS_{key.upper()}": key for key in _ENV_KEYS},
    # the fields whose names are not TS_ and the key in capitals
    "TS_OPEN_INFERENCE_PROTOCOL": "ts_open_inference_protocol",
    "TS_TOKEN_EXPIRATION_TIME_MIN": "token_expiration_min",
    "TS_HEADER_KEY_SEQUENCE_ID": "ts_header_key_sequence_id",
    "TS_HEADER_KEY_SEQUENCE_START": "ts_header_key_sequence_start",
    "TS_HEADER_KEY_SEQUENCE_END": "ts_header_key_sequence_end",
}
"""TorchServe's configuration variables: ``TS_INFERENCE_ADDRESS`` -> ``inference_address``."""


def env_properties(
    props: Mapping[str, str], environ: Mapping[str, str]
) -> tuple[dict[str, str], list[str]]:
    """The ``config.properties`` keys that ``TS_*`` environment variables set.

    As in TorchServe, only with ``enable_envvars_config=true`` in ``props``, and
    ``TS_ALLOWED_URLS`` only with ``use_env_allowed_urls=true`` too (so that the
    environment alone cannot widen where models are downloaded from). Values are
    taken as they are (no ``$$NAME$$`` substitution, as in TorchServe).

    Returns:
        ``(keys, ignored)``: the keys set, as ``server_settings`` takes them, and
        the variables set that have no effect here (sorted).
    """
    if not _enabled(props, "enable_envvars_config"):
        return {}, []
    found = {var: key for var, key in ENV_VARS.items() if var in environ}
    if not _enabled(props, "use_env_allowed_urls"):
        found.pop("TS_ALLOWED_URLS", None)
    keys = {key: environ[var] for var, key in found.items() if key in _USED}
    return keys, sorted(var for var, key in found.items() if key not in _USED)


def _enabled(props: Mapping[str, str], key: str) -> bool:
    """A switch as Java's ``Boolean.parseBoolean`` reads it: only ``true`` is on."""
    return props.get(key, "").strip().lower() == "true"


# --- values ---------------------------------------------------------------------


def _int(where: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ConfigError(f"{where}: expected a whole number, got {value!r}")


def _number(where: str, value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise ConfigError(f"{where}: expected a number, got {value!r}")


def _seconds(where: str, value: Any) -> float:
    return _number(where, value) * SECONDS


def _millis(where: str, value: Any) -> float:
    return _number(where, value) * MILLISECONDS


def _bool(where: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(f"{where}: expected true or false, got {value!r}")


def _text(where: str, value: Any) -> str:
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")


def _regexes(where: str, value: Any) -> tuple[str, ...]:
    patterns = tuple(p.strip() for p in _text(where, value).split(",") if p.strip())
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"{where}: invalid regular expression {pattern!r}: {exc}") from None
    return patterns


def _address(where: str, value: Any) -> str:
    """``http://HOST[:PORT]`` (or a bare ``HOST:PORT``) as our ``HOST:PORT``; https kept."""
    text = _text(where, value)
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = ("unix", text) if text.lower().startswith("unix:") else ("http", text)
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        raise ConfigError(
            f"{where}={text}: {scheme} listeners are not supported "
            "(put a unix socket in a proxy); use http://HOST:PORT or https://HOST:PORT"
        )
    try:
        parts = urlsplit(f"{scheme}://{rest}")
        port = _DEFAULT_PORTS[scheme] if parts.port is None else parts.port  # as TorchServe
        host = parts.hostname
    except ValueError as exc:
        raise ConfigError(f"{where}={text}: {exc}") from None
    if not host or parts.path not in ("", "/") or parts.query or parts.username:
        raise ConfigError(f"{where}={text}: expected {scheme}://HOST:PORT")
    bound = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return bound if scheme == "http" else f"https://{bound}"


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _object(where: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):  # its type only: the value may be a whole file
        raise ConfigError(f"{where}: expected a mapping, got a {type(value).__name__}")
    return value


def _json(where: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: invalid JSON: {exc}") from None


def _mapped(
    source: Mapping[str, Any], keys: Mapping[str, tuple[str, _Convert]], where: str
) -> _Table:
    """The keys of ``source`` named in ``keys``, renamed and converted."""
    return {
        ours: convert(f"{where} {theirs}", source[theirs])
        for theirs, (ours, convert) in keys.items()
        if theirs in source
    }


_SERVER: dict[str, tuple[str, _Convert]] = {
    "inference_address": ("inference_address", _address),
    "management_address": ("management_address", _address),
    "metrics_address": ("metrics_address", _address),
    "model_store": ("model_store", _text),
    "max_request_size": ("max_request_size", _int),
    "allowed_urls": ("allowed_urls", _regexes),
    "enable_model_api": ("enable_model_api", _bool),
    "disable_token_authorization": ("disable_token_authorization", _bool),
    "key_file": ("key_file", _text),
    "certificate_file": ("certificate_file", _text),
    "private_key_file": ("private_key_file", _text),
    "enable_grpc_ssl": ("grpc_tls", _bool),
}
_GRPC = {"inference": 7070, "management": 7071}
"""The gRPC ports and TorchServe's default port of each (``grpc_<kind>_port``)."""
_DEFAULTS: dict[str, tuple[str, _Convert]] = {
    "job_queue_size": ("job_queue_size", _int),
    "default_response_timeout": ("response_timeout", _seconds),
    "default_startup_timeout": ("startup_timeout", _seconds),
}
_MODEL: dict[str, tuple[str, _Convert]] = {
    "minWorkers": ("workers", _int),
    "maxWorkers": ("max_workers", _int),
    "batchSize": ("batch_size", _int),
    "maxBatchDelay": ("max_batch_delay", _millis),
    "responseTimeout": ("response_timeout", _seconds),
    "startupTimeout": ("startup_timeout", _seconds),
    "jobQueueSize": ("job_queue_size", _int),
    "clientTimeoutInMills": ("client_timeout", _millis),
    "memoryLimitMb": ("memory_limit_mb", _int),
}
_JSON_MODEL = {
    **_MODEL,
    "marName": ("url", _text),
    "handler": ("handler", _text),
    "modelDir": ("model_dir", _text),
}
_USED = frozenset(
    {*_SERVER, *_DEFAULTS, "default_workers_per_model", "NUM_WORKERS"}
    | {f"grpc_{kind}_{part}" for kind in _GRPC for part in ("address", "port")}
    | {"load_models", "models", "model_snapshot", "enable_envvars_config", "use_env_allowed_urls"}
)


# --- config.properties ------------------------------------------------------------


def server_settings(
    props: Mapping[str, str], *, store_entries: Sequence[str] = (), source: str = _FILE
) -> tuple[_Table, _Table, list[_Table]]:
    """Map parsed ``config.properties`` to ``load_config``'s tables.

    Args:
        props: the file's keys (``read_properties``, then ``substitute_env``).
        store_entries: the names in the model store, directories ending in ``/``;
            only ``load_models=all`` uses them.
        source: where ``props`` came from (the file's name), for error messages.

    Returns:
        ``(server, defaults, models)`` for ``load_config(server=..., defaults=...,
        models=...)``. Each model table has a ``url``, maybe a ``name`` and the
        ``models`` JSON's settings for it; the list is empty when the file loads
        no model.

    Raises:
        ConfigError: a value of the wrong type or form, naming the key.
    """
    server = {**_mapped(props, _SERVER, source), **_grpc_addresses(props, source)}
    defaults = {**_workers(props, source), **_mapped(props, _DEFAULTS, source)}
    return server, defaults, _startup_models(props, store_entries, source)


def ignored_keys(props: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """The keys ``server_settings`` does not use, sorted.

    Returns:
        ``(unsupported, unknown)``: TorchServe settings without an effect here, and
        keys TorchServe does not know either (typos, or other tools' settings).
    """
    rest = sorted(set(props) - _USED)
    return [k for k in rest if k in _UNSUPPORTED], [k for k in rest if k not in _UNSUPPORTED]


def _grpc_addresses(props: Mapping[str, str], source: str) -> _Table:
    """``grpc_<kind>_address`` (a host, default 127.0.0.1) and ``grpc_<kind>_port`` as one."""
    table: _Table = {}
    for kind, default_port in _GRPC.items():
        host_key, port_key = f"grpc_{kind}_address", f"grpc_{kind}_port"
        if host_key not in props and port_key not in props:
            continue
        host = props.get(host_key, "").strip() or "127.0.0.1"
        port = _int(f"{source} {port_key}", props[port_key]) if port_key in props else default_port
        if not 0 <= port <= 65535:
            raise ConfigError(f"{source} {port_key}: expected a port (0 to 65535), got {port}")
        table[f"grpc_{kind}_address"] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return table


def _workers(props: Mapping[str, str], source: str) -> _Table:
    # TorchServe reads 0 as "one worker per GPU, else per CPU" and then falls
    # back on NUM_WORKERS; we keep our own default instead of guessing hardware.
    for key in ("default_workers_per_model", "NUM_WORKERS"):
        workers = _int(f"{source} {key}", props[key]) if key in props else 0
        if workers < 0:
            raise ConfigError(f"{source} {key}: expected 0 or more, got {workers}")
        if workers:
            return {"workers": workers}
    return {}


def _startup_models(
    props: Mapping[str, str], store_entries: Sequence[str], source: str
) -> list[_Table]:
    if "model_snapshot" in props:  # TorchServe restores the snapshot and skips load_models
        return parse_snapshot_models(props["model_snapshot"], f"{source} model_snapshot")
    value = props.get("load_models", "").strip()
    if value.lower() == ALL_MODELS:
        tables = store_tables(store_entries)
    else:
        tables = [t for t in map(_url_table, value.split(",")) if t["url"]]
    return with_model_params(tables, props, source=source)


def parse_snapshot_models(text: str, where: str = "model_snapshot") -> list[_Table]:
    """The model tables of a ``model_snapshot`` JSON, each name's default version first.

    ``{"models": {name: {version: {"defaultVersion", "marName", "minWorkers", ...}}}}``
    as TorchServe writes it. The registry makes the first version of a name that
    is loaded its default, so the ``defaultVersion`` one comes first; the order is
    kept otherwise.

    Raises:
        ConfigError: invalid JSON, or a value of the wrong type (``where`` names it).
    """
    snapshot = _object(where, _json(where, text))
    entries = _entries(f"{where} models", snapshot.get("models", {}))
    return [e.table for e in sorted(entries, key=lambda e: not e.default)]


def _url_table(spec: str) -> _Table:
    name, sep, url = spec.partition("=")
    if not sep or "://" in name:  # a bare URL may have '=' in its query
        name, url = "", spec
    table: _Table = {"url": url.strip()}
    if name.strip():
        table["name"] = name.strip()
    return table


def store_tables(entries: Iterable[str]) -> list[_Table]:
    """Model tables for ``load_models=all``: each archive and directory in the store.

    Args:
        entries: the names in the model store, directories ending in ``/``; hidden
            names and files that are not archives are skipped, as TorchServe does.
    """
    return [
        {"url": entry.rstrip("/")}
        for entry in sorted(entries)
        if not entry.startswith(".") and entry.endswith(("/", *ARCHIVE_SUFFIXES))
    ]


class _Entry(NamedTuple):
    table: _Table  # our keys, with name, version and (from marName) url
    default: bool


def with_model_params(
    tables: Iterable[Mapping[str, Any]], props: Mapping[str, str], *, source: str = _FILE
) -> list[_Table]:
    """Layer the ``models`` JSON of ``props`` under each url-loaded model table.

    As in TorchServe the JSON only tunes models that are loaded otherwise; it
    loads none itself. A table takes the JSON entry of its name (or, nameless,
    of its ``marName`` or the url's stem): the version whose ``marName`` is the
    table's url, else the ``defaultVersion`` one, else the only one. The entry
    brings its ``version``; the table's own keys win. ``source`` names the file
    in error messages.

    Raises:
        ConfigError: invalid JSON or a value of the wrong type.
    """
    where = f"{source} models"
    entries = _entries(where, _json(where, props["models"])) if "models" in props else []
    return [{**_params_for(table, entries), **table} for table in tables]


def _params_for(table: Mapping[str, Any], entries: list[_Entry]) -> _Table:
    url, name = table.get("url"), table.get("name")
    mine = [e for e in entries if e.table["name"] == (name or name_from_url(str(url)))]
    if not name:
        mine = [e for e in entries if e.table.get("url") == url] or mine
    by_url = [e for e in mine if e.table.get("url") == url]
    by_default = [e for e in mine if e.default]
    for picked in (by_url, by_default, mine if len(mine) == 1 else []):
        if picked:
            return picked[0].table
    return {}


def _entries(where: str, data: Any) -> list[_Entry]:
    """``{name: {version: {...}}}`` (the ``models`` JSON, a snapshot's models)."""
    entries = []
    for name, versions in _object(where, data).items():
        for version, params in _object(f"{where} {name}", versions).items():
            here = f"{where} {name} {version}"
            params = _object(here, params)
            table = {"name": name, "version": version, **_mapped(params, _JSON_MODEL, here)}
            default = _bool(f"{here} defaultVersion", params.get("defaultVersion", False))
            entries.append(_Entry(table, default))
    return entries


# --- model-config.yaml ------------------------------------------------------------


def model_yaml_settings(yaml_text: str | bytes) -> tuple[_Table, _Table]:
    """Map a model archive's ``model-config.yaml`` to model keys and handler config.

    The frontend keys map as in the module docstring. ``maxRetryTimeoutInSec``
    (TorchServe: keep restarting a failing worker, with backoff, until it has
    been failing for this many seconds, then give up) becomes ``restart.window``,
    our closest notion: more than ``restart.max_restarts`` restarts within
    ``window`` seconds and the model is FAILED. The two are not the same
    measure: with ``max_restarts`` fixed a longer window gives up sooner, not
    later, so raise ``max_restarts`` with it where the difference matters.
    ``deviceIds``, ``deviceType``, ``parallelType`` and
    the rest are not mapped; they stay in the handler config.

    Args:
        yaml_text: the file's text or bytes (safe loading only, within
            ``MAX_YAML_BYTES``, ``MAX_YAML_EXPANDED`` and ``MAX_YAML_DEPTH``).

    Returns:
        ``(model keys, handler_config)``: the model keys for ``model_config`` and
        the whole mapping, which TorchServe hands to the handler as
        ``context.model_yaml_config``.

    Raises:
        ConfigError: invalid YAML, a document over a limit, a top level that is
            not a mapping, or a value of the wrong type.
    """
    data = _load_yaml(yaml_text, _YAML)
    data = _object(_YAML, {} if data is None else data)
    table = _mapped(data, _MODEL, _YAML)
    restart: dict[str, Any] = {}
    if "maxRetryTimeoutInSec" in data:
        window = _seconds(f"{_YAML} maxRetryTimeoutInSec", data["maxRetryTimeoutInSec"])
        restart["window"] = window
    restart.update(_restart_policy(data.get("restartPolicy")))
    if restart:
        table["restart"] = restart
    return table, dict(data)


def _load_yaml(text: str | bytes, where: str) -> Any:
    """Parse one YAML document safely, within the size, alias and nesting limits.

    Raises:
        ConfigError: invalid YAML (the message gives the problem and its place,
            never an excerpt of the text), or a document over a limit.
    """
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{where}: over the limit of {MAX_YAML_BYTES // MIB} MiB")
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, where)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: invalid YAML: {_yaml_problem(exc)}") from None
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong and where; PyYAML's own message quotes the lines around it."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return type(exc).__name__
    problem = str(exc.problem or exc.context or "malformed")[:100]
    mark = exc.problem_mark or exc.context_mark
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def _check_expansion(root: yaml.Node, where: str) -> None:
    """Refuse a node graph over ``MAX_YAML_EXPANDED`` once its aliases are expanded.

    Each collection is sized once (an alias is the node it names, so a shared
    node counts at each use); the recursion is bounded by ``MAX_YAML_DEPTH``.
    """
    _expanded_size(root, {}, set(), where)


def _expanded_size(node: yaml.Node, sizes: dict[int, int], path: set[int], where: str) -> int:
    if isinstance(node, yaml.ScalarNode):
        return 1 + len(node.value)
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in path:  # an ancestor: the alias is inside the node it names
        raise ConfigError(f"{where}: an alias refers to itself (a recursive document)")
    if len(path) >= MAX_YAML_DEPTH:
        raise ConfigError(f"{where}: nested deeper than {MAX_YAML_DEPTH} levels")
    path.add(key)
    children = (
        [part for pair in node.value for part in pair]
        if isinstance(node, yaml.MappingNode)
        else node.value
    )
    size = 1
    for child in children:
        size += _expanded_size(child, sizes, path, where)
        if size > MAX_YAML_EXPANDED:
            raise ConfigError(
                f"{where}: its aliases expand it past {MAX_YAML_EXPANDED // MIB} MiB (the limit)"
            )
    path.discard(key)
    sizes[key] = size
    return size


_RESTART_KEYS = {
    "maxRestarts": "max_restarts",
    "window": "window",
    "backoffInitial": "backoff_initial",
    "backoffMax": "backoff_max",
    "backoffFactor": "backoff_factor",
    "jitter": "jitter",
    "healthyAfter": "healthy_after",
}


def _restart_policy(section: Any) -> dict[str, Any]:
    """Our own ``restartPolicy`` mapping in model-config.yaml (camelCase keys)."""
    if section is None:
        return {}
    where = f"{_YAML} restartPolicy"
    section = _object(where, section)
    unknown = sorted(set(section) - set(_RESTART_KEYS))
    if unknown:
        known = ", ".join(sorted(_RESTART_KEYS))
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {known}")
    return {_RESTART_KEYS[key]: value for key, value in section.items()}
