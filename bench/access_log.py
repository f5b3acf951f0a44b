"""What the access log costs the prediction path: the same server with and without it.

Run: python bench/access_log.py [--rounds N] [--duration S]

Scenario: the tiny model (bench/models.py), 2 workers, concurrency 32, load from
bench/loadgen.py. Each round runs a fresh server without the access log, then
one with ``--access-log FILE`` (alternating, so both see the same noise on a
shared machine), and checks that the file has one line per request answered.
Prints requests/s and p50/p99 latency per run and the medians of each side.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import loadgen
import models
import servers


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
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
