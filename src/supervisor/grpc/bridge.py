"""A gRPC call, bridged from grpcio's asyncio loop into the trio loop without a blocked thread.

grpcio's asyncio server runs every call as an asyncio task in one loop, on a
thread of its own (``supervisor.grpc.listener``). The call's work (a
prediction, a management change) must run in the trio loop, where the
supervisor lives: ``Rpc.run`` schedules it there (``TrioToken.run_sync_soon``
starts a task in the listener's nursery) and awaits an asyncio future that the
trio task completes (``loop.call_soon_threadsafe``). No thread waits meanwhile.
When the call ends early (the client cancelled it, its deadline passed, or the
server's grace ran out), grpcio cancels the asyncio task; ``Rpc`` then cancels
the trio task's cancel scope (and every later one at once), so a queued job is
dropped before it reaches a worker (``Job.wait`` gives it up when cancelled).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import attrs
import grpc
import grpc.aio
import trio

__all__ = ["Bridge", "Context", "Rpc", "abort"]

T = TypeVar("T")

Context = grpc.aio.ServicerContext[Any, Any]
"""A call's context in grpcio's asyncio server."""

_NO_DEADLINE = 1e9
"""Seconds beyond which a call's time remaining means none (grpcio reports about 9e18)."""


@attrs.frozen
class Bridge:
    """Where the calls' trio tasks run, and the asyncio loop they answer to.

    Attributes:
        token: the trio loop's token.
        nursery: the listener's nursery the calls' tasks are started in.
        loop: grpcio's asyncio loop.
    """

    token: trio.lowlevel.TrioToken
    nursery: trio.Nursery
    loop: asyncio.AbstractEventLoop

    def rpc(self, context: Context) -> Rpc:
        """A call's way into the trio loop (asyncio side, when the call starts)."""
        return Rpc(self, context)

    def run_soon(self, fn: Callable[[], object]) -> None:
        """Schedule ``fn()`` in the trio loop without waiting (from any thread)."""
        with contextlib.suppress(trio.RunFinishedError):
            self.token.run_sync_soon(fn)


class Rpc:
    """One gRPC call's way into the trio loop.

    Args:
        bridge: the trio loop's side.
        context: the call's context.
    """

    def __init__(self, bridge: Bridge, context: Context) -> None:
        self.bridge = bridge
        self.context = context
        self.ended = False  # trio side only
        self._scopes: set[trio.CancelScope] = set()
        remaining = context.time_remaining()
        none = remaining is None or remaining > _NO_DEADLINE
        self._remaining = math.inf if none else max(0.0, remaining)

    def deadline(self) -> float:
        """The call's deadline as a ``trio.current_time()`` value (trio side; inf: none)."""
        return trio.current_time() + self._remaining

    def gone(self) -> bool:
        """Whether the call has ended (cancelled, past its deadline): its job is dropped."""
        return self.ended

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T | None:
        """Run ``fn(*args)`` in the trio loop and return its result (asyncio side).

        Returns:
            The result, or None if its trio task was cancelled first (the server stopping).

        Raises:
            Exception: what ``fn`` raised.
        """
        future: asyncio.Future[T | None] = self.bridge.loop.create_future()
        self.bridge.run_soon(lambda: self._start(future, fn, *args))
        try:
            return await future
        except asyncio.CancelledError:  # the call ended: so does its work in trio
            self.bridge.run_soon(self.end)
            raise

    def run_soon(self, fn: Callable[[], object]) -> None:
        """Schedule ``fn()`` in the trio loop without waiting (from any thread)."""
        self.bridge.run_soon(fn)

    def end(self) -> None:
        """The call has ended: cancel its work in trio, now and later (trio side)."""
        self.ended = True
        for scope in self._scopes:
            scope.cancel()

    def _start(
        self, future: asyncio.Future[T | None], fn: Callable[..., Awaitable[T]], *args: Any
    ) -> None:
        """Start ``fn(*args)``'s task in the listener's nursery (trio side)."""
        try:
            self.bridge.nursery.start_soon(self._task, future, fn, *args)
        except RuntimeError:  # the nursery has closed: the listener has stopped
            self._settle(future, None, None)

    async def _task(
        self, future: asyncio.Future[T | None], fn: Callable[..., Awaitable[T]], *args: Any
    ) -> None:
        """``fn(*args)`` in trio; its result or error completes ``future`` in asyncio."""
        result: T | None = None
        error: Exception | None = None
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            if self.ended:
                scope.cancel()
            try:
                result = await fn(*args)
            except Exception as exc:  # the caller's to answer (a SupervisorError, a bug)
                error = exc
            finally:
                self._scopes.discard(scope)
                self._settle(future, result, error)

    def _settle(
        self, future: asyncio.Future[T | None], result: T | None, error: Exception | None
    ) -> None:
        def settle() -> None:
            if future.done():  # the call was cancelled meanwhile
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self.bridge.loop.call_soon_threadsafe(settle)


async def abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    """End the call with ``code`` and ``message`` (raises, as ``context.abort`` does)."""
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # pragma: no cover: it always raises
