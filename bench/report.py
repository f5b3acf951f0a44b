"""Print bench/run.py's results as Markdown tables, with issue 5's targets checked."""

from __future__ import annotations

import statistics
from typing import Any

TINY_RPS = 2000.0
TINY_P50_OVER_MS = 0.5
BATCHED_SHARE = 0.85
COLD_START_S = 2.0
SUPERVISOR_RSS_MB = 60.0
RECOVERY_S = 2.0
SPARE_RECOVERY_S = 0.2


def _table(header: list[str], rows: list[list[Any]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(_cell(v) for v in row) + " |")
    print()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "0"
    return str(value)


def _inprocess(results: dict[str, Any]) -> None:
    start, end = results["inprocess"], results.get("inprocess_end", {})
    print(f"In-process limit (torch threads: {start['torch_threads']}; medians per call)\n")
    rows = []
    for key, value in start.items():
        if isinstance(value, dict):
            model, batch, *kind = key.split("_")
            again = end.get(key, {})
            rate = [value["rows_per_s"], again.get("rows_per_s", float("nan"))]
            rows.append([model, batch[1:], " ".join(kind), *rate, value["per_call_ms"]])
    _table(["model", "batch", "call", "rows/s (first)", "rows/s (last)", "ms per call"], rows)


MLP_B8_LIMITS = ("mlp_b8_forward", "mlp_b8_forward_1thread")


def limit(results: dict[str, Any], key: str) -> dict[str, float]:
    """The better of the two in-process measurements of ``key``."""
    runs = [results["inprocess"][key]]
    if key in results.get("inprocess_end", {}):
        runs.append(results["inprocess_end"][key])
    return max(runs, key=lambda run: run["rows_per_s"])


def _ceiling(results: dict[str, Any]) -> None:
    print("Ceilings (bench/trivial.py servers in a child process, concurrency 32)\n")
    keys = ("rps", "generator_cpu_us_per_request", "generator_cpu_pct", "server_cpu_pct")
    rows = [
        [f"{kind}, against a trivial asyncio server", *(r[k] for k in keys)]
        for kind, r in results["loadgen_ceiling"].items()
    ]
    for server, found in results.get("http_stack_ceiling", {}).items():
        rows.append(
            [f"raw, against a trivial {server} app on Hypercorn", *(found["raw"][k] for k in keys)]
        )
    header = ["client", "requests/s", "generator CPU us/request", "generator CPU %"]
    _table([*header, "trivial server CPU %"], rows)


def _load(results: dict[str, Any]) -> None:
    print("Load (c = closed-loop keep-alive clients; medians of the repeats)\n")
    header = ["model", "http", "workers", "batch", "threads", "c", "req/s", "p50 ms", "p90 ms"]
    header += ["p99 ms"]
    header += ["errors"]
    header += ["mean batch", "sup CPU us/req", "CPU % sup/workers/loadgen/other", "sup run-queue %"]
    rows = []
    for r in results["load"]:
        batch = r.get("batch_size", 1)
        if batch > 1:
            batch = f"{batch} ({r['max_batch_delay'] * 1e3:g} ms)"
        cpu = "/".join(
            f"{r[k]:.0f}" for k in ("supervisor_cpu_pct", "workers_cpu_pct", "loadgen_cpu_pct")
        )
        cpu += f"/{r['other_cpu_pct']:.0f}"
        setup = [r["model"], r.get("http", "lean"), r["workers"], batch, r["threads"]]
        setup += [r["concurrency"], r["rps"]]
        latency = [r["p50_ms"], r["p90_ms"], r["p99_ms"], r["errors"], r["mean_batch"]]
        usage = [r["supervisor_cpu_us_per_request"], cpu, r["supervisor_runq_pct"]]
        rows.append([*setup, *latency, *usage])
    _table(header, rows)


def _memory(results: dict[str, Any]) -> None:
    print("Memory (RSS, MiB; loaded = peak under the scenario's load)\n")
    rows = []
    for m in results["memory"]:
        setup = f"{m['model']}, {m['workers']} worker(s), batch {m.get('batch_size', 1)}"
        setup += ", Hypercorn" if m.get("http") == "hypercorn" else ""
        setup += f", threads {m['threads']}" if m["threads"] != "default" else ""
        workers_idle = " / ".join(f"{w:.0f}" for w in m["idle"]["workers"])
        workers_loaded = " / ".join(f"{w:.0f}" for w in m["loaded"].get("workers", []))
        supervisor = [m["idle"]["supervisor"], m["loaded"].get("supervisor", float("nan"))]
        rows.append([setup, *supervisor, workers_idle, workers_loaded])
    _table(
        ["server", "supervisor idle", "supervisor loaded", "workers idle", "workers loaded"], rows
    )


def _spread(values: list[float]) -> list[Any]:
    if not values:
        return ["n/a", "n/a", "n/a"]
    return [statistics.median(values), min(values), max(values)]


def _start_recovery(results: dict[str, Any]) -> None:
    cold, rec = results["cold_start"], results["recovery"]
    spare = results.get("recovery_warm_spare", [])
    print(f"Start-up and recovery ({len(cold)} cold starts, {len(rec)} kills; seconds, MiB)\n")
    rows = [
        ("cold start: process start to first prediction (s)", [c["cold_start_s"] for c in cold]),
        ("  of which: listeners open (s)", [c["listening_s"] for c in cold]),
        ("supervisor RSS idle, default config (MiB)", [c["supervisor_rss_mb"] for c in cold]),
        ("worker RSS idle, iris (MiB)", [c["worker_rss_mb"] for c in cold]),
        ("kill -9 under load (c=8) to next success (s)", _next(rec)),
        ("requests failed by the kill", [r["failed_requests"] for r in rec]),
        ("with a warm spare: kill -9 to next success (s)", _next(spare)),
        ("with a warm spare: requests failed", [r["failed_requests"] for r in spare]),
    ]
    _table(["metric", "median", "min", "max"], [[name, *_spread(v)] for name, v in rows])


def _next(rec: list[dict[str, Any]]) -> list[float]:
    return [r["next_success_s"] for r in rec if r["next_success_s"] is not None]


def _find(
    results: dict[str, Any],
    model: str,
    workers: int,
    c: int,
    batch: int = 1,
    threads: str = "default",
    http: str = "lean",
) -> dict:
    """The load row of that setup (``threads``: the workers' OMP_NUM_THREADS)."""
    for r in results["load"]:
        setup = (r["model"], r["workers"], r["concurrency"], r.get("batch_size", 1), r["threads"])
        if setup == (model, workers, c, batch, threads) and r.get("http", "lean") == http:
            return r
    raise KeyError((model, workers, c, batch))


def targets(results: dict[str, Any]) -> list[list[Any]]:
    """Each target of issue 5: what it asks, what was measured, whether it is met."""
    best = max(limit(results, k)["rows_per_s"] for k in MLP_B8_LIMITS)
    batched = _find(results, "mlp", 1, 32, 8)["rps"]
    one_thread = _find(results, "mlp", 1, 32, 8, threads="1")["rps"]
    tiny = _find(results, "tiny", 2, 32)["rps"]
    forward_ms = limit(results, "tiny_b1_forward")["per_call_ms"]
    over = [_find(results, "tiny", w, 1)["p50_ms"] - forward_ms for w in (1, 2)]
    cold = statistics.median(c["cold_start_s"] for c in results["cold_start"])
    mb = statistics.median(c["supervisor_rss_mb"] for c in results["cold_start"]) * 1.048576
    nxt = _next(results["recovery"])
    rec = statistics.median(nxt) if nxt else float("inf")
    kills = results["recovery"] + results.get("recovery_warm_spare", [])
    failed = max(r["failed_requests"] for r in kills)
    spare = _next(results.get("recovery_warm_spare", []))
    spare_s = statistics.median(spare) if spare else float("inf")
    return [
        [
            "MLP batched rows/s vs in-process batch 8",
            f">= {BATCHED_SHARE:.0%}",
            f"{batched:,.0f} / {best:,.0f} = {batched / best:.0%}",
            batched >= BATCHED_SHARE * best,
        ],
        [
            "  the same, workers at 1 torch thread (OMP_NUM_THREADS=1)",
            f">= {BATCHED_SHARE:.0%}",
            f"{one_thread:,.0f} / {best:,.0f} = {one_thread / best:.0%}",
            one_thread >= BATCHED_SHARE * best,
        ],
        ["tiny, 2 workers, c=32", f">= {TINY_RPS:,.0f} req/s", f"{tiny:,.0f}", tiny >= TINY_RPS],
        [
            "tiny c=1 p50 over in-process forward (1 / 2 workers)",
            f"<= {TINY_P50_OVER_MS} ms",
            f"{over[0]:.2f} / {over[1]:.2f} ms",
            max(over) <= TINY_P50_OVER_MS,
        ],
        ["cold start to first prediction", f"<= {COLD_START_S} s", f"{cold:.2f} s", cold <= 2.0],
        ["supervisor idle RSS", f"<= {SUPERVISOR_RSS_MB:.0f} MB", f"{mb:.1f} MB", mb <= 60.0],
        ["kill -9 to next success (restart)", f"<= {RECOVERY_S} s", f"{rec:.2f} s", rec <= 2.0],
        ["only in-flight requests fail (batch 1: 1; every kill)", "<= 1", f"{failed}", failed <= 1],
        [
            "warm spare: kill -9 to next success",
            f"<= {SPARE_RECOVERY_S} s",
            f"{spare_s:.3f} s",
            spare_s <= SPARE_RECOVERY_S,
        ],
    ]


def print_report(results: dict[str, Any]) -> None:
    """All the tables, then the targets."""
    m = results["machine"]
    print(
        f"\nMachine: {m['nproc']} CPUs ({m['cpu']}), {m['ram_gib']} GiB RAM, Python {m['python']}"
    )
    print(f"Command: {results['command']}   (took {results.get('total_s', 0):.0f} s)\n")
    _inprocess(results)
    _ceiling(results)
    _load(results)
    _memory(results)
    _start_recovery(results)
    print("Targets of issue 5\n")
    _table(
        ["target", "needed", "measured", "met"],
        [[*row[:3], "yes" if row[3] else "NO"] for row in targets(results)],
    )
    for name, found in results.get("profile", {}).items():
        print(f"Profile of the {name} (py-spy, tiny, 2 workers, c=32): {found['file']}")
        shares = ", ".join(f"{k} {v}%" for k, v in found["self_by_package_pct"].items())
        print(f"  self time by package: {shares}")
        if name == "supervisor":
            stages = ", ".join(f"{k} {v}%" for k, v in found["stages_pct"].items())
            print(f"  stages: {stages}")
    print(f"Server processes left: {results['leftover_pids'] or 'none'}")
