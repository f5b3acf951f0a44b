"""The blocking I/O both model-server runners share: files and processes.

The server runs in a session of its own, so its process group holds it and
whatever it did not move elsewhere; its workers have sessions of their own.
A runner therefore remembers every descendant it sees (while waiting, and
right before each signal) and, once the server is reaped, gives them a moment
to exit on their own (a worker whose supervisor is gone kills itself and its
group) and then kills the ones left. ``psutil`` checks a process's identity
before signalling it, so a reused pid is never hit. A worker the runner never
saw (the server was killed between two looks) is left to that same rule: it
ends itself when its supervisor's socket closes.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import psutil

from supervisor.runner.state import (
    APIS,
    KEY_FILE,
    READY_FILE,
    Endpoint,
    Failure,
    Lifecycle,
    RunnerState,
    exit_failure,
)
from supervisor.supervision.logtail import LogTail

__all__ = [
    "EOF_GRACE",
    "POLL",
    "SWEEP_GRACE",
    "Descendants",
    "RunnerBase",
    "read_scratch",
]

POLL = 0.05
"""Seconds between looks at the ready file while waiting."""
EOF_GRACE = 1.0
"""After the server exits, how long its last output may take to arrive."""
SWEEP_GRACE = 2.0
"""After the server is reaped, how long its descendants get to exit on their own."""


class Child(Protocol):
    """What both runners need of their process object (``trio.Process``, ``Popen``)."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...


P = TypeVar("P", bound=Child)


class RunnerBase(Generic[P]):
    """What the Trio and the blocking runner share: settings, state and output tail.

    Args:
        args: ``serve`` flags; the runner adds its own last.
        cwd: the server's working directory (default: ours).
        env: the server's environment (default: ours).
        stop_grace: seconds the server gets to shut down after SIGTERM.
        python: the interpreter that runs the server.
        addresses: fixed ``HOST:PORT`` listeners by API (``inference``,
            ``management``, ``metrics``); the others get a free port of 127.0.0.1.

    Raises:
        ValueError: ``addresses`` names an API that does not exist.
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        stop_grace: float = 15.0,
        python: str = sys.executable,
        addresses: Mapping[str, str] | None = None,
    ) -> None:
        if unknown := sorted(set(addresses or {}) - set(APIS)):
            raise ValueError(f"no such API: {', '.join(unknown)} (known: {', '.join(APIS)})")
        self._addresses = dict(addresses or {})
        self._args = list(args)
        self._cwd = cwd
        self._env = dict(env) if env is not None else None
        self._stop_grace = stop_grace
        self._python = python
        self._core = Lifecycle()
        self._tail = LogTail(max_lines=200)
        self._tail_lock = threading.Lock()  # the blocking runner feeds it from a thread
        self._descendants = Descendants()
        self._process: P | None = None
        self._scratch: Path | None = None
        self._init_io()

    def _init_io(self) -> None:
        """Set up what the Trio or the blocking runner needs besides (a hook)."""

    def _spawn_options(self) -> dict[str, Any]:
        """How the server is spawned: no stdin, output in one pipe, a session of its own.

        In a session (and process group) of its own, the server's signals reach
        nobody else, and one ``killpg`` reaches its workers too.
        """
        return {
            "stdin": subprocess.DEVNULL,
            "stdout": subprocess.PIPE,
            "stderr": subprocess.STDOUT,
            "start_new_session": True,
            "cwd": self._cwd,
            "env": self._env,
        }

    @property
    def state(self) -> RunnerState:
        """The current state (a server that exited makes a RUNNING runner ABORTED)."""
        self._check_exit()
        return self._core.state

    @property
    def pid(self) -> int | None:
        """The server's pid, once it was launched."""
        return None if self._process is None else self._process.pid

    @property
    def failure(self) -> Failure | None:
        """Why the runner is ABORTED, if it is."""
        return self._core.failure

    def log_tail(self) -> tuple[str, ...]:
        """The server's last output lines (stdout and stderr, merged)."""
        with self._tail_lock:
            return self._tail.lines()

    def get_endpoint(self) -> Endpoint:
        """The endpoint of the RUNNING server.

        Raises:
            RunnerStateError: the runner is not RUNNING (not yet, or not any more).
        """
        self._check_exit()
        return self._core.endpoint_nowait()

    def _feed_tail(self, chunk: bytes) -> list[str]:
        with self._tail_lock:
            return self._tail.feed(chunk)

    def _close_tail(self) -> None:
        with self._tail_lock:
            self._tail.close()  # a last unterminated line joins the tail

    def _check_exit(self) -> None:
        """A RUNNING server that exited makes the runner ABORTED."""
        if self._core.state is RunnerState.RUNNING and self._process is not None:
            returncode = self._process.poll()
            if returncode is not None:
                self._core.observe(exit_failure(returncode, self.log_tail()))


_POLL = 0.05  # seconds between looks at the processes being swept


def read_scratch(scratch: Path) -> tuple[bytes | None, bytes | None]:
    """The ready file's and the key file's bytes (None for a missing one)."""
    return _read(scratch / READY_FILE), _read(scratch / KEY_FILE)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


class Descendants:
    """Every process seen below a server, to be swept once the server is gone."""

    def __init__(self) -> None:
        self._seen: dict[int, psutil.Process] = {}

    def note(self, pid: int) -> None:
        """Remember the descendants ``pid`` has now."""
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(pid).children(recursive=True):
                self._seen.setdefault(child.pid, child)

    def pids(self) -> list[int]:
        """The pids seen so far."""
        return sorted(self._seen)

    def sweep(self, grace: float) -> list[int]:
        """Wait up to ``grace`` s for the seen processes to exit; kill the rest.

        Returns:
            The pids that had to be killed.
        """
        deadline = time.monotonic() + grace
        while (alive := self._alive()) and time.monotonic() < deadline:
            time.sleep(_POLL)
        killed = []
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGKILL)
                killed.append(proc.pid)
        self._seen.clear()
        return killed

    def _alive(self) -> list[psutil.Process]:
        """The seen processes still running (a zombie has exited: only its parent is late)."""
        alive = []
        for proc in self._seen.values():
            with contextlib.suppress(psutil.Error):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
        return alive
