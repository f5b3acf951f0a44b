"""Per-worker memory limits: measure a worker's resident memory, end it when over.

A model with ``memory_limit_mb`` set gets one watcher per worker incarnation.
Every ``CHECK_INTERVAL`` it sums the resident set size (RSS) of the worker
process and all its descendants (a handler's own subprocesses count against
its limit) and, once the sum is over the limit, ends the incarnation with a
reason such as ``memory limit exceeded: RSS 612 MB > 500 MB``. That reason is
the worker's exit record and the error of the request in flight; the slot's
restart policy decides what comes next, as after any other failure.

Reading ``/proc`` is quick, but finding descendants reads every process's
``stat`` file, so each measurement runs in a worker thread, off the trio
thread. RSS counts pages shared with other processes in each of them: a
forked child that shares its parent's pages is counted twice.
"""

from __future__ import annotations

from collections.abc import Callable

import psutil
import trio

from supervisor.config import MIB, SECONDS

__all__ = ["CHECK_INTERVAL", "check_memory", "over_limit", "tree_rss", "watch_memory"]

CHECK_INTERVAL = 0.5 * SECONDS
"""How often a worker's memory is measured."""


def over_limit(rss: int, limit: int) -> str | None:
    """Why a worker using ``rss`` bytes must end under a ``limit`` of bytes, or None.

    A limit of 0 (or less) is no limit.
    """
    if limit <= 0 or rss <= limit:
        return None
    return f"memory limit exceeded: RSS {rss // MIB} MB > {limit // MIB} MB"


def tree_rss(pid: int) -> int | None:
    """The resident memory of ``pid`` and its descendants, in bytes.

    Returns:
        The sum, or None when ``pid`` is gone (descendants that vanish while
        they are measured are skipped).
    """
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
        total: int = root.memory_info().rss
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    for process in processes[1:]:
        try:
            total += process.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


async def check_memory(pid: int, limit_mb: int) -> str | None:
    """Measure ``pid``'s tree once: why it is over ``limit_mb``, or None.

    A worker is checked once it has loaded its model, before it is reported
    ready: a model over its limit never counts as READY, not even briefly.
    """
    rss = await trio.to_thread.run_sync(tree_rss, pid)
    return None if rss is None else over_limit(rss, limit_mb * MIB)


async def watch_memory(
    pid: int, limit_mb: int, kill: Callable[[str], None], *, interval: float = CHECK_INTERVAL
) -> None:
    """Measure ``pid``'s tree every ``interval`` s; call ``kill(reason)`` once it is over.

    Returns when the process is gone or after ``kill``; runs until cancelled otherwise.
    """
    limit = limit_mb * MIB
    while True:
        await trio.sleep(interval)
        rss = await trio.to_thread.run_sync(tree_rss, pid)
        if rss is None:
            return
        reason = over_limit(rss, limit)
        if reason is not None:
            kill(reason)
            return
