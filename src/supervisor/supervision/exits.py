"""How processes end, and signalling a process group: plain OS calls, no trio.

Workers and the servers that the runners start both run in a session of their
own, so one ``killpg`` reaches a process and every descendant that stayed in its
group. The wording of an exit status is shared by worker exit records and the
runners' failures, so a log line and an error say it the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal

__all__ = ["describe_returncode", "signal_group"]


def signal_group(pid: int, signum: int) -> None:
    """Send ``signum`` to the process group led by ``pid`` (no error if it is gone).

    The group id stays reserved while any member lives, so this reaches
    stragglers even after the leader has been reaped.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def describe_returncode(code: int) -> str:
    """Say how a process ended: ``exit code 3`` or ``killed by signal 9 (SIGKILL)``."""
    if code >= 0:
        return f"exit code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = "unknown"
    return f"killed by signal {-code} ({name})"
