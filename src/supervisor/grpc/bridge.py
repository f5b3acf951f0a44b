"""A gRPC call's thread, bridged into the trio loop: run there, cancelled when the call ends.

grpcio's synchronous server runs each call on a thread of its own pool. The
call's work (a prediction, a management change) must run in the trio loop,
where the supervisor lives: ``Rpc.run`` runs an async function there with
``trio.from_thread.run`` and waits. When the call ends early (the client
cancelled it, its deadline passed, or the server's grace ran out), grpcio runs
the call's callbacks; ``Rpc`` then cancels the trio task it is waiting on (and
every later one at once), so a queued job is dropped before it reaches a
worker (``Job.wait`` gives it up when cancelled) and the thread is freed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
import trio

__all__ = ["Rpc", "abort"]

T = TypeVar("T")

_NO_DEADLINE = 1e9
"""Seconds beyond which a call's time remaining means none (grpcio reports about 9e18)."""


class Rpc:
    """One gRPC call's way into the trio loop.

    Args:
        token: the trio loop's token.
        context: the call's context (its end cancels the work in trio).
    """

    def __init__(self, token: trio.lowlevel.TrioToken, context: grpc.ServicerContext) -> None:
        self.token = token
        self.context = context
        self.ended = False  # trio side only
        self._scope: trio.CancelScope | None = None
        remaining = context.time_remaining()
        none = remaining is None or remaining > _NO_DEADLINE
        self._remaining = math.inf if none else max(0.0, remaining)
        if not context.add_callback(self._on_end):
            self.ended = True

    def deadline(self) -> float:
        """The call's deadline as a ``trio.current_time()`` value (trio side; inf: none)."""
        return trio.current_time() + self._remaining

    def gone(self) -> bool:
        """Whether the call has ended (cancelled, past its deadline): its job is dropped."""
        return self.ended or not self.context.is_active()

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T | None:
        """Run ``fn(*args)`` in the trio loop and return its result (this call's thread).

        Returns:
            The result, or None if the call ended first (its work was cancelled).
        """
        try:
            return trio.from_thread.run(self._guarded, fn, *args, trio_token=self.token)
        except trio.RunFinishedError:
            return None

    def run_soon(self, fn: Callable[[], object]) -> None:
        """Schedule ``fn()`` in the trio loop without waiting (from any thread)."""
        with contextlib.suppress(trio.RunFinishedError):
            self.token.run_sync_soon(fn)

    async def _guarded(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T | None:
        with trio.CancelScope() as scope:
            self._scope = scope
            if self.ended:
                scope.cancel()
            try:
                return await fn(*args)
            finally:
                self._scope = None
        return None

    def _on_end(self) -> None:
        """grpcio's callback when the call ends, however it ends (any thread)."""
        self.run_soon(self._cancel)

    def _cancel(self) -> None:
        self.ended = True
        if self._scope is not None:
            self._scope.cancel()


def abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    """End the call with ``code`` and ``message`` (raises, as ``context.abort`` does)."""
    context.abort(code, message)
    raise AssertionError("context.abort returned")  # pragma: no cover: it always raises
