"""Every benchmark scenario of the server, in one command, printed as tables.

Run: python bench/run.py [--quick] [--out results.json] [--profile DIR]
                         [--repeats N] [--duration S]

Scenarios (each load figure is the median of ``--repeats`` runs of ``--duration``
seconds after a warm-up; load comes from bench/loadgen.py on this same machine,
against 127.0.0.1 only; each load scenario waits, a bounded while, for the shared
machine to be quiet, and reports what other processes used meanwhile):

- the physical limit: the models called in this machine's Python in a plain
  loop (bench/models.py baseline), batch 1 and 8;
- the load generator's own ceiling against a trivial server, and the HTTP
  stack's: a bare ASGI app and a one-route Quart-Trio app on Hypercorn;
- tiny model (Linear 16 to 4) at concurrency 1, 8, 32 with 1 and 2 workers;
- MLP (14.7 M parameters) at concurrency 32, batch size 1 and dynamic batching
  (batch 8, ``--max-batch-delay`` 5 ms), in rows/s;
- cold start of ``python -m supervisor serve`` (default config, token auth on):
  process start to the first successful prediction (as bench/startup_recovery.py);
- kill -9 of the only serving worker under load (concurrency 8), without and with
  a warm spare: time to the next success answered by another worker, and
  requests failed;
- idle and loaded (peak under concurrency 32) RSS of the supervisor and workers.

Load scenarios run ``serve --disable-token-auth``. Servers are child processes
stopped with SIGTERM; the run ends by checking that none of their processes is
left. ``--profile DIR`` adds py-spy profiles (``--gil``) of the supervisor and of
a worker under the tiny model at concurrency 32 (2 workers), taken apart from
the timed runs (py-spy slows the process it samples).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import loadgen
import models
import psutil
import servers
import trio
from report import print_report

BENCH = Path(__file__).resolve().parent
IRIS = b"[5.1, 3.5, 1.4, 0.2]"


@dataclasses.dataclass(frozen=True)
class Plan:
    """How long and how often each scenario runs."""

    duration: float = 4.0
    warmup: float = 0.5
    repeats: int = 3
    baseline_seconds: float = 1.0
    ceiling_seconds: float = 3.0
    cold_runs: int = 3
    recovery_runs: int = 3
    recovery_seconds: float = 4.0  # of load after the kill
    max_requests: int = 200_000
    batch_delay: float = 0.005
    quiet_wait: float = 5.0  # at most, before each load scenario

    @classmethod
    def quick(cls) -> Plan:
        return cls(1.5, 0.3, 1, 0.5, 1.0, 1, 1, 3.0, quiet_wait=0.0)


def _child_json(*args: str) -> Any:
    """Run ``bench/models.py`` with ``args``; its stdout is JSON."""
    command = [sys.executable, str(BENCH / "models.py"), *args]
    done = subprocess.run(command, capture_output=True, check=True, timeout=600)
    return json.loads(done.stdout)


def machine() -> dict[str, Any]:
    """What the figures were taken on."""
    with open("/proc/cpuinfo") as handle:
        names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": names[0] if names else platform.processor(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _median_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the numeric fields over the repeats; errors summed."""
    out: dict[str, Any] = {"repeats": len(runs)}
    for key, value in runs[0].items():
        if isinstance(value, int | float):
            out[key] = statistics.median(run[key] for run in runs)
    errors: dict[str, int] = {}
    for run in runs:
        for status, count in run["errors"].items():
            errors[status] = errors.get(status, 0) + count
    out["errors"] = errors
    return out


def _load_once(server: servers.Server, spec: loadgen.LoadSpec, peak: dict[str, Any]) -> dict:
    """One load run, with CPU accounting of every process and the RSS peak sampled alongside."""
    pids = [server.proc.pid] + [w.pid for w in server.workers()]

    async def sample() -> None:
        while True:
            rss = server.rss_mb()
            peak["supervisor"] = max(peak.get("supervisor", 0.0), rss["supervisor"])
            workers = rss["workers"]
            old = peak.get("workers", [0.0] * len(workers))
            peak["workers"] = [max(a, b) for a, b in zip(old, workers, strict=False)] or workers
            await trio.sleep(0.25)

    before = servers.Usage.now(pids)
    result = loadgen.measure(spec, during=sample)
    after = servers.Usage.now(pids)
    summary = result.summary()
    return {**summary, **servers.usage(before, after, pids[0], len(result.events))}


def load(server: servers.Server, model: str, concurrency: int, plan: Plan, peak: dict) -> dict:
    """A load scenario: ``plan.repeats`` runs at ``concurrency``, medians."""
    spec = loadgen.LoadSpec(
        f"{server.inference}/predictions/{model}",
        models.body(model),
        concurrency=concurrency,
        duration=plan.duration,
        warmup=plan.warmup,
        max_requests=plan.max_requests,
    )
    batches0 = server.batch_counts(model)
    runs = [_load_once(server, spec, peak) for _ in range(plan.repeats)]
    batches1 = server.batch_counts(model)
    result = _median_runs(runs)
    result["mean_batch"] = (batches1[0] - batches0[0]) / max(batches1[1] - batches0[1], 1)
    return result


def idle_rss(server: servers.Server, model: str) -> dict[str, Any]:
    """RSS once the server has answered a few requests and then sat idle for 1 s."""
    with httpx.Client(timeout=30) as client:
        for _ in range(5):
            client.post(f"{server.inference}/predictions/{model}", content=models.body(model))
    time.sleep(1.0)
    return server.rss_mb()


ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # wins over the server's share (cores / workers)


def serve_scenarios(specs: dict[str, str], root: str, plan: Plan) -> tuple[list, list]:
    """The load scenarios; returns (rows of the load table, rows of the memory table)."""
    batched = {"batch_size": 8, "max_batch_delay": plan.batch_delay}
    hypercorn = os.path.join(root, "hypercorn.toml")
    with open(hypercorn, "w") as handle:
        handle.write("[server]\nlean_http = false\n")
    setups = [
        ("tiny", {"workers": 1}, (1, 8, 32), {}, "lean"),
        ("tiny", {"workers": 2}, (1, 8, 32), {}, "lean"),
        ("tiny", {"workers": 2}, (1, 32), {}, "hypercorn"),
        ("tiny", {"workers": 2, **batched}, (32,), {}, "lean"),
        ("mlp", {"workers": 1}, (32,), {}, "lean"),
        ("mlp", {"workers": 1, **batched}, (32,), {}, "lean"),
        ("mlp", {"workers": 1, **batched}, (32,), ONE_THREAD, "lean"),
    ]
    rows, memory = [], []
    for model, flags, levels, env, http in setups:
        ready = {model: flags["workers"]}
        setup = {"model": model, **flags, "threads": env.get("OMP_NUM_THREADS", "default")}
        setup["http"] = http
        extra = {"config": hypercorn} if http == "hypercorn" else {}
        with servers.running([specs[model]], root, ready=ready, env=env, **flags, **extra) as srv:
            idle, peak = idle_rss(srv, model), {}
            for concurrency in levels:
                busy = servers.wait_quiet(within=plan.quiet_wait)
                result = load(srv, model, concurrency, plan, peak)
                rows.append(
                    {**setup, "concurrency": concurrency, "busy_before_pct": busy, **result}
                )
                print(_progress(rows[-1]), file=sys.stderr, flush=True)
            memory.append({**setup, "idle": idle, "loaded": peak})
    return rows, memory


def _progress(row: dict[str, Any]) -> str:
    return (
        f"  {row['model']} w={row['workers']} b={row.get('batch_size', 1)} t={row['threads']} "
        f"{row.get('http', 'lean')} "
        f"c={row['concurrency']}: {row['rps']:.0f}/s p50 {row['p50_ms']:.2f} ms"
    )


def cold_start(workdir: str, *, env: dict[str, str] | None = None) -> dict[str, float]:
    """Process start to first success, with the default config (built-in iris, token auth).

    The same measurement as bench/startup_recovery.py, on servers.start (``env`` is
    added to the server's environment).
    """
    args = [sys.executable, "-m", "supervisor", "serve"]
    args += [f"--{k}-address=127.0.0.1:0" for k in ("inference", "management", "metrics")]
    t0 = time.perf_counter()
    srv = servers.start(args, workdir, env=env)
    try:
        listening = time.perf_counter() - t0
        with open(os.path.join(workdir, "key_file.json")) as handle:
            key = json.load(handle)["inference"]["key"]
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
        with httpx.Client(timeout=30, headers=headers) as client:
            url, deadline = f"{srv.inference}/predictions/iris", t0 + 60
            while client.post(url, content=IRIS).status_code != loadgen.OK:
                if time.perf_counter() > deadline:
                    raise TimeoutError("no successful prediction within 60 s")
            cold = time.perf_counter() - t0
        time.sleep(1.0)  # let both processes settle before reading RSS
        rss = srv.rss_mb()
        return {
            "cold_start_s": cold,
            "listening_s": listening,
            "supervisor_rss_mb": rss["supervisor"],
            "worker_rss_mb": rss["workers"][0],
        }
    finally:
        servers.stop(srv.proc)


def recovery(spec_tiny: str, root: str, plan: Plan, *, warm_spare: bool) -> dict[str, Any]:
    """kill -9 of the only serving worker under load (concurrency 8); a fresh server per run.

    With ``warm_spare`` the model keeps a standby worker (``warm_spare = true`` in a
    TOML config), and the load starts once the spare is ready.
    """
    flags: dict[str, Any] = {"workers": 1}
    if warm_spare:
        config = Path(root) / "warm_spare.toml"
        config.write_text("[defaults]\nwarm_spare = true\n")
        flags["config"] = config
    with servers.running([spec_tiny], root, ready={"tiny": 1}, **flags) as srv:
        if warm_spare:
            servers.wait_spare(srv, "tiny")
        victim = srv.serving_pids("tiny")[0]
        spec = loadgen.LoadSpec(
            f"{srv.inference}/predictions/tiny",
            models.body("tiny"),
            concurrency=8,
            duration=1.0 + plan.recovery_seconds,
            warmup=0.0,
            keep_bodies=True,
        )
        killed: list[float] = []

        async def kill_after_a_second() -> None:
            await trio.sleep(1.0)
            killed.append(time.perf_counter())
            os.kill(victim, signal.SIGKILL)
            await trio.sleep_forever()

        result = loadgen.measure(spec, during=kill_after_a_second)
        srv.workers()  # remember the new incarnations for the leftover check
    return _recovery_figures(result, killed[0], victim)


def _recovery_figures(result: loadgen.Result, killed: float, old_pid: int) -> dict[str, Any]:
    after = [e for e in result.events if e.done >= killed]
    nxt = next(
        (e for e in after if e.outcome == loadgen.OK and json.loads(e.body)["pid"] != old_pid),
        None,
    )
    failed = [e for e in result.events if e.outcome != loadgen.OK]
    statuses: dict[str, int] = {}
    for event in failed:
        statuses[str(event.outcome)] = statuses.get(str(event.outcome), 0) + 1
    return {
        "next_success_s": None if nxt is None else nxt.done - killed,
        "failed_requests": len(failed),
        "failed_by_status": statuses,
        "ok_before_kill": sum(e.outcome == loadgen.OK and e.done < killed for e in result.events),
    }


def profile(specs: dict[str, str], root: str, plan: Plan, out: Path) -> dict[str, Any]:
    """py-spy on the supervisor, then on one worker: tiny model, 2 workers, concurrency 32.

    The supervisor is sampled with ``--gil``, which keeps the samples where it runs
    Python code: time blocked in a system call, or runnable but waiting for a CPU,
    would otherwise be charged to the frame that made the call (a socket send,
    mostly). A worker holds the GIL too briefly for that; it is sampled plainly and
    its two waits (for a batch, in ``recv``) are left out of its summary.
    """
    import profile_summary

    out.mkdir(parents=True, exist_ok=True)
    seconds = int(max(plan.duration, 5.0))
    found: dict[str, Any] = {}
    with servers.running([specs["tiny"]], root, ready={"tiny": 2}, workers=2) as srv:
        targets = {"supervisor": srv.proc.pid, "worker": srv.workers()[0].pid}
        for name, pid in targets.items():
            raw = out / f"{name}.txt"
            spy = [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid)]
            spy += ["--duration", str(seconds), "--rate", "200", "--format", "raw"]
            spy += ["--output", str(raw), *(["--gil"] if name == "supervisor" else [])]
            recorder = subprocess.Popen(spy, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            spec = loadgen.LoadSpec(
                f"{srv.inference}/predictions/tiny",
                models.body("tiny"),
                concurrency=32,
                duration=seconds + 1.0,
                warmup=0.0,
            )
            rps = loadgen.measure(spec).summary()["rps"]
            recorder.wait(timeout=60)
            waiting = profile_summary.WAITING if name == "worker" else ()
            found[name] = {"rps_while_profiling": rps, "file": str(raw)}
            found[name].update(profile_summary.summarise(raw, waiting=waiting))
    return found


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every scenario; the in-process limit is taken first and again last.

    The machine is shared: taking the limit twice and using the better of the two
    keeps a noisy moment from lowering the bar the server is compared against.
    """
    plan = Plan.quick() if args.quick else Plan()
    for name in ("repeats", "duration"):
        if getattr(args, name) is not None:
            plan = dataclasses.replace(plan, **{name: getattr(args, name)})
    results: dict[str, Any] = {"machine": machine(), "command": " ".join(sys.argv), "plan": {}}
    results["plan"] = dataclasses.asdict(plan)
    with tempfile.TemporaryDirectory(prefix="trio-supervisor-bench-") as root:
        specs = _child_json("build", root)
        print("in-process baseline ...", file=sys.stderr, flush=True)
        results["inprocess"] = _child_json(
            "baseline", root, "--seconds", str(plan.baseline_seconds)
        )
        print("load generator ceiling ...", file=sys.stderr, flush=True)
        results["loadgen_ceiling"] = loadgen.ceiling(duration=plan.ceiling_seconds)
        results["http_stack_ceiling"] = {
            server: loadgen.ceiling(server=server, clients=("raw",), duration=plan.ceiling_seconds)
            for server in ("asgi", "quart")
        }
        print("load scenarios ...", file=sys.stderr, flush=True)
        results["load"], results["memory"] = serve_scenarios(specs, root, plan)
        print("cold start and recovery ...", file=sys.stderr, flush=True)
        results["cold_start"] = [_in_tempdir(cold_start) for _ in range(plan.cold_runs)]
        for key, spare in (("recovery", False), ("recovery_warm_spare", True)):
            runs = range(plan.recovery_runs)
            results[key] = [recovery(specs["tiny"], root, plan, warm_spare=spare) for _ in runs]
        print("in-process baseline again ...", file=sys.stderr, flush=True)
        results["inprocess_end"] = _child_json(
            "baseline", root, "--seconds", str(plan.baseline_seconds)
        )
        if args.profile:
            print("profile ...", file=sys.stderr, flush=True)
            results["profile"] = profile(specs, root, plan, Path(args.profile))
    results["leftover_pids"] = servers.leftovers()
    return results


def _in_tempdir(measure: Any) -> Any:
    with tempfile.TemporaryDirectory(prefix="trio-supervisor-cold-") as workdir:
        return measure(workdir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, one repeat")
    parser.add_argument("--out", metavar="FILE", help="write every figure as JSON here")
    parser.add_argument("--profile", metavar="DIR", help="also profile with py-spy into DIR")
    parser.add_argument("--repeats", type=int, help="runs per load scenario (default 3)")
    parser.add_argument("--duration", type=float, help="seconds per load run (default 4)")
    args = parser.parse_args()
    started = time.perf_counter()
    results = run(args)
    results["total_s"] = time.perf_counter() - started
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    print_report(results)
    if results["leftover_pids"]:
        sys.exit(f"server processes left running: {results['leftover_pids']}")


if __name__ == "__main__":
    main()
