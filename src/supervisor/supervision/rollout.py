"""Checking a model version with its canaries before it becomes the default.

The pure part (parsing, judging) is ``supervisor.models.canary``; this module sends the
canaries to one version's pool, in order, and turns the first failure into a
``CanaryFailed`` that carries the canary's report and the workers' log tail.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

import attrs
import trio

from handlers.protocol import InferItem
from supervisor.config import ModelConfig
from supervisor.errors import CanaryFailed, InvalidModel, SupervisorError
from supervisor.models.canary import (
    ARCHIVE_FILE,
    Canary,
    CanaryError,
    CanaryResult,
    judge,
    read_canaries,
)
from supervisor.supervision.pool import Pool

__all__ = [
    "UpdateResult",
    "archive_canaries",
    "failure_outcome",
    "pool_log_tail",
    "run_canaries",
]


@attrs.frozen
class UpdateResult:
    """What an update (or a checked switch of the default version) did.

    Attributes:
        name: the model.
        version: its default version now.
        previous: the default version before, or None if it did not change.
        canaries: the canaries that were sent, all passed.
        retired: whether ``previous`` was drained and unloaded.
    """

    name: str
    version: str
    previous: str | None
    canaries: tuple[CanaryResult, ...] = ()
    retired: bool = False


async def archive_canaries(config: ModelConfig) -> tuple[Canary, ...]:
    """The canaries in ``canaries.json`` at the root of the model's directory (if any).

    Raises:
        InvalidModel: the file exists but is not a valid canary list.
    """
    if not config.model_dir:
        return ()
    path = Path(config.model_dir) / ARCHIVE_FILE
    if not await trio.Path(path).is_file():
        return ()
    try:
        return await trio.to_thread.run_sync(read_canaries, path)
    except CanaryError as exc:
        raise InvalidModel(f"model {config.name} version {config.version}: {exc}") from None


async def run_canaries(
    pool: Pool, canaries: Sequence[Canary], *, outcome: str = ""
) -> tuple[CanaryResult, ...]:
    """Send each canary to ``pool`` in turn and judge its answer.

    Args:
        pool: the model version under test (its own queue, whatever the default is).
        canaries: what to send.
        outcome: what the caller does if one fails, added to the error's message.

    Returns:
        Every canary's result, all passed.

    Raises:
        CanaryFailed: at the first canary that fails.
    """
    results = []
    for index, canary in enumerate(canaries, start=1):
        result = await _send(pool, index, canary)
        if not result.passed:
            raise _failure(pool, result, len(canaries), outcome)
        results.append(result)
    return tuple(results)


async def _send(pool: Pool, index: int, canary: Canary) -> CanaryResult:
    headers = {"Content-Type": canary.content_type, "url_path": ""}
    item = InferItem(uuid.uuid4().hex, headers, {"body": (canary.content_type, canary.body)})
    started = trio.current_time()
    try:
        reply = await pool.submit(item).wait()
    except SupervisorError as exc:
        status, body = exc.status, exc.message.encode()
    else:
        status, body = reply.status, reply.body if reply.ok else reply.message.encode()
    latency = trio.current_time() - started
    return CanaryResult(index, canary, status, body, judge(canary, status, body), latency)


def _failure(pool: Pool, result: CanaryResult, count: int, outcome: str) -> CanaryFailed:
    message = (
        f"Canary {result.index} of {count} ({result.canary.name}) failed on model "
        f"{pool.config.name} version {pool.config.version}: {result.reason}"
    )
    if outcome:
        message = f"{message}; {outcome}"
    return CanaryFailed(message, canary=result.to_json(), log_tail=pool_log_tail(pool))


def failure_outcome(pool: Pool, default: Pool, *, loaded_here: bool) -> str:
    """What a failed canary leaves behind, for its error message.

    Args:
        pool: the version that failed.
        default: the model's default version at the time.
        loaded_here: whether ``pool`` was loaded for this update (and is unloaded again).
    """
    version = pool.config.version
    if default is pool:
        if loaded_here:
            return f"version {version} was unregistered (rolled back)"
        return f"version {version} stays the default"
    stays = f"the default version stays {default.config.version}"
    return f"{stays}; version {version} was unregistered (rolled back)" if loaded_here else stays


def pool_log_tail(pool: Pool) -> tuple[str, ...]:
    """The last log lines of the pool's workers (each line prefixed by its worker if several)."""
    workers = pool.statistics().workers
    if len(workers) == 1:
        return workers[0].log_tail
    return tuple(f"[{w.id}] {line}" for w in workers for line in w.log_tail)
