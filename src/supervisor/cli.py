"""``python -m supervisor``: the command line.

``serve`` runs the server. With no models configured it serves the built-in
iris classifier. Flags override the TOML file given with ``--config``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import trio

from supervisor.config import ConfigError, ServerConfig, load_config

__all__ = ["main"]

log = logging.getLogger("supervisor")

_MODEL_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("workers", int, "workers per model at start (default 1)"),
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
)
_RESTART_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("max-restarts", int, "restarts allowed per window before the model is FAILED (default 5)"),
    ("restart-window", float, "the window for --max-restarts, seconds (default 60)"),
    ("backoff-initial", float, "delay before the second consecutive restart (default 0.5)"),
    ("backoff-max", float, "the cap on restart delays (default 30)"),
    ("healthy-after", float, "uptime that resets a worker's backoff (default 10)"),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m supervisor",
        description="trio-supervisor: a PyTorch model server with a Trio supervisor.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the server",
        description="Run the server. With no models configured it serves the built-in iris "
        "classifier. Flags win over the --config file; durations are in seconds.",
    )
    serve.add_argument(
        "--config", metavar="FILE", help="TOML config ([server], [defaults], [[models]])"
    )
    serve.add_argument(
        "--model-store", metavar="DIR", help="directory that model dirs are found in"
    )
    serve.add_argument(
        "--models",
        nargs="+",
        metavar="NAME=HANDLER[@DIR]",
        help="models to serve: a handler (module, module:Class) and an optional model dir",
    )
    serve.add_argument("--inference-address", metavar="HOST:PORT", help="default 127.0.0.1:8080")
    serve.add_argument("--management-address", metavar="HOST:PORT", help="default 127.0.0.1:8081")
    serve.add_argument("--metrics-address", metavar="HOST:PORT", help="default 127.0.0.1:8082")
    serve.add_argument(
        "--shutdown-grace", type=float, metavar="S", help="drain time on SIGTERM (default 10)"
    )
    serve.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    for flag, kind, text in _MODEL_FLAGS + _RESTART_FLAGS:
        serve.add_argument(f"--{flag}", type=kind, help=text)
    return parser


def _model_table(spec: str) -> dict[str, Any]:
    name, sep, target = spec.partition("=")
    if not sep or not name or not target:
        raise ConfigError(f"--models expects NAME=HANDLER[@DIR], got {spec!r}")
    handler, _, model_dir = target.partition("@")
    table: dict[str, Any] = {"name": name, "handler": handler}
    if model_dir:
        table["model_dir"] = model_dir
    return table


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """Build the server config from the parsed ``serve`` flags (and ``--config``)."""
    server = {
        key: getattr(args, key)
        for key in (
            "model_store",
            "inference_address",
            "management_address",
            "metrics_address",
            "shutdown_grace",
        )
        if getattr(args, key) is not None
    }
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
    models: list[Mapping[str, Any]] | None = None
    if args.models:
        models = [_model_table(s) for s in args.models]
    return load_config(args.config, server=server, defaults=defaults, models=models)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from supervisor.server import serve

    trio.run(serve, config)
    return 0
