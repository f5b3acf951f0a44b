"""``serve --start`` and ``serve --stop``: the server as a daemon, as ``torchserve`` runs it.

``start`` launches ``serve --start --foreground`` in a session of its own, its
output appended to a log file, and waits until the server listens and every
start-up model is ready (its ready file, judged by the runner's ``settle``). It
then returns 0 and the server runs on. A server that exits, a model that fails to
load or a deadline that passes is reported with the log's tail, the server is
stopped, and it returns 1: a failed start leaves nothing running. The server
itself records its pid in the pid file (``holding_pid_file``; TorchServe's
``$TMPDIR/.model_server.pid`` by default) and removes it when it exits. ``stop``
reads the pid file, sends SIGTERM (the server drains and stops its workers),
waits, kills what is left and sweeps every descendant it saw. A pid file whose
process is gone, or began after the file was written (a reused pid), is stale:
it is removed and no server counts as running. This module blocks (no trio): it
runs before and instead of the server's event loop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil

from supervisor.atomicfile import write_replacing
from supervisor.runner.base import Descendants
from supervisor.runner.state import Endpoint, Failure, FailureKind, settle
from supervisor.supervision.exits import signal_group

__all__ = [
    "DEFAULT_LOG_FILE",
    "LOG_TAIL_LINES",
    "PID_FILE_NAME",
    "START_DEADLINE",
    "STOP_TIMEOUT",
    "DaemonError",
    "default_pid_file",
    "holding_pid_file",
    "running_pid",
    "start",
    "stop",
]

PID_FILE_NAME = ".model_server.pid"
"""The pid file's name in the temporary directory (TorchServe's)."""
START_DEADLINE = 300.0
"""Seconds ``start`` waits for the server and its start-up models by default."""
STOP_TIMEOUT = 60.0
"""Seconds a stopping server gets after SIGTERM before it is killed (TorchServe's wait)."""
DEFAULT_LOG_FILE = Path("logs", "ts_log.log")
"""Where a daemon's output goes by default (TorchServe's main log, relative to the working dir)."""
LOG_TAIL_LINES = 30
"""How many of the log's last lines a failed start prints."""

_POLL = 0.05  # seconds between looks at the daemon while waiting
_CLOCK_SLACK = 1.0  # a process start time and a file time come from different clocks
_SWEEP_GRACE = 2.0  # seconds the server's descendants get to exit once it is gone
_TAIL_BYTES = 64 * 1024  # the most of the log read for its tail


class DaemonError(Exception):
    """A pid file that cannot be used: another server holds it, or it cannot be written."""


def default_pid_file() -> Path:
    """TorchServe's pid file: ``.model_server.pid`` in the temporary directory."""
    return Path(tempfile.gettempdir()) / PID_FILE_NAME


def running_pid(pid_file: Path) -> int | None:
    """The pid of the server that ``pid_file`` names, if it still runs.

    The file must belong to this user (a shared ``/tmp`` is writable by all), and
    its process must be a trio-supervisor started before the file was written (a
    pid is reused once its process is gone). A stale pid file is removed.

    Raises:
        DaemonError: the file exists but cannot be read.
    """
    try:
        status = pid_file.lstat()
        text = pid_file.read_text(encoding="ascii") if status.st_uid == os.getuid() else ""
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DaemonError(f"cannot read the pid file {pid_file}: {exc}") from None
    pid = _parse_pid(text)
    if pid is not None and _is_server_since(pid, status.st_mtime):
        return pid
    with contextlib.suppress(OSError):
        pid_file.unlink()
    return None


def _parse_pid(text: str) -> int | None:
    first = text.strip().split("\n", 1)[0].strip()
    return int(first) if first.isascii() and first.isdigit() and int(first) > 0 else None


def _is_server_since(pid: int, written: float) -> bool:
    """Whether ``pid`` is a live trio-supervisor that began before ``written``."""
    try:
        process = psutil.Process(pid)
        began, cmdline = process.create_time(), process.cmdline()
        alive = process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
    ours = any(arg == "supervisor" or arg.endswith("trio-supervisor") for arg in cmdline)
    return alive and ours and began <= written + _CLOCK_SLACK


@contextlib.contextmanager
def holding_pid_file(pid_file: Path) -> Iterator[None]:
    """Record this process's pid in ``pid_file`` while the block runs.

    The file is replaced whole (readers never see half of it) and removed at the
    end if it still holds this pid.

    Raises:
        DaemonError: another running server holds the file, or it cannot be written.
    """
    other = running_pid(pid_file)
    if other is not None and other != os.getpid():
        raise DaemonError(
            f"a model server is already running (pid {other}, recorded in {pid_file}); "
            "stop it with --stop"
        )
    try:
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        write_replacing(pid_file, f"{os.getpid()}\n".encode(), prefix=".pid.", mode=0o644)
    except OSError as exc:
        raise DaemonError(f"cannot write the pid file {pid_file}: {exc}") from None
    try:
        yield
    finally:
        if _holds(pid_file, os.getpid()):
            with contextlib.suppress(OSError):
                pid_file.unlink()


def _holds(pid_file: Path, pid: int) -> bool:
    """Whether ``pid_file`` (still) holds ``pid``."""
    try:
        return _parse_pid(pid_file.read_text(encoding="ascii")) == pid
    except (OSError, ValueError):
        return False


def start(
    serve_args: Sequence[str],
    *,
    pid_file: Path,
    log_file: Path,
    ready_file: Path | None = None,
    deadline: float = START_DEADLINE,
) -> int:
    """Start the server in the background and wait until it is ready.

    The outcome goes to stdout (started, with the addresses) or stderr (why not,
    with the log's tail).

    Args:
        serve_args: the ``serve`` flags, ``--start`` among them; the daemon gets
            them with ``--foreground``, ``--pid-file`` and ``--ready-file`` added.
        pid_file: where the server records its pid.
        log_file: where its output is appended (the directory is created).
        ready_file: the ready file to use (default: one in a temporary directory).
        deadline: seconds to wait for the server and its start-up models.

    Returns:
        0: the server runs and is ready; 1: it did not start, and nothing runs.
    """
    try:
        other = running_pid(pid_file)
    except DaemonError as exc:
        return _failed(str(exc))
    if other is not None:
        return _failed(f"a model server is already running (pid {other}); stop it with --stop")
    with tempfile.TemporaryDirectory(prefix="trio-supervisor-start-") as scratch:
        ready = (ready_file or Path(scratch) / "ready.json").resolve()
        command = _daemon_command(serve_args, pid_file.resolve(), ready)
        try:
            process, offset = _launch(command, log_file)
        except OSError as exc:
            return _failed(f"cannot start the server (its log: {log_file}): {exc}")
        outcome = _wait_ready(process, ready, deadline)
    if isinstance(outcome, Endpoint):
        print(f"model server started (pid {outcome.pid}); its log is {log_file}")
        print(
            f"listening: inference {outcome.inference}, management {outcome.management}, "
            f"metrics {outcome.metrics}"
        )
        return 0
    _end(process.pid, STOP_TIMEOUT)
    tail = "".join(f"\n  {line}" for line in _log_tail(log_file, offset))
    return _failed(
        f"the server did not start: {outcome.reason}\nthe last lines of {log_file}:{tail}"
    )


def _failed(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _daemon_command(serve_args: Sequence[str], pid_file: Path, ready: Path) -> list[str]:
    own = ["--foreground", f"--pid-file={pid_file}", f"--ready-file={ready}"]
    return [sys.executable, "-m", "supervisor", "serve", *serve_args, *own]


def _launch(command: list[str], log_file: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Spawn the daemon (its own session, no stdin, output to the log); the log's size before."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        offset = log.tell()
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return process, offset


def _wait_ready(
    process: subprocess.Popen[bytes], ready: Path, seconds: float
) -> Endpoint | Failure:
    """Poll the daemon and its ready file until it is ready, fails, or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            found = settle(
                returncode=process.poll(), ready=ready.read_bytes(), keys=None, log_tail=()
            )
        except FileNotFoundError:
            found = settle(returncode=process.poll(), ready=None, keys=None, log_tail=())
        if found is not None:
            return found
        if time.monotonic() >= deadline:
            return Failure(FailureKind.DEADLINE, f"it was not ready within {seconds:g} s")
        time.sleep(_POLL)


def _log_tail(log_file: Path, offset: int) -> list[str]:
    """The last lines written to the log since ``offset``."""
    try:
        with open(log_file, "rb") as log:
            log.seek(max(offset, log.seek(0, os.SEEK_END) - _TAIL_BYTES))
            text = log.read().decode(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-LOG_TAIL_LINES:]


def stop(pid_file: Path, *, timeout: float = STOP_TIMEOUT) -> int:
    """Stop the server that ``pid_file`` names, and every process below it.

    Returns:
        0 once it is gone, and when none was running (as ``torchserve --stop``);
        1 when the pid file cannot be read.
    """
    try:
        pid = running_pid(pid_file)
    except DaemonError as exc:
        return _failed(str(exc))
    if pid is None:
        print(f"no model server is running (no live pid in {pid_file})")
        return 0
    killed = _end(pid, timeout)
    if _holds(pid_file, pid):
        with contextlib.suppress(OSError):
            pid_file.unlink()
    how = f" (killed: it did not stop within {timeout:g} s)" if killed else ""
    print(f"model server stopped (pid {pid}){how}")
    return 0


def _end(pid: int, timeout: float) -> bool:
    """SIGTERM, ``timeout`` s, SIGKILL to its group; then sweep its descendants.

    Returns:
        Whether it had to be killed.
    """
    seen = Descendants()
    seen.note(pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    killed = not _wait_gone(pid, timeout)
    if killed:
        seen.note(pid)
        signal_group(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, timeout)
    seen.sweep(_SWEEP_GRACE)
    return killed


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` has exited (a zombie has); whether it did within ``timeout``."""
    ends = time.monotonic() + timeout
    while True:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our child (a failed start)
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= ends:
            return False
        time.sleep(_POLL)
