"""Start, watch and stop ``python -m supervisor serve`` child processes for the benchmark.

Every server listens on free ports of 127.0.0.1 only, is stopped with SIGTERM
(SIGKILL only if it does not exit within a grace), and
every process it was seen to own (the supervisor and each worker incarnation)
is remembered so that ``leftovers`` can check that none outlives the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

LISTENING = re.compile(r"listening: inference (\S+), management (\S+), metrics (\S+)")
READY_STATES = ("READY", "BUSY")
MIB = 2**20
SEEN: set[int] = set()  # every pid a benchmark server was seen to own, this run


@dataclass
class Server:
    """One running server: its process, its base URLs and its log's last lines."""

    proc: subprocess.Popen[bytes]
    inference: str
    management: str
    metrics: str
    log: deque[str] = field(default_factory=lambda: deque(maxlen=200))

    def workers(self) -> list[psutil.Process]:
        """The supervisor's child processes (the workers), remembered in ``SEEN``."""
        children = psutil.Process(self.proc.pid).children()
        SEEN.update(child.pid for child in children)
        return children

    def rss_mb(self) -> dict[str, float | list[float]]:
        """Resident memory of the supervisor and of each worker, in MiB."""
        workers = []
        for worker in self.workers():
            with contextlib.suppress(psutil.NoSuchProcess):
                workers.append(worker.memory_info().rss / MIB)
        supervisor = psutil.Process(self.proc.pid).memory_info().rss / MIB
        return {"supervisor": supervisor, "workers": workers}

    def describe(self, model: str) -> dict[str, object]:
        """``GET /models/<model>`` from the management API (token auth is off)."""
        url = f"{self.management}/models/{model}"
        with urllib.request.urlopen(url, timeout=10) as response:  # 127.0.0.1 only
            entries: list[dict[str, object]] = json.load(response)
        return entries[0]

    def serving_pids(self, model: str) -> list[int]:
        """The pids of ``model``'s serving workers (not its warm spare)."""
        return [int(w["pid"]) for w in self.describe(model)["workers"]]  # type: ignore[union-attr]

    def batch_counts(self, model: str) -> tuple[float, float]:
        """``supervisor_batch_size`` histogram's (sum, count) for ``model`` from ``/metrics``."""
        with urllib.request.urlopen(f"{self.metrics}/metrics", timeout=10) as response:
            text = response.read().decode()
        found = {"sum": 0.0, "count": 0.0}
        for line in text.splitlines():
            for key in found:
                if line.startswith(f"supervisor_batch_size_{key}{{") and f'"{model}"' in line:
                    found[key] += float(line.rsplit(" ", 1)[1])
        return found["sum"], found["count"]


def serve_args(models: Sequence[str], **flags: object) -> list[str]:
    """The command line: ``serve --disable-token-auth``, free ports, ``--models``, flags."""
    args = [sys.executable, "-m", "supervisor", "serve", "--disable-token-auth"]
    args += [f"--{k}-address=127.0.0.1:0" for k in ("inference", "management", "metrics")]
    args += ["--models", *models]
    for name, value in flags.items():
        args.append(f"--{name.replace('_', '-')}={value}")
    return args


def _drain(server: Server) -> None:
    """Keep reading the server's log so its pipe never fills (its last lines are kept)."""
    assert server.proc.stderr is not None
    for line in server.proc.stderr:
        server.log.append(line.decode(errors="replace").rstrip())


def start(
    args: Sequence[str], cwd: str, *, env: dict[str, str] | None = None, timeout: float = 60.0
) -> Server:
    """Start a server (``env`` added to ours) and wait until it reports its addresses.

    Raises:
        TimeoutError: no addresses within ``timeout`` (the server is stopped).
    """
    env = {**os.environ, **(env or {})}
    pipes = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
    proc = subprocess.Popen(args, cwd=cwd, env=env, **pipes)
    SEEN.add(proc.pid)
    assert proc.stderr is not None
    deadline = time.perf_counter() + timeout
    lines: list[str] = []
    while time.perf_counter() < deadline and (line := proc.stderr.readline()):
        lines.append(line.decode(errors="replace").rstrip())
        if match := LISTENING.search(lines[-1]):
            server = Server(proc, *match.groups(), deque(lines, maxlen=200))
            threading.Thread(target=_drain, args=(server,), daemon=True).start()
            return server
    stop(proc)
    raise TimeoutError("the server did not report its addresses:\n" + "\n".join(lines[-20:]))


def wait_ready(server: Server, model: str, workers: int, *, timeout: float = 60.0) -> None:
    """Wait until ``model`` has ``workers`` workers ready to take requests."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        states = [w["state"] for w in server.describe(model)["workers"]]  # type: ignore[union-attr]
        if sum(state in READY_STATES for state in states) >= workers:
            server.workers()
            return
        time.sleep(0.05)
    raise TimeoutError(f"{model}: {workers} workers not ready:\n" + "\n".join(server.log))


def wait_spare(server: Server, model: str, *, timeout: float = 60.0) -> int:
    """Wait until ``model``'s warm spare is ready; returns its pid."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        spare = server.describe(model).get("warmSpare") or {}
        if pid := spare.get("pid"):  # type: ignore[union-attr]
            SEEN.add(int(pid))
            return int(pid)
        time.sleep(0.05)
    raise TimeoutError(f"{model}: no warm spare ready:\n" + "\n".join(server.log))


def stop(proc: subprocess.Popen[bytes], *, grace: float = 30.0) -> None:
    """SIGTERM, then wait; SIGKILL past ``grace`` (``leftovers`` then finds stray workers)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        SEEN.update(child.pid for child in psutil.Process(proc.pid).children(recursive=True))
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@contextlib.contextmanager
def running(
    models: Sequence[str],
    cwd: str,
    *,
    ready: dict[str, int],
    env: dict[str, str] | None = None,
    **flags: object,
) -> Iterator[Server]:
    """A server for the ``with`` block, ready with the given workers per model."""
    server = start(serve_args(models, **flags), cwd, env=env)
    try:
        for model, workers in ready.items():
            wait_ready(server, model, workers)
        yield server
    finally:
        stop(server.proc)


def leftovers(*, wait: float = 5.0) -> list[int]:
    """The pids in ``SEEN`` still alive (zombies count as gone), after up to ``wait`` s."""
    deadline = time.perf_counter() + wait
    while True:
        alive = [pid for pid in sorted(SEEN) if _alive(pid)]
        if not alive or time.perf_counter() > deadline:
            return alive
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def run_queue_seconds(pid: int) -> float:
    """Seconds the process's threads have spent runnable but waiting for a CPU.

    From ``/proc/PID/task/*/schedstat`` (its second field); 0.0 if it is gone.
    """
    total = 0
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def busy_pct(seconds: float = 0.5) -> float:
    """How busy the whole machine is over ``seconds``, in % of one CPU."""
    before = psutil.cpu_times()
    time.sleep(seconds)
    after = psutil.cpu_times()
    idle = after.idle + after.iowait - before.idle - before.iowait
    total = sum(after[:8]) - sum(before[:8])  # guest time is already in user time
    return 100 * (total - idle) / total * psutil.cpu_count()


def wait_quiet(*, within: float, below: float = 30.0) -> float:
    """Wait up to ``within`` s for the machine to be nearly idle; returns its last busy %.

    The machine is shared: starting a scenario while someone else's job holds a
    core measures that job as much as the server.
    """
    deadline = time.perf_counter() + within
    busy = busy_pct()
    while busy > below and time.perf_counter() < deadline:
        busy = busy_pct()
    return busy


@dataclass(frozen=True)
class Usage:
    """CPU accounting at one instant: per pid, this process, and the whole machine."""

    cpu: dict[int, float]  # user + system seconds, per live pid
    waited: dict[int, float]  # run-queue seconds, per pid
    preempted: dict[int, int]  # involuntary context switches, per pid
    own: float  # this process's CPU seconds (the load generator)
    busy: float  # the machine's busy CPU seconds, every process of every user
    at: float

    @classmethod
    def now(cls, pids: Sequence[int]) -> Usage:
        cpu, preempted = {}, {}
        for pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc = psutil.Process(pid)
                times, switches = proc.cpu_times(), proc.num_ctx_switches()
                cpu[pid], preempted[pid] = times.user + times.system, switches.involuntary
        waited = {pid: run_queue_seconds(pid) for pid in pids}
        machine = psutil.cpu_times()
        busy = sum(machine[:8]) - machine.idle - machine.iowait  # guest is in user already
        own = sum(os.times()[:2])
        return cls(cpu, waited, preempted, own, busy, time.perf_counter())


def usage(before: Usage, after: Usage, supervisor: int, requests: int) -> dict[str, float]:
    """CPU figures between two snapshots: % of one core, and per request (us, count).

    ``other_cpu_pct`` is what the rest of the machine used meanwhile (other users'
    processes: noise this run could not control).
    """
    wall = after.at - before.at
    spent = {pid: after.cpu[pid] - before.cpu[pid] for pid in after.cpu if pid in before.cpu}
    workers = sum(v for pid, v in spent.items() if pid != supervisor)
    own = after.own - before.own
    n = max(requests, 1)
    return {
        "supervisor_cpu_pct": 100 * spent.get(supervisor, 0.0) / wall,
        "supervisor_cpu_us_per_request": 1e6 * spent.get(supervisor, 0.0) / n,
        "supervisor_runq_pct": 100 * (after.waited[supervisor] - before.waited[supervisor]) / wall,
        "supervisor_preempted_per_request": (
            after.preempted.get(supervisor, 0) - before.preempted.get(supervisor, 0)
        )
        / n,
        "workers_cpu_pct": 100 * workers / wall,
        "workers_cpu_us_per_request": 1e6 * workers / n,
        "loadgen_cpu_pct": 100 * own / wall,
        "other_cpu_pct": 100 * (after.busy - before.busy - sum(spent.values()) - own) / wall,
    }
