"""TorchServe's command line on ours: ``torchserve --start ...`` works as ``serve --start ...``.

``add_flags`` gives ``serve`` the flags ``torchserve`` takes that ours lacked:
``--start`` (a daemon, see ``supervisor.daemon``), ``--stop``, ``--foreground``
(our default anyway), ``-v``/``--version``, ``--log-config`` (a Python logging
file; a log4j2 one is ignored with a warning) and the flags that have nothing
to act on here (``--workflow-store``, ``--plugins-path``, ``--cpp-log-config``:
accepted and logged). ``serve_argv`` reads a command line that starts with a
flag as a ``serve`` one, so ``python -m supervisor --start --models x.mar`` is
``torchserve --start --models x.mar``. ``control`` runs ``--stop`` and the
launcher half of ``--start``; ``pid_file_held`` is the foreground server's half.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import json
import logging
import logging.config
from collections.abc import Callable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from supervisor import daemon

__all__ = ["add_flags", "apply_log_config", "control", "pid_file_held", "serve_argv"]

log = logging.getLogger("supervisor")

_HELP_FLAGS = ("-h", "--help")
_IGNORED = (  # torchserve's flags with nothing to act on here: (flag, why)
    ("workflow_store", "--workflow-store", "workflows are not supported"),
    ("plugins_path", "--plugins-path", "Java plugins do not apply"),
    ("cpp_log_config", "--cpp-log-config", "there is no C++ backend"),
)
_DICT_CONFIG: dict[str, Callable[[str], Any]] = {
    ".json": json.loads,
    ".yaml": yaml.safe_load,
    ".yml": yaml.safe_load,
}
_FILE_CONFIG = (".ini", ".conf", ".cfg")


def serve_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``serve`` put first when it starts with a flag (``--start ...``)."""
    if argv and argv[0].startswith("-") and argv[0] not in _HELP_FLAGS:
        return ["serve", *argv]
    return list(argv)


def add_flags(serve: argparse.ArgumentParser) -> None:
    """Add ``torchserve``'s own flags to the ``serve`` parser."""
    group = serve.add_argument_group("torchserve's flags")
    mode = group.add_mutually_exclusive_group()
    mode.add_argument(
        "--start",
        action="store_true",
        help="run in the background; return once listening with every start-up model ready "
        "(exit 0), or print why not with the log's tail (exit 1, nothing left running)",
    )
    mode.add_argument(
        "--stop", action="store_true", help="stop the server named by the pid file, then exit"
    )
    mode.add_argument("-v", "--version", action="version", version=_version())
    group.add_argument(
        "--foreground",
        action="store_true",
        help="with --start: stay in the foreground (the default without --start)",
    )
    group.add_argument(
        "--pid-file",
        metavar="FILE",
        help=f"the pid file of --start/--stop (default {daemon.default_pid_file()}); a "
        "foreground server given it records its pid there too",
    )
    group.add_argument(
        "--daemon-log",
        metavar="FILE",
        help=f"with --start: where the server's output goes (default {daemon.DEFAULT_LOG_FILE})",
    )
    group.add_argument(
        "--start-deadline",
        type=_positive,
        metavar="S",
        default=daemon.START_DEADLINE,
        help=f"with --start: seconds to wait for the start-up models "
        f"(default {daemon.START_DEADLINE:g})",
    )
    group.add_argument(
        "--log-config",
        metavar="FILE",
        help="Python logging config: dictConfig as .json/.yaml/.yml, fileConfig as "
        ".ini/.conf/.cfg; another file (log4j2.xml) is ignored with a warning",
    )
    group.add_argument("--workflow-store", metavar="DIR", help="accepted and ignored")
    group.add_argument("--plugins-path", "--ppath", metavar="DIR", help="accepted and ignored")
    group.add_argument("--cpp-log-config", metavar="FILE", help="accepted and ignored")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _version() -> str:
    try:
        return f"trio-supervisor {metadata.version('trio-supervisor')}"
    except metadata.PackageNotFoundError:
        return "trio-supervisor (version unknown: not installed)"


def apply_log_config(args: argparse.Namespace) -> str | None:
    """Apply ``--log-config`` and warn about the ignored flags; a problem's message, if any."""
    for key, flag, why in _IGNORED:
        if getattr(args, key) is not None:
            log.warning("ignoring %s %s: %s", flag, getattr(args, key), why)
    if args.log_config is None:
        return None
    path = Path(args.log_config)
    if not path.is_file():
        return f"--log-config file not found: {path}"
    suffix = path.suffix.lower()
    try:
        if suffix in _DICT_CONFIG:
            logging.config.dictConfig(_DICT_CONFIG[suffix](path.read_text(encoding="utf-8")))
        elif suffix in _FILE_CONFIG:
            logging.config.fileConfig(path, disable_existing_loggers=False)
        else:
            log.warning(
                "ignoring --log-config %s: only Python logging files (.json, .yaml, .yml, "
                ".ini, .conf, .cfg) apply here, not log4j2; logging stays --log-level on stderr",
                path,
            )
    except (ValueError, TypeError, KeyError, AttributeError, ImportError, OSError) as exc:
        return f"--log-config {path}: {exc}"
    except (configparser.Error, yaml.YAMLError) as exc:
        return f"--log-config {path}: {type(exc).__name__}: {exc}"
    return None


def control(args: argparse.Namespace, serve_args: Sequence[str]) -> int | None:
    """Run ``--stop``, or launch the daemon for ``--start``; None: serve in the foreground.

    Call it for ``--start`` only once the configuration has been checked, so that
    a bad flag is reported here and not in the daemon's log.
    """
    pid_file = Path(args.pid_file) if args.pid_file else daemon.default_pid_file()
    if args.stop:
        return daemon.stop(pid_file)
    if not args.start or args.foreground:
        return None
    return daemon.start(
        serve_args,
        pid_file=pid_file,
        log_file=Path(args.daemon_log or daemon.DEFAULT_LOG_FILE),
        ready_file=Path(args.ready_file) if args.ready_file else None,
        deadline=args.start_deadline,
    )


@contextlib.contextmanager
def pid_file_held(args: argparse.Namespace) -> Iterator[None]:
    """A foreground server records its pid with ``--start`` or ``--pid-file``.

    Raises:
        DaemonError: another running server holds the pid file, or it cannot be written.
    """
    if not (args.start or args.pid_file):
        yield
        return
    path = Path(args.pid_file) if args.pid_file else daemon.default_pid_file()
    with daemon.holding_pid_file(path):
        yield
