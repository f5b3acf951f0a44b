"""``python -m supervisor``: the command line.

``serve`` runs the server. With no models configured it serves the built-in
iris classifier. Settings come in layers, later ones winning: a TorchServe
``config.properties`` (``--ts-config``, else ``$TS_CONFIG_FILE``), then our TOML
file (``--config``), then TorchServe's ``TS_*`` environment variables (only
when the properties file sets ``enable_envvars_config=true``), then our
``SUPERVISOR_<KEY>`` and ``SUPERVISOR_DEFAULTS_<KEY>`` variables (always read;
``supervisor.config.env_settings`` and ``env_defaults``), then flags.
Server and model-default keys win one by one (``restart`` keys too); a list of
models replaces the lists below it (``--models`` over ``TS_LOAD_MODELS`` over
``[[models]]`` over ``load_models``). ``torchserve``'s own flags (``--start``,
``--stop`` ...) are in ``supervisor.tscommand``; no parser takes abbreviations.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import trio

from supervisor import daemon, tscommand
from supervisor.config import (
    LOG_FORMATS,
    READINESS_MODES,
    ConfigError,
    ServerConfig,
    env_settings,
    load_config,
    read_toml,
)
from supervisor.config import env_defaults as own_env_defaults
from supervisor.logsetup import configure_console
from supervisor.models import archiver, tsconfig
from supervisor.models.archive import ARCHIVE_SUFFIXES
from supervisor.runner.command import add_validate_parser, run_validate

__all__ = ["PROG", "main"]

PROG = "python -m supervisor"
"""The program name in usage lines when no other is given (``trio-supervisor`` when run so)."""

log = logging.getLogger("supervisor")

_MODEL_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("workers", int, "workers per model at start (default 1; POST /models: 0)"),
    ("max-workers", int, "the most workers scaling may reach"),
    ("batch-size", int, "the most requests per batch (default 1)"),
    ("max-batch-delay", float, "under load, seconds a batch may wait to fill (default 0.01)"),
    ("job-queue-size", int, "requests that may wait per model before 503 (default 100)"),
    ("response-timeout", float, "seconds a worker may take per batch (default 120)"),
    ("startup-timeout", float, "seconds a worker may take to load (default 120)"),
    ("heartbeat-interval", float, "seconds between heartbeats (default 1)"),
    ("heartbeat-timeout", float, "a worker silent this long is replaced (default 10)"),
    (
        "stop-grace",
        float,
        "seconds a stopping worker gets after SHUTDOWN and again after SIGTERM (default 2)",
    ),
    ("memory-limit-mb", int, "a worker's memory limit in MiB, its children included (0: none)"),
)
_RESTART_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("max-restarts", int, "restarts allowed per window before the model is FAILED (default 5)"),
    ("restart-window", float, "the window for --max-restarts, seconds (default 60)"),
    ("backoff-initial", float, "delay before the second consecutive restart (default 0.5)"),
    ("backoff-max", float, "the cap on restart delays (default 30)"),
    ("healthy-after", float, "uptime that resets a worker's backoff (default 10)"),
)


_SERVER_FLAGS = (
    "model_store",
    "inference_address",
    "management_address",
    "metrics_address",
    "grpc_inference_address",
    "grpc_management_address",
    "shutdown_grace",
    "pre_stop_delay",
    "readiness",
    "keys_from",
    "key_file",
    "access_log",
    "model_log",
    "log_dir",
    "log_format",
)
_SWITCHES = ("disable_token_authorization", "enable_model_api")
_MODELS_HELP = (
    "models to serve: NAME=HANDLER[@DIR] (a handler, module or module:Class, and an "
    "optional model dir), or TorchServe's NAME=ARCHIVE, ARCHIVE and all (an archive "
    "(.mar, .tar.gz, .tgz, .zip), a directory in the model store or a URL; all: every "
    "one in the store)"
)


def _parser(prog: str = PROG) -> argparse.ArgumentParser:
    # allow_abbrev=False everywhere: an abbreviation would read --stop as --stop-grace.
    parser = argparse.ArgumentParser(
        prog=prog,
        description="trio-supervisor: a PyTorch model server with a Trio supervisor. "
        f"`{prog} --start ...` (no command) is `{prog} serve --start ...`, as torchserve.",
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        allow_abbrev=False,
        help="run the server",
        description="Run the server. With no models configured it serves the built-in iris "
        "classifier. Settings are applied in this order, later ones winning: --ts-config "
        "(TorchServe config.properties), then --config (TOML), then flags; a model list "
        "replaces the ones before it. TorchServe's TS_* environment variables come between "
        "the files and the flags when config.properties sets enable_envvars_config=true. "
        "Durations are in seconds.",
    )
    _add_sources(serve)
    _add_server_flags(serve)
    for flag, kind, text in _MODEL_FLAGS + _RESTART_FLAGS:
        serve.add_argument(f"--{flag}", type=kind, help=text)
    tscommand.add_flags(serve)
    _add_archive(commands)
    add_validate_parser(commands)
    return parser


def _add_sources(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--ts-config",
        metavar="FILE",
        help="TorchServe config.properties, applied first: --config and flags win over it",
    )
    serve.add_argument(
        "--config",
        metavar="FILE",
        help="TOML config ([server], [defaults], [[models]]); wins over --ts-config "
        "(default: $SUPERVISOR_CONFIG_FILE)",
    )
    serve.add_argument("--model-store", metavar="DIR", help="directory that models are found in")
    serve.add_argument("--models", nargs="+", metavar="SPEC", help=_MODELS_HELP)


def _add_server_flags(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--inference-address", metavar="HOST:PORT", help="default 127.0.0.1:8080")
    serve.add_argument("--management-address", metavar="HOST:PORT", help="default 127.0.0.1:8081")
    serve.add_argument("--metrics-address", metavar="HOST:PORT", help="default 127.0.0.1:8082")
    serve.add_argument(
        "--shutdown-grace", type=float, metavar="S", help="drain time on SIGTERM (default 10)"
    )
    serve.add_argument(
        "--disable-token-auth",
        "--dt",
        dest="disable_token_authorization",
        action="store_true",
        help="serve without bearer tokens (TorchServe's flag; not recommended)",
    )
    serve.add_argument(
        "--enable-model-api",
        dest="enable_model_api",
        action="store_true",
        help="allow registering and unregistering models over HTTP",
    )
    _add_snapshot_flags(serve)
    _add_grpc_flags(serve)
    _add_drain_flags(serve)
    serve.add_argument(
        "--log-level",
        default=os.environ.get("SUPERVISOR_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING, ERROR (default: $SUPERVISOR_LOG_LEVEL, else INFO)",
    )
    _add_log_flags(serve)
    serve.add_argument(
        "--key-file", metavar="FILE", help="where the API keys are written (default key_file.json)"
    )
    serve.add_argument(
        "--ready-file",
        metavar="FILE",
        help="once listening and every start-up model is ready or failed, write the addresses "
        "and the models' states here as JSON (removed at exit)",
    )


def _add_grpc_flags(serve: argparse.ArgumentParser) -> None:
    """TorchServe's gRPC APIs and OIP v2 over gRPC (docs/protocols.md); on unless --no-grpc."""
    serve.add_argument(
        "--grpc-inference-address",
        metavar="HOST:PORT",
        help="gRPC inference (default 127.0.0.1:7070)",
    )
    serve.add_argument(
        "--grpc-management-address",
        metavar="HOST:PORT",
        help="gRPC management (default 127.0.0.1:7071)",
    )
    serve.add_argument("--no-grpc", action="store_true", help="serve no gRPC port")


def _add_drain_flags(serve: argparse.ArgumentParser) -> None:
    """Probes, drain and provided keys (docs/deployment.md, "Probes and drain")."""
    serve.add_argument(
        "--pre-stop-delay",
        type=float,
        metavar="S",
        help="on SIGTERM, seconds of not-ready while still serving, before the drain (default 5)",
    )
    serve.add_argument(
        "--readiness",
        choices=READINESS_MODES,
        help="/v2/health/ready is 200 when all start-up models are ready (default) or any",
    )
    serve.add_argument(
        "--keys-from",
        metavar="FILE",
        help="use the API keys in FILE (a key file, e.g. a mounted Secret) as they are; "
        "FILE is never written or removed",
    )


def _add_log_flags(serve: argparse.ArgumentParser) -> None:
    """The log files and the log format (docs/configuration.md, "Logs")."""
    serve.add_argument(
        "--access-log",
        nargs="?",
        const=True,
        metavar="FILE",
        help="one line per request, in TorchServe's format, to FILE (default: "
        "LOG_DIR/access_log.log); off by default",
    )
    serve.add_argument(
        "--model-log",
        nargs="?",
        const=True,
        metavar="FILE",
        help="the workers' output, each line naming its model and worker, to FILE "
        "(default: LOG_DIR/model_log.log); off by default",
    )
    serve.add_argument("--log-dir", metavar="DIR", help="where log files go (default: logs)")
    serve.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="text (default), or json: one object a line, for log shippers",
    )


def _add_archive(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``archive``: torch-model-archiver's flags (see supervisor.models.archiver)."""
    archive = commands.add_parser(
        "archive",
        allow_abbrev=False,
        help="build a model archive (.mar) as torch-model-archiver does",
        description="Build a model archive with torch-model-archiver's flags and layout. "
        "A handler that is not a file here (a module name) is recorded as given.",
    )
    archive.add_argument("--model-name", required=True, help="the model's name")
    archive.add_argument("-v", "--version", required=True, help="the model's version")
    archive.add_argument(
        "--handler", required=True, help="a handler file, a module or a TorchServe default"
    )
    archive.add_argument("--serialized-file", metavar="FILE", help="the weights")
    archive.add_argument("--model-file", metavar="FILE", help="the file defining the model")
    archive.add_argument(
        "--extra-files", metavar="A,B,DIR", help="comma-separated files, dirs (merged) or globs"
    )
    archive.add_argument(
        "--runtime", choices=archiver.RUNTIMES, default="python", help="default: python"
    )
    archive.add_argument(
        "--export-path", metavar="DIR", default=".", help="where to write it (default: here)"
    )
    archive.add_argument(
        "--archive-format",
        choices=tuple(archiver.FORMATS),
        default="default",
        help="default: NAME.mar (deflated zip); zip-store: NAME.mar, not compressed; "
        "tgz: NAME.tar.gz; no-archive: a NAME/ directory",
    )
    archive.add_argument("-f", "--force", action="store_true", help="overwrite an existing one")
    archive.add_argument("-r", "--requirements-file", metavar="FILE", help="requirements.txt")
    archive.add_argument("-c", "--config-file", metavar="FILE", help="model-config.yaml")


def _archive(args: argparse.Namespace) -> int:
    extra = tuple(p.strip() for p in (args.extra_files or "").split(",") if p.strip())
    spec = archiver.ArchiveSpec(
        model_name=args.model_name,
        version=args.version,
        handler=args.handler,
        serialized_file=args.serialized_file,
        model_file=args.model_file,
        extra_files=extra,
        runtime=args.runtime,
        export_path=args.export_path,
        archive_format=args.archive_format,
        force=args.force,
        requirements_file=args.requirements_file,
        config_file=args.config_file,
    )
    try:
        path = archiver.build(spec)
    except archiver.ArchiverError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"archived {spec.model_name} {spec.version} to {path}")
    return 0


_ENV_SOURCE = "environment (TS_* variables)"


def config_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> ServerConfig:
    """Build the server config from the parsed ``serve`` flags, their files and ``environ``.

    Layers, later ones winning: ``--ts-config`` (or ``$TS_CONFIG_FILE``),
    ``--config``, ``TS_*`` variables, ``SUPERVISOR_*`` variables, flags (see the
    module docstring).
    ``environ`` defaults to ``os.environ``.
    """
    environ = os.environ if environ is None else environ
    path = args.ts_config or environ.get("TS_CONFIG_FILE") or None
    source = path or "config.properties"
    props = _ts_properties(path, environ)
    env = _env_layer(props, environ)
    file = read_toml(args.config or environ.get("SUPERVISOR_CONFIG_FILE") or None)
    file["server"].setdefault("config_snapshots", True)  # the CLI's default; --ncs wins
    file["server"].setdefault("grpc", True)  # the CLI's default; --no-grpc wins
    flags = _server_flags(args)
    own_env = env_settings(environ)
    store = _model_store(flags, {**file["server"], **env, **own_env}, props)
    specs = _specs(args.models)
    entries = _store_entries(store) if _wants_all({**props, **env}, specs) else []
    ts_server, ts_defaults, ts_models = tsconfig.server_settings(
        props, store_entries=entries, source=source
    )
    env_server, env_defaults, env_models = tsconfig.server_settings(
        {**_models_json(props), **env}, store_entries=entries, source=_ENV_SOURCE
    )
    flag_models = _flag_models(specs, store, props, entries, source)
    env_list = env_models if "load_models" in env else None
    layers = (flag_models, env_list, file["models"], ts_models)
    models: list[Any] = next(m for m in layers if m is not None)
    return load_config(
        server={**ts_server, **file["server"], **env_server, **own_env, **flags},
        defaults=_layered(
            ts_defaults,
            file["defaults"],
            env_defaults,
            own_env_defaults(environ),
            _default_flags(args),
        ),
        models=models,
    )


def _env_layer(props: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """The keys ``TS_*`` variables set (see ``tsconfig.env_properties``); logs the idle ones."""
    env, ignored = tsconfig.env_properties(props, environ)
    if ignored:
        log.info("ignoring TorchServe variables without effect here: %s", ", ".join(ignored))
    return env


def _models_json(props: Mapping[str, str]) -> dict[str, str]:
    """The ``models`` JSON, which tunes the models ``TS_LOAD_MODELS`` loads too."""
    return {"models": props["models"]} if "models" in props else {}


def _ts_properties(path: str | None, environ: Mapping[str, str]) -> dict[str, str]:
    """The ``--ts-config`` keys, ``$$ENV$$`` resolved; logs the ones without effect."""
    if path is None:
        return {}
    props = tsconfig.substitute_env(tsconfig.read_properties(path), environ, source=path)
    unsupported, unknown = tsconfig.ignored_keys(props)
    if unsupported:
        log.info(
            "%s: ignoring TorchServe settings without effect here: %s", path, ", ".join(unsupported)
        )
    if unknown:
        log.warning("%s: ignoring unknown keys (as TorchServe does): %s", path, ", ".join(unknown))
    return props


def _server_flags(args: argparse.Namespace) -> dict[str, Any]:
    server = {key: getattr(args, key) for key in _SERVER_FLAGS if getattr(args, key) is not None}
    server.update({key: True for key in _SWITCHES if getattr(args, key)})
    if args.no_config_snapshots:
        server["config_snapshots"] = False
    if args.no_grpc:
        server["grpc"] = False
    if args.snapshot_dir is not None:
        server["snapshot_dir"] = args.snapshot_dir
    return server


def _default_flags(args: argparse.Namespace) -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    for flag, _, _ in _MODEL_FLAGS:
        key = flag.replace("-", "_")
        if getattr(args, key) is not None:
            defaults[key] = getattr(args, key)
    restart = {
        ("window" if flag == "restart-window" else flag.replace("-", "_")): getattr(
            args, flag.replace("-", "_")
        )
        for flag, _, _ in _RESTART_FLAGS
        if getattr(args, flag.replace("-", "_")) is not None
    }
    if restart:
        defaults["restart"] = restart
    return defaults


def _layered(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Model defaults, later layers winning key by key (``restart`` keys too)."""
    merged: dict[str, Any] = {}
    restart: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
        if "restart" in layer:
            if not isinstance(layer["restart"], Mapping):
                raise ConfigError(f"defaults restart: expected a table, got {layer['restart']!r}")
            restart.update(layer["restart"])
    if restart:
        merged["restart"] = restart
    return merged


def _model_store(
    flags: Mapping[str, Any], file_server: Mapping[str, Any], props: Mapping[str, str]
) -> str:
    """The model store the layers settle on (needed early, to find models in it)."""
    store = flags.get("model_store") or file_server.get("model_store") or props.get("model_store")
    return str(store or "").strip()


def _specs(models: Sequence[str] | None) -> list[str]:
    """``--models`` specs; TorchServe also takes comma-separated ones."""
    return [spec.strip() for arg in models or () for spec in arg.split(",") if spec.strip()]


def _wants_all(props: Mapping[str, str], specs: Sequence[str]) -> bool:
    values = [props.get("load_models", ""), *specs]
    return any(value.strip().lower() == tsconfig.ALL_MODELS for value in values)


def _store_entries(store: str) -> list[str]:
    """The names in the model store, directories ending in ``/`` (to load all)."""
    if not store:
        raise ConfigError("loading all models needs a model store (--model-store or model_store)")
    try:
        with os.scandir(store) as found:
            return [entry.name + "/" if entry.is_dir() else entry.name for entry in found]
    except OSError as exc:
        raise ConfigError(f"cannot list the model store {store}: {exc}") from None


def _flag_models(
    specs: Sequence[str],
    store: str,
    props: Mapping[str, str],
    entries: Sequence[str],
    source: str,
) -> list[dict[str, Any]] | None:
    if not specs:
        return None
    tables: list[dict[str, Any]] = []
    for spec in specs:
        if spec.lower() == tsconfig.ALL_MODELS:
            store_tables = tsconfig.store_tables(entries)
            tables += tsconfig.with_model_params(store_tables, props, source=source)
        else:
            tables.append(_model_table(spec, store, props, source))
    return tables


def _model_table(spec: str, store: str, props: Mapping[str, str], source: str) -> dict[str, Any]:
    """One spec: ``NAME=HANDLER[@DIR]``, or TorchServe's ``NAME=ARCHIVE`` / ``ARCHIVE``."""
    name, sep, target = spec.partition("=")
    if not sep or "://" in name:  # a bare URL may have '=' in its query
        name, target = "", spec
    if _is_url(target, store):
        table = {"name": name, "url": target} if name else {"url": target}
        return tsconfig.with_model_params([table], props, source=source)[0]
    if not name or not target:
        raise ConfigError(
            f"--models expects NAME=HANDLER[@DIR], NAME=ARCHIVE, ARCHIVE or all, got {spec!r}"
        )
    handler, _, model_dir = target.partition("@")
    table = {"name": name, "handler": handler}
    if model_dir:
        table["model_dir"] = model_dir
    return table


def _is_url(target: str, store: str) -> bool:
    """Whether a spec's target names an archive, a URL or a directory in the store."""
    if "://" in target or target.endswith(ARCHIVE_SUFFIXES):
        return True
    return bool(store) and "/" not in target and os.path.isdir(os.path.join(store, target))


def _add_snapshot_flags(serve: argparse.ArgumentParser) -> None:
    """Config snapshots (docs/configuration.md, "Config snapshots")."""
    serve.add_argument(
        "--no-config-snapshots",
        "--ncs",
        dest="no_config_snapshots",
        action="store_true",
        help="write no config snapshots and restore none (TorchServe's flag)",
    )
    serve.add_argument(
        "--snapshot-dir",
        metavar="DIR",
        help="where config snapshots are written and restored from (default: logs/config)",
    )


def _restores(args: argparse.Namespace) -> bool:
    """Restore the newest snapshot, unless the TorchServe config has a model_snapshot."""
    path = args.ts_config or os.environ.get("TS_CONFIG_FILE")
    return not (path and "model_snapshot" in tsconfig.read_properties(path))


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def main(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    """Run the command line; returns the exit status.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``); ``--start ...`` with no
            command is ``serve --start ...``.
        prog: the program name that usage and help lines show.
    """
    argv = tscommand.serve_argv(sys.argv[1:] if argv is None else argv)
    args = _parser(prog).parse_args(argv)
    if args.command == "archive":
        return _archive(args)
    if args.command == "validate":
        return run_validate(args)
    if args.stop:
        return tscommand.control(args, argv[1:]) or 0
    try:
        log_format = args.log_format or "text"
        configure_console(args.log_level, log_format)
        config = config_from_args(args)
        if config.log_format != log_format:  # set in a config file
            configure_console(args.log_level, config.log_format)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if problem := tscommand.apply_log_config(args):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if (launched := tscommand.control(args, argv[1:])) is not None:
        return launched
    from supervisor.http.listeners import ListenError
    from supervisor.server import serve

    failures: list[BaseException] = []
    try:
        with tscommand.pid_file_held(args):
            restore = _restores(args)
            trio.run(partial(serve, config, ready_file=args.ready_file, restore_snapshot=restore))
    except* (ListenError, daemon.DaemonError) as group:
        failures.extend(_leaves(group))
    except* ConfigError as group:  # a TLS certificate or key refused at start
        failures.extend(_leaves(group))
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    if any(isinstance(f, ConfigError) for f in failures):
        return 2
    return 1 if failures else 0
