"""Starting and killing worker processes (the ``Launcher`` seam).

A worker runs ``python -m handlers --fd N`` in a session of its own, so its
process group holds any grandchildren too and one ``killpg`` reaches them all.
The protocol travels over a socketpair passed with ``pass_fds``; stdout and
stderr go, merged, to a pipe that the supervisor reads as the worker's log.

``Launcher`` is the seam for deterministic tests: anything that returns an
object with the ``WorkerProcess`` shape can stand in for a real process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Protocol

import trio

from supervisor.supervision.exits import signal_group

__all__ = ["Launcher", "ProcessLauncher", "RealProcess", "WorkerProcess"]


class WorkerProcess(Protocol):
    """What the supervisor needs from a running worker."""

    pid: int
    stream: trio.abc.Stream
    logs: trio.abc.ReceiveStream | None

    async def wait(self) -> int:
        """Wait for the process to exit; its return code (negative: killed by signal)."""

    def poll(self) -> int | None:
        """The return code if the process has exited, else None."""

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the worker's whole process group (no error if gone)."""


class Launcher(Protocol):
    """Starts worker processes."""

    async def launch(self, env: dict[str, str]) -> WorkerProcess:
        """Start one worker process with ``env`` added to its environment."""


class RealProcess:
    """A worker process started by ``ProcessLauncher``.

    Args:
        process: the trio process handle.
        stream: the supervisor's end of the protocol socketpair.
    """

    def __init__(self, process: trio.Process, stream: trio.SocketStream) -> None:
        self.process = process
        self.pid = process.pid
        self.stream: trio.abc.Stream = stream
        self.logs: trio.abc.ReceiveStream | None = process.stdout

    async def wait(self) -> int:
        """Wait for the leader to exit and return its return code."""
        return await self.process.wait()

    def poll(self) -> int | None:
        """The return code if the leader has exited, else None."""
        return self.process.poll()

    def signal_group(self, signum: int) -> None:
        """Signal the group; the pgid stays reserved while any member lives."""
        signal_group(self.pid, signum)


class ProcessLauncher:
    """Starts real workers: ``python -m handlers --fd N`` in a new session.

    Args:
        python: the interpreter to run workers with.
    """

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python

    async def launch(self, env: dict[str, str]) -> RealProcess:
        """Spawn the worker and return its handle."""
        parent, child = socket.socketpair()
        try:
            process = await trio.lowlevel.open_process(
                [self.python, "-m", "handlers", "--fd", str(child.fileno())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(child.fileno(),),
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()  # the child holds its own copy; ours would hide its EOF
        return RealProcess(process, trio.SocketStream(trio.socket.from_stdlib_socket(parent)))
