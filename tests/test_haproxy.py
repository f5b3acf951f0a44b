"""Rolling restarts and a kill -9 behind a real HAProxy: no request lost to a drain.

Runs ``bench/rolling_restart.py`` (three servers on loopback behind Debian's
``haproxy`` in its default mode, server connections kept alive and reused,
health checks on ``/v2/health/ready``, steady load from a few clients) with the
served defaults, and checks its figures: a rolling restart
(SIGTERM, wait, start again, each server in turn) fails no request and never
makes HAProxy retry; a kill -9 fails only requests already in flight on the
killed server, and HAProxy marks it DOWN within about one check interval.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.config import ServerConfig

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("haproxy") is None,
        reason="haproxy is not on PATH (Debian: apt-get install haproxy; .ci/run installs it)",
    ),
]

SCENARIO = Path(__file__).resolve().parent.parent / "bench" / "rolling_restart.py"
INTER_MS = 200
SERVED_DEFAULTS = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_")}


@pytest.fixture(scope="module")
def figures() -> dict:
    """The scenario's figures, with the default pre_stop_delay and shutdown_grace."""
    delay = ServerConfig().pre_stop_delay
    run = subprocess.run(
        [sys.executable, str(SCENARIO), "--json", "--clients", "4",
         "--inter-ms", str(INTER_MS), "--pre-stop-delay", str(delay)],
        capture_output=True, text=True, timeout=240, check=False,
        env={**SERVED_DEFAULTS, "ROLLING_LOGS": "1"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-6000:]
    return json.loads(run.stdout)


def test_a_rolling_restart_loses_no_request(figures):
    rolling = figures["rolling_restart"]
    assert rolling["requests"] > 300, rolling  # there was load all along
    assert rolling["failures"] == 0, rolling["failed"]
    assert rolling["exit_codes"] == [0, 0, 0]
    # HAProxy never met a closed port: the servers left it before they stopped accepting
    assert rolling["haproxy_retries"] == 0
    # nobody waited on a draining server: far below what the drain would allow
    assert rolling["longest_ms"] < ServerConfig().shutdown_grace * 1000


def test_kill_9_fails_only_the_requests_in_flight_on_that_server(figures):
    killed = figures["kill_9"]
    assert killed["requests"] > 20, killed  # the load went on, on the other two
    assert killed["failed_started_before_kill"] == killed["failures"], killed["failed"]
    assert killed["failures"] <= 4  # one request in flight per client at most
    assert killed["down_after_ms"] < INTER_MS + 500  # about one check interval (a loaded CI)
    assert figures["final_exit_codes"] == [0, 0]
