"""Run ``python -m supervisor serve`` as a child process and know when it is ready (Trio).

``ModelServerRunner`` follows TFX's model-server runner: ``start()`` launches
the server and returns at once, ``wait_until_running(deadline)`` returns the
endpoint once the server listens and every start-up model is ready (or raises
``ServerStartFailed`` saying why, with the server's log tail), ``get_endpoint()``
works only while RUNNING, and ``stop()`` ends it all::

    async with ModelServerRunner(["--models", "echo.mar", "--model-store", "store"]) as runner:
        await runner.start()
        endpoint = await runner.wait_until_running(trio.current_time() + 60)
        ...  # endpoint.inference, endpoint.headers("inference")

Leaving the block calls ``stop()``, shielded from cancellation: SIGTERM to the
server's process group, ``stop_grace`` seconds to shut down, SIGKILL, reap,
then every descendant seen is swept (see ``supervisor.runner.base``). The states
and decisions live in ``supervisor.runner.state``; this module only does I/O.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import tempfile
from pathlib import Path
from types import TracebackType

import trio

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
    RunnerStateError,
    serve_command,
    settle,
)
from supervisor.supervision.exits import signal_group

__all__ = ["ModelServerRunner"]

log = logging.getLogger("supervisor.runner")


class ModelServerRunner(RunnerBase[trio.Process]):
    """One ``python -m supervisor serve`` child, from start to stop (Trio API).

    Use it with ``async with``: the block owns the tasks that read the
    server's output, and leaving it stops the server.

    Args:
        args: ``serve`` flags (``--models``, ``--model-store``, ``--config`` ...).
            The runner adds its own last: listeners on ``addresses`` or free
            ports of 127.0.0.1, the key file and the ready file in a temporary
            directory of its own.
        cwd: the server's working directory (default: ours).
        env: the server's environment (default: ours).
        stop_grace: seconds the server gets to shut down after SIGTERM.
        python: the interpreter that runs the server.
        addresses: fixed ``HOST:PORT`` listeners by API (``inference``,
            ``management``, ``metrics``).
    """

    def _init_io(self) -> None:
        self._eof = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._stack = contextlib.AsyncExitStack()
        self._pump_scope = trio.CancelScope()

    async def __aenter__(self) -> ModelServerRunner:
        scratch = tempfile.TemporaryDirectory(prefix="trio-supervisor-runner-")
        self._scratch = Path(self._stack.enter_context(scratch))
        self._nursery = await self._stack.enter_async_context(trio.open_nursery())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
        # The nursery holds only the output pump, which never raises: closing it
        # without the block's exception lets that exception go on unchanged
        # (not wrapped in an ExceptionGroup).
        await self._stack.aclose()

    async def start(self) -> None:
        """Launch the server and return without waiting for it (INITIAL -> SCHEDULED).

        A server that cannot even be launched makes the runner ABORTED;
        ``wait_until_running`` reports it.

        Raises:
            RunnerStateError: called twice, or outside ``async with``.
        """
        if self._nursery is None or self._scratch is None:
            raise RunnerStateError("use the runner in `async with ModelServerRunner(...)`")
        self._core.start()
        command = serve_command(self._args, self._scratch, self._python, self._addresses)
        try:
            process = await trio.lowlevel.open_process(command, **self._spawn_options())
        except OSError as exc:
            self._core.observe(Failure(FailureKind.SPAWN, f"cannot launch {command[0]}: {exc}"))
            return
        self._process = process
        assert process.stdout is not None
        self._nursery.start_soon(self._pump, process.stdout)
        if self._core.state is RunnerState.END:  # stop() ran while we were launching
            await self.stop()

    async def wait_until_running(self, deadline: float) -> Endpoint:
        """Wait until the server listens and every start-up model is ready.

        Args:
            deadline: when to give up, on Trio's clock (``trio.current_time()``).

        Returns:
            The endpoint (the runner is RUNNING).

        Raises:
            ServerStartFailed: the server exited, a model failed to load, or the
                deadline passed (the runner is ABORTED; the server still runs
                until ``stop()``).
            RunnerStateError: the runner was not started, or was stopped.
        """
        with trio.move_on_at(deadline):
            while await self._look() is RunnerState.SCHEDULED:
                await self._wait_a_little()
        if self._core.state is RunnerState.SCHEDULED:
            reason = "the server was not ready by the deadline"
            self._core.observe(Failure(FailureKind.DEADLINE, reason, self.log_tail()))
        self._check_exit()
        return self._core.result()

    async def stop(self) -> None:
        """Stop the server and leave no process behind (-> END).

        Blocking, idempotent, shielded from cancellation, and it never raises:
        it is meant for ``finally`` blocks, also when ``start`` did not finish.
        """
        with trio.CancelScope(shield=True):
            self._core.end()
            if self._process is not None:
                await self._terminate(self._process)
            self._pump_scope.cancel()

    async def _wait_a_little(self) -> None:
        """Sleep ``POLL`` seconds, or less if the server exits meanwhile."""
        with trio.move_on_after(POLL):
            if self._process is None:  # start() is still launching it, in another task
                await trio.sleep_forever()
            await self._process.wait()

    async def _look(self) -> RunnerState:
        """Feed the state machine what a SCHEDULED runner can see now."""
        if self._core.state is not RunnerState.SCHEDULED or self._process is None:
            return self._core.state
        returncode = self._process.poll()
        if returncode is not None:
            with trio.move_on_after(EOF_GRACE):
                await self._eof.wait()
        scratch = self._scratch
        assert scratch is not None
        ready, keys = await trio.to_thread.run_sync(read_scratch, scratch)
        await trio.to_thread.run_sync(self._descendants.note, self._process.pid)
        found = settle(returncode=returncode, ready=ready, keys=keys, log_tail=self.log_tail())
        self._core.observe(found)
        return self._core.state

    async def _pump(self, output: trio.abc.ReceiveStream) -> None:
        """Keep the server's last output lines (the pipe must never fill up)."""
        try:
            with self._pump_scope:
                async for chunk in output:
                    for line in self._feed_tail(bytes(chunk)):
                        log.debug("server: %s", line)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # no more output is all it means
        finally:
            self._close_tail()
            self._eof.set()
            with trio.CancelScope(shield=True):
                await output.aclose()

    async def _terminate(self, process: trio.Process) -> None:
        """SIGTERM, grace, SIGKILL to the group, reap; then sweep the descendants."""
        if process.poll() is None:
            await trio.to_thread.run_sync(self._descendants.note, process.pid)
            signal_group(process.pid, signal.SIGTERM)
            with trio.move_on_after(self._stop_grace):
                await process.wait()
        if process.poll() is None:
            log.warning("the server ignored SIGTERM for %g s; killing it", self._stop_grace)
            await trio.to_thread.run_sync(self._descendants.note, process.pid)
            signal_group(process.pid, signal.SIGKILL)
            await process.wait()
        killed = await trio.to_thread.run_sync(self._descendants.sweep, SWEEP_GRACE)
        if killed:
            log.warning("killed processes the server left behind: %s", killed)
