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
from typing import BinaryIO

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
_BATCH = 512  # lines written at once, at most

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

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """The record with its message made (no copy: this handler is its only reader)."""
        if record.exc_info:
            prepared: logging.LogRecord = super().prepare(record)
            return prepared
        record.msg = record.getMessage()
        record.args = None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        """Queue ``record`` without waiting (room is kept for the listener's stop mark)."""
        if self.records.qsize() >= QUEUE_SIZE:
            self.dropped += 1
            return
        try:
            self.records.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class _LogFile:
    """One log file, appended in batches and rotated by size (used by the writer thread)."""

    def __init__(self, path: str, config: ServerConfig, formatter: logging.Formatter) -> None:
        self.path = path
        self.max_size = config.log_max_size
        self.backups = config.log_backups
        self.formatter = formatter
        self.pending: list[str] = []
        self.stream = self._open()
        self.size = self.stream.tell()

    def _open(self) -> BinaryIO:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        return open(self.path, "ab")  # open as long as the server runs

    def write(self) -> None:
        """Write the pending lines, in one go unless the file must rotate in between."""
        chunk = bytearray()
        for line in self.pending:
            data = (line + "\n").encode("utf-8", "replace")
            if self.size + len(chunk) + len(data) > self.max_size and (self.size or chunk):
                self._append(chunk)
                chunk.clear()
                self._rotate()
            chunk += data
        self.pending.clear()
        self._append(chunk)

    def _append(self, data: bytes | bytearray) -> None:
        if data:
            self.stream.write(data)
            self.stream.flush()
            self.size += len(data)

    def _rotate(self) -> None:
        """``x.log`` becomes ``x.log.1``, ``x.log.1`` becomes ``x.log.2`` ..."""
        self.stream.close()
        for n in range(self.backups - 1, 0, -1):
            if os.path.exists(f"{self.path}.{n}"):
                os.replace(f"{self.path}.{n}", f"{self.path}.{n + 1}")
        if self.backups:
            os.replace(self.path, f"{self.path}.1")
        else:
            os.truncate(self.path, 0)
        self.stream = self._open()
        self.size = 0


class _Writer(logging.Handler):
    """The writer thread's handler: formats each record into its file's batch and
    writes the batches when the queue runs empty (or a batch is large)."""

    def __init__(self, files: dict[str, _LogFile], records: queue.Queue[logging.LogRecord]) -> None:
        super().__init__()
        self.files = files
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        """Add ``record`` to its file's batch; write the batches if nothing else waits."""
        file = self.files.get(record.name)
        if file is None:
            return
        file.pending.append(file.formatter.format(record))
        if len(file.pending) >= _BATCH or self.records.empty():
            self.flush()

    def flush(self) -> None:
        """Write every pending line."""
        for file in self.files.values():
            try:
                file.write()
            except OSError as exc:  # a full disk: say so, keep serving
                file.pending.clear()
                log.error("cannot write the log file %s: %s", file.path, exc.strerror or exc)

    def close(self) -> None:
        """Write what is pending and close the files."""
        self.flush()
        for file in self.files.values():
            file.stream.close()
        super().close()


def _open_files(config: ServerConfig) -> dict[str, _LogFile]:
    """The files of the logs that are on, by logger name.

    Raises:
        ConfigError: a file cannot be opened.
    """
    files = {}
    for name, (path, text) in _log_files(config).items():
        if path is None:
            continue
        try:
            files[name] = _LogFile(path, config, _formatter(config.log_format, text))
        except OSError as exc:
            for opened in files.values():
                opened.stream.close()
            raise ConfigError(f"cannot open the log file {path}: {exc.strerror or exc}") from None
    return files


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
    files = _open_files(config)
    records: queue.Queue[logging.LogRecord] = queue.Queue(QUEUE_SIZE + 64)
    into_queue = _DroppingQueueHandler(records)
    writer = _Writer(files, records)
    listener = logging.handlers.QueueListener(records, writer)
    for name in _log_files(config):
        _route(logging.getLogger(name), into_queue if name in files else None)
    listener.start()
    try:
        yield
    finally:
        for name in _log_files(config):
            _route(logging.getLogger(name), None)
        listener.stop()
        writer.close()
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
