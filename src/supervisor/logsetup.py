"""Where the server's logs go: the console, the access log and the model log.

``configure_console`` sets the server's own log on stderr, as text or as one
JSON object a line (``log_format = "json"``, for log shippers: time, level,
logger, message, and the model, version, worker and incarnation where a record
has them). ``open_log_files`` gives the two TorchServe logs a file each while
the server runs, both off by default:

- ``access_log``: one line per answered request (``supervisor.http.access``);
- ``model_log``: every line the workers write to stdout or stderr, each naming
  its model and worker (the same lines also feed each worker's log tail).

The files are written by one ``QueueListener`` thread: the event loop only puts
a record on a bounded queue, so a slow disk never blocks it (past 10000 records
waiting, new ones are dropped and counted). Files rotate at ``log_max_size``
bytes, keeping ``log_backups`` old ones, as TorchServe's log4j2 setup does.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import logging.handlers
import os
import queue
import sys
from collections.abc import Iterator

from supervisor.config import LOG_FORMATS, ConfigError, ServerConfig
from supervisor.http.access import ACCESS_LOGGER
from supervisor.supervision.worker import MODEL_LOGGER

__all__ = [
    "JsonFormatter",
    "configure_console",
    "log_file",
    "open_log_files",
]

log = logging.getLogger("supervisor")

QUEUE_SIZE = 10000
"""Records waiting for the writer thread at most; more are dropped (and counted)."""

_CONSOLE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_ACCESS_FORMAT = "%(asctime)s - %(message)s"  # TorchServe's access_log pattern
_MODEL_FORMAT = (
    "%(asctime)s [%(levelname)-5s] W-%(worker)s#%(incarnation)s-%(model)s_%(version)s"
    " MODEL_LOG - %(message)s"
)
_ISO8601 = "%Y-%m-%dT%H:%M:%S"  # log4j2's ISO8601 (with the ",mmm" logging adds)
_FIELDS = (
    "model",
    "version",
    "worker",
    "incarnation",
    "pid",
    "client",
    "request",
    "status",
    "latency_ms",
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, extras."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line = {
            "time": when.isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in _FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                line[field] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def _formatter(log_format: str, text: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    defaults = {"worker": "-", "incarnation": "-", "model": "-", "version": "-"}
    formatter = logging.Formatter(text, defaults=defaults)
    formatter.default_time_format = _ISO8601  # logging appends ",mmm" to this one
    return formatter


def configure_console(level: str, log_format: str = "text") -> None:
    """The server's own log: records at ``level`` and above to stderr, as text or JSON.

    Raises:
        ConfigError: an unknown level or format.
    """
    if log_format not in LOG_FORMATS:
        raise ConfigError(f"log_format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ConfigError(f"--log-level must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(_CONSOLE_FORMAT)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)


def log_file(setting: bool | str, log_dir: str, name: str) -> str | None:
    """The file a log setting names: ``true`` is ``<log_dir>/<name>``, a string a path."""
    if setting is True:
        return os.path.join(log_dir or ".", name)
    if isinstance(setting, str) and setting.strip():
        return setting
    return None


class _DroppingQueueHandler(logging.handlers.QueueHandler):
    """Puts records on a bounded queue; a full queue drops them (and counts them)."""

    def __init__(self, records: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(records)
        self.records = records
        self.dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        """Queue ``record`` without waiting (room is kept for the listener's stop mark)."""
        if self.records.qsize() >= QUEUE_SIZE:
            self.dropped += 1
            return
        try:
            self.records.put_nowait(record)
        except queue.Full:
            self.dropped += 1


def _file_handler(path: str, config: ServerConfig, text: str, logger: str) -> logging.Handler:
    """A rotating file for the records of ``logger``.

    Raises:
        ConfigError: the file cannot be opened.
    """
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=config.log_max_size, backupCount=config.log_backups, encoding="utf-8"
        )
    except OSError as exc:
        raise ConfigError(f"cannot open the log file {path}: {exc.strerror or exc}") from None
    handler.setFormatter(_formatter(config.log_format, text))
    handler.addFilter(logging.Filter(logger))
    return handler


def _log_files(config: ServerConfig) -> dict[str, tuple[str | None, str]]:
    """Logger name -> (its file, or None when off; its text format)."""
    access = log_file(config.access_log, config.log_dir, "access_log.log")
    model = log_file(config.model_log, config.log_dir, "model_log.log")
    return {ACCESS_LOGGER: (access, _ACCESS_FORMAT), MODEL_LOGGER: (model, _MODEL_FORMAT)}


@contextlib.contextmanager
def open_log_files(config: ServerConfig) -> Iterator[None]:
    """Write the access and model logs to their files (if on) until the block ends.

    A log that is off is switched off (not left to reach the console). On exit
    the writer thread writes what is queued, then the files are closed.

    Raises:
        ConfigError: a log file cannot be opened.
    """
    files = _log_files(config)
    handlers = [_file_handler(p, config, text, name) for name, (p, text) in files.items() if p]
    into_queue = _DroppingQueueHandler(queue.Queue(QUEUE_SIZE + 64))
    listener = logging.handlers.QueueListener(into_queue.queue, *handlers)
    for name, (path, _) in files.items():
        _route(logging.getLogger(name), into_queue if path else None)
    listener.start()
    try:
        yield
    finally:
        for name in files:
            _route(logging.getLogger(name), None)
        listener.stop()
        for handler in handlers:
            handler.close()
        if into_queue.dropped:
            dropped = into_queue.dropped
            log.warning("%d access or model log lines were dropped: the disk fell behind", dropped)


def _route(logger: logging.Logger, handler: logging.Handler | None) -> None:
    """Send ``logger``'s records to ``handler`` only, or nowhere (None)."""
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.propagate = False
    if handler is None:
        logger.setLevel(logging.CRITICAL + 1)
        return
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
