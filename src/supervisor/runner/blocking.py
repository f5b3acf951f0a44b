"""The model-server runner for code without Trio: CI scripts, pipelines, tests.

The same states and decisions as ``supervisor.runner.trio_runner`` (both drive
``supervisor.runner.state``), over ``subprocess.Popen`` and one reader thread
that keeps the server's last output lines::

    with SyncModelServerRunner(["--models", "echo.mar", "--model-store", "store"]) as runner:
        runner.start()
        endpoint = runner.wait_until_running(time.monotonic() + 60)
        ...

Leaving the block calls ``stop()``. Use a runner from one thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from supervisor.runner.base import (
    EOF_GRACE,
    POLL,
    SWEEP_GRACE,
    RunnerBase,
    read_scratch,
)
from supervisor.runner.state import (
    Endpoint,
    Failure,
    FailureKind,
    RunnerState,
    serve_command,
    settle,
)
from supervisor.supervision.exits import signal_group

__all__ = ["SyncModelServerRunner"]

log = logging.getLogger("supervisor.runner")


class SyncModelServerRunner(RunnerBase["subprocess.Popen[bytes]"]):
    """One ``python -m supervisor serve`` child, from start to stop (blocking API).

    Args:
        args: ``serve`` flags; the runner adds its own last (``addresses`` or
            free ports on 127.0.0.1, the key file and the ready file in a
            directory of its own).
        cwd: the server's working directory (default: ours).
        env: the server's environment (default: ours).
        stop_grace: seconds the server gets to shut down after SIGTERM.
        python: the interpreter that runs the server.
        addresses: fixed ``HOST:PORT`` listeners by API (``inference``,
            ``management``, ``metrics``).
    """

    def _init_io(self) -> None:
        self._reader: threading.Thread | None = None

    def __enter__(self) -> SyncModelServerRunner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Launch the server and return without waiting for it (INITIAL -> SCHEDULED).

        Raises:
            RunnerStateError: called twice.
        """
        self._core.start()
        self._scratch = Path(tempfile.mkdtemp(prefix="trio-supervisor-runner-"))
        command = serve_command(self._args, self._scratch, self._python, self._addresses)
        try:
            self._process = subprocess.Popen(command, **self._spawn_options())
        except OSError as exc:
            self._core.observe(Failure(FailureKind.SPAWN, f"cannot launch {command[0]}: {exc}"))
            return
        assert self._process.stdout is not None
        self._reader = threading.Thread(
            target=self._pump, args=(self._process.stdout,), name="server-output", daemon=True
        )
        self._reader.start()

    def wait_until_running(self, deadline: float) -> Endpoint:
        """Wait until the server listens and every start-up model is ready.

        Args:
            deadline: when to give up, on ``time.monotonic()``'s clock.

        Returns:
            The endpoint (the runner is RUNNING).

        Raises:
            ServerStartFailed: the server exited, a model failed to load, or the
                deadline passed (the runner is ABORTED; the server still runs
                until ``stop()``).
            RunnerStateError: the runner was not started, or was stopped.
        """
        while self._look() is RunnerState.SCHEDULED:
            left = deadline - time.monotonic()
            if left <= 0:
                reason = "the server was not ready by the deadline"
                self._core.observe(Failure(FailureKind.DEADLINE, reason, self.log_tail()))
                break
            self._wait_a_little(min(POLL, left))
        self._check_exit()
        return self._core.result()

    def stop(self) -> None:
        """Stop the server and leave no process behind (-> END).

        Blocking and idempotent; it never raises, so it belongs in ``finally``. A
        KeyboardInterrupt while it waits still kills the server and sweeps its
        workers before it goes on.
        """
        self._core.end()
        if self._process is not None:
            self._terminate(self._process)
        if self._reader is not None:
            self._reader.join(EOF_GRACE)
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    def _wait_a_little(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if the server exits meanwhile."""
        assert self._process is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(seconds)

    def _look(self) -> RunnerState:
        """Feed the state machine what a SCHEDULED runner can see now."""
        if self._core.state is not RunnerState.SCHEDULED or self._process is None:
            return self._core.state
        returncode = self._process.poll()
        if returncode is not None and self._reader is not None:
            self._reader.join(EOF_GRACE)  # the last lines explain the exit
        assert self._scratch is not None
        ready, keys = read_scratch(self._scratch)
        self._descendants.note(self._process.pid)
        found = settle(returncode=returncode, ready=ready, keys=keys, log_tail=self.log_tail())
        self._core.observe(found)
        return self._core.state

    def _pump(self, output: IO[bytes]) -> None:
        """Keep the server's last output lines (the pipe must never fill up)."""
        with output:
            while chunk := os.read(output.fileno(), 65536):
                for line in self._feed_tail(chunk):
                    log.debug("server: %s", line)
        self._close_tail()

    def _terminate(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM, grace, SIGKILL to the group, reap; then sweep the descendants."""
        try:
            if process.poll() is None:
                self._descendants.note(process.pid)
                signal_group(process.pid, signal.SIGTERM)
                process.wait(self._stop_grace)
        except subprocess.TimeoutExpired:
            log.warning("the server ignored SIGTERM for %g s; killing it", self._stop_grace)
        finally:  # also on KeyboardInterrupt: nothing may outlive stop()
            if process.poll() is None:
                self._descendants.note(process.pid)
                signal_group(process.pid, signal.SIGKILL)
                process.wait()
            killed = self._descendants.sweep(SWEEP_GRACE)
            if killed:
                log.warning("killed processes the server left behind: %s", killed)
