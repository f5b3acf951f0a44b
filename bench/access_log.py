"""What the access log costs the prediction path: the same server with and without it.

Run: python bench/access_log.py [--rounds N] [--duration S]
     python bench/access_log.py --micro [--calls N]

Scenario: the tiny model (bench/models.py), 2 workers, concurrency 32, load from
bench/loadgen.py. Each round runs a fresh server without the access log, then
one with ``--access-log FILE`` (alternating, so both see the same noise on a
shared machine), and checks that the file has one line per request answered.
Prints requests/s and p50/p99 latency per run and the medians of each side.

``--micro`` measures what one request's line costs, in this process: the
access-log calls a request makes (``open_entry``, then ``record``) with the log
off and on (a file in a temporary directory), as microseconds of wall time on
the calling thread and of CPU time of the whole process (the writer thread
included). On a shared machine this is steadier than the load runs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import loadgen
import models
import servers

from supervisor.config import ServerConfig
from supervisor.http import access
from supervisor.logsetup import open_log_files


def one_run(spec: str, workdir: Path, duration: float, access: Path | None) -> dict[str, Any]:
    """One fresh server, one load run; the access log's line count if it is on."""
    flags: dict[str, object] = {"workers": 2}
    if access is not None:
        flags["access_log"] = access
    with servers.running([spec], str(workdir), ready={"tiny": 2}, **flags) as server:
        load = loadgen.LoadSpec(
            f"{server.inference}/predictions/tiny",
            body=models.body("tiny"),
            concurrency=32,
            duration=duration,
            warmup=1.0,
        )
        result = loadgen.measure(load).summary()
    if access is not None:
        result["lines"] = sum(1 for _ in access.open())
        access.unlink()
    return result


def _calls(n: int) -> tuple[float, float]:
    """Wall and CPU microseconds per request's access-log calls."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        with access.open_entry(("127.0.0.1", 53478), "POST", "/predictions/tiny", False):
            access.record(200, "tiny")
    return (time.perf_counter() - wall) / n * 1e6, (time.process_time() - cpu) / n * 1e6


def micro(calls: int) -> None:
    """Print the per-request cost of the access log, off and on (best of 5 each)."""
    with tempfile.TemporaryDirectory() as tmp:
        for side, setting in (("off", False), ("on", f"{tmp}/access_log.log")):
            with open_log_files(ServerConfig(access_log=setting)):
                runs = [_calls(calls) for _ in range(5)]
                cpu_start = time.process_time()
            drained = (time.process_time() - cpu_start) / calls * 1e6  # the writer's catch-up
            wall = min(r[0] for r in runs)
            cpu = min(r[1] for r in runs)
            print(f"{side}: {wall:.2f} us wall, {cpu:.2f} us CPU per request (+{drained:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--micro", action="store_true")
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    if args.micro:
        micro(args.calls)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = models.build(root / "models")["tiny"]
        sides: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        for _ in range(args.rounds):
            for side, access in (("off", None), ("on", root / "access_log.log")):
                result = one_run(spec, root, args.duration, access)
                sides[side].append(result)
                shown = {k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}
                print(side, shown, flush=True)
        for side, results in sides.items():
            rps = statistics.median(r["rps"] for r in results)
            p50 = statistics.median(r["p50_ms"] for r in results)
            p99 = statistics.median(r["p99_ms"] for r in results)
            print(f"{side}: median {rps:.0f} req/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    assert not servers.leftovers(), "a server process outlived its run"


if __name__ == "__main__":
    main()
