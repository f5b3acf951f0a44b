"""What a connected dashboard costs the prediction path: no browser vs one event stream.

Run: python bench/dashboard.py [--rounds N] [--duration S] [--quick] [--out FILE]
     python bench/dashboard.py --micro


One scenario (bench/compare.py's first): the tiny model (bench/models.py), 2
workers, ``serve --disable-token-auth``, 32 keep-alive clients of
bench/loadgen.py. Each round runs it on a fresh server with no dashboard
client, then on a fresh server with one client reading ``/dashboard/events``
(a child process of this script, started before the load and connected, i.e.
its snapshot received, before the load begins; it reconnects when a stream
ends, as the page does), ``--rounds`` times (default 3), so both see the same
noise of this shared machine. The server samples its request figures once a
second either way; with a client it also sends the models' state (up to 4 a
second) and every event.

It prints one Markdown table: the median of each side, with/without, the spread
of each ((max - min) / median) and whether the two ranges are apart, and how
many messages the client read. Servers are stopped with SIGTERM and the run
fails if any of their processes is left.

``--micro`` times, in this process, what the server does once a second for the
dashboard (best of 5 runs of 2,000): with no client, one sample of the latency
histogram; with one, also the models' state (2 workers' memory read with psutil,
the view built, encoded as JSON and framed as an event).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import loadgen
import models
import orjson
import run
import servers
from report import _table

from supervisor.api.dashboard.view import models_view, sse_message
from supervisor.config import ModelConfig
from supervisor.supervision.hostmetrics import process_rss
from supervisor.supervision.metrics import LATENCY_BUCKETS
from supervisor.supervision.series import RequestSeries
from supervisor.supervision.stats import ModelStats, WorkerStats

SIDES = ("no client", "one client")
METRICS = (
    ("req/s", "rps", True),
    ("p50 ms", "p50_ms", False),
    ("p99 ms", "p99_ms", False),
    ("supervisor CPU us/request", "supervisor_cpu_us_per_request", False),
)


def read_events(url: str) -> None:
    """Child mode: read the event stream until SIGTERM; print ``connected``, then the counts."""
    counts = {"messages": 0, "bytes": 0, "streams": 0}
    stopping = announced = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        with httpx.Client(timeout=None) as client:
            while not stopping:  # a stream ends after 0.8 x read_timeout: open the next
                with client.stream("GET", url) as response:
                    response.raise_for_status()
                    counts["streams"] += 1
                    for chunk in response.iter_bytes():
                        counts["bytes"] += len(chunk)
                        counts["messages"] += chunk.count(b"\n\n")
                        if not announced and counts["messages"]:
                            announced = True
                            print("connected", flush=True)
    except KeyboardInterrupt:
        pass
    print(json.dumps(counts), flush=True)


@contextmanager
def event_reader(server: servers.Server) -> Iterator[dict[str, int]]:
    """A dashboard client in a child process for the ``with`` block; its counts after it."""
    url = f"{server.management}/dashboard/events"
    command = [sys.executable, __file__, "--read-events", url]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    counts: dict[str, int] = {}
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "connected":
            raise RuntimeError("the dashboard client did not connect")
        yield counts
    finally:
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=10)
        counts.update(json.loads(out.strip().splitlines()[-1]))


def measure(side: str, spec: str, root: Path, plan: run.Plan) -> dict[str, Any]:
    """One load run of the tiny model, 2 workers, c=32, on a fresh server."""
    with servers.running([spec], str(root), ready={"tiny": 2}, workers=2) as server:
        servers.wait_quiet(within=plan.quiet_wait)
        load = loadgen.LoadSpec(
            f"{server.inference}/predictions/tiny",
            models.body("tiny"),
            concurrency=32,
            duration=plan.duration,
            warmup=plan.warmup,
            max_requests=plan.max_requests,
        )
        if side == SIDES[0]:
            return run._load_once(server, load, {})
        with event_reader(server) as counts:
            figures = run._load_once(server, load, {})
        return {**figures, "sse_messages": counts["messages"], "sse_bytes": counts["bytes"]}


def table_rows(found: dict[str, list[dict[str, Any]]]) -> list[list[Any]]:
    rows = []
    for name, key, higher in METRICS:
        without = [r[key] for r in found[SIDES[0]]]
        with_client = [r[key] for r in found[SIDES[1]]]
        a, b = statistics.median(without), statistics.median(with_client)
        spread = f"{_spread(without)} / {_spread(with_client)}"
        rows.append([name, a, b, f"{b / a:.3f}", spread, _verdict(higher, without, with_client)])
    return rows


def _spread(values: list[float]) -> str:
    median = statistics.median(values)
    if len(values) < 2 or not median:
        return "n/a"
    return f"{100 * (max(values) - min(values)) / median:.1f}%"


def _verdict(higher_is_better: bool, without: list[float], with_client: list[float]) -> str:
    """Whether the client side is ``better`` or ``worse`` with the ranges apart."""
    if min(len(without), len(with_client)) < 2:
        return "n/a (1 round)"
    if max(without) < min(with_client):
        return "better" if higher_is_better else "worse"
    if max(with_client) < min(without):
        return "worse" if higher_is_better else "better"
    return "within spread"


def micro(runs: int = 5, ticks: int = 2000) -> dict[str, float]:
    """Microseconds per tick of the hub, without and with a client (best of ``runs``)."""
    worker = WorkerStats("w1", os.getpid(), 1, "READY", time.time(), 0, 10, None, ("line",) * 20)
    stats = ModelStats(
        ModelConfig(name="tiny", handler="h", workers=2), "READY", True, None, (),
        (worker, attrs.evolve(worker, id="w2")), 0, 3, 100, 1000, 0.0,
    )  # fmt: skip
    series = RequestSeries(LATENCY_BUCKETS)
    labels = ("tiny", "1.0", "200", "rest")

    def sample(i: int) -> None:
        series.add(float(i), [(labels, tuple(i * (k + 1) for k in range(16)))])

    def state(i: int) -> None:
        sample(i)
        models = models_view([stats], series, process_rss)
        orjson.dumps(models)
        sse_message("state", {"time": float(i), "models": models})

    found = {}
    for name, tick in (("no client", sample), ("one client", state)):
        best = min(_timed(tick, ticks) for _ in range(runs))
        found[name] = best / ticks * 1e6
    return found


def _timed(tick: Any, ticks: int) -> float:
    started = time.perf_counter()
    for i in range(ticks):
        tick(i)
    return time.perf_counter() - started


def main() -> None:
    if sys.argv[1:2] == ["--read-events"]:
        read_events(sys.argv[2])
        return
    if sys.argv[1:2] == ["--micro"]:
        for name, us in micro().items():
            print(f"{name}: {us:.1f} us per tick (one tick a second)")
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs per side (default 3)")
    parser.add_argument("--duration", type=float, help="seconds per load run (default 4)")
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    parser.add_argument("--out", metavar="FILE", help="write every run's figures as JSON here")
    args = parser.parse_args()
    plan = dataclasses.replace(run.Plan.quick() if args.quick else run.Plan(), repeats=1)
    if args.duration is not None:
        plan = dataclasses.replace(plan, duration=args.duration)
    started = time.perf_counter()
    results: dict[str, Any] = {"machine": run.machine(), "plan": dataclasses.asdict(plan)}
    try:
        results["runs"] = _run(plan, args.rounds)
    finally:
        results["leftover_pids"] = servers.leftovers()
    took = time.perf_counter() - started
    print(
        f"tiny model, 2 workers, c=32; {args.rounds} round(s), no client then one; load runs "
        f"of {plan.duration:g} s after {plan.warmup:g} s warm-up; medians; took {took:.0f} s\n"
    )
    _table(
        ["metric", "no client", "one client", "one/none", "spread none / one", "apart?"],
        table_rows(results["runs"]),
    )
    read = [r["sse_messages"] for r in results["runs"][SIDES[1]]]
    print(f"Messages the client read per run: {read}")
    print(f"Server processes left: {results['leftover_pids'] or 'none'}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    if results["leftover_pids"]:
        sys.exit(f"server processes left running: {results['leftover_pids']}")


def _run(plan: run.Plan, rounds: int) -> dict[str, list[dict[str, Any]]]:
    with tempfile.TemporaryDirectory(prefix="trio-supervisor-dashboard-") as tmp:
        root = Path(tmp)
        specs = run._child_json("build", str(root / "models"))
        found: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
        for n in range(rounds):
            for side in SIDES:
                figures = measure(side, specs["tiny"], root, plan)
                found[side].append(figures)
                errors = figures.get("errors") or {}
                print(
                    f"  [{side} {n + 1}] {figures['rps']:.0f} req/s, p50 "
                    f"{figures['p50_ms']:.2f} ms" + (f", errors {errors}" if errors else ""),
                    file=sys.stderr,
                    flush=True,
                )
        return found


if __name__ == "__main__":
    main()
