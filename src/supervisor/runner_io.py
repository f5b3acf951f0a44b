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
import os
import signal
import time
from pathlib import Path

import psutil

from supervisor.runner_state import KEY_FILE, READY_FILE

__all__ = ["Descendants", "read_scratch", "signal_group"]

_POLL = 0.05  # seconds between looks at the processes being swept


def read_scratch(scratch: Path) -> tuple[bytes | None, bytes | None]:
    """The ready file's and the key file's bytes (None for a missing one)."""
    return _read(scratch / READY_FILE), _read(scratch / KEY_FILE)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def signal_group(pid: int, signum: int) -> None:
    """Send ``signum`` to the process group led by ``pid`` (no error if it is gone)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


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
