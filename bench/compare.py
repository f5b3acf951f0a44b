"""Compare the prediction path of two revisions in one run, alternating them.

Run: python bench/compare.py BEFORE_REV [AFTER_REV|WORKTREE] [--rounds N]
                             [--duration S] [--quick] [--out FILE]

For instance ``python bench/compare.py HEAD~1`` compares the previous commit with
the working tree as it is (uncommitted edits included: its src/ is copied at the
start, so edits saved during the run do not count). Each revision given is
checked out with ``git worktree add --detach`` into a temporary directory (removed
at the end, also on an error or Ctrl-C); the server of each side is
``python -m supervisor serve`` run by this same Python with ``PYTHONPATH`` set to
that side's ``src`` (its workers inherit it: both are checked on every server).
The benchmark code itself (bench/) is this checkout's, for both sides.

The machine is shared and noisy, so figures taken minutes apart are not
comparable. Here each scenario runs before, after, before, after, ...
(``--rounds`` of each, default 3), every run on a fresh server, so both sides
see the same noise; each side is warmed up once first (a cold start, and a server
start with a few requests: its bytecode compiled, its files in the page cache),
and each load run has its own warm-up. Scenarios (load from bench/loadgen.py against 127.0.0.1,
``serve --disable-token-auth``, models from bench/models.py):

1. tiny model, 2 workers, concurrency 32: requests/s;
2. tiny model, 1 worker, concurrency 1: p50 latency (ms) and requests/s;
3. MLP, batch 8 (max batch delay 5 ms), 1 worker, concurrency 32: rows/s;
4. the supervisor's idle RSS (MB), on scenario 2's server before its load;
5. cold start to the first prediction (s), as bench/run.py measures it (default
   config, token auth on).

It prints one Markdown table: the median of each side, after/before, the spread
of each side ((max - min) / median) and whether the two sides' ranges are apart.
``--quick`` makes the runs short (a smoke test, not a measurement). Servers are
stopped with SIGTERM and the run fails if any of their processes is left.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import run
import servers
from report import _table

REPO = Path(__file__).resolve().parent.parent
WORKTREE = "WORKTREE"
SIDES = ("before", "after")


@dataclasses.dataclass(frozen=True)
class Side:
    """One revision under test: where its source tree is, and its servers' directory."""

    label: str  # "before" or "after"
    rev: str  # as given on the command line
    commit: str  # the full hash, or WORKTREE
    tree: Path
    workdir: Path
    about: str  # for the report

    @property
    def src(self) -> str:
        return str(self.tree / "src")

    @property
    def env(self) -> dict[str, str]:
        """The server's extra environment: this side's ``src`` first on ``sys.path``."""
        rest = os.environ.get("PYTHONPATH")
        return {"PYTHONPATH": os.pathsep.join([self.src, *([rest] if rest else [])])}


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    key: str
    higher_is_better: bool


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    measure: Callable[[Side, dict[str, str], run.Plan], dict[str, Any]]
    metrics: tuple[Metric, ...]


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def _side(label: str, rev: str, root: Path, stack: contextlib.ExitStack) -> Side:
    """A detached worktree of ``rev`` (removed on exit), or a copy of the working tree's src/.

    The working tree is copied once, at the start (untracked files included), so
    that edits saved while the comparison runs do not change one side halfway.
    """
    workdir = root / f"{label}-run"
    workdir.mkdir()
    if rev == WORKTREE:
        tree = root / label
        ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
        changed = len(_git("status", "--porcelain", "--", "src").splitlines())
        shutil.copytree(REPO / "src", tree / "src", ignore=ignore)
        about = f"the working tree's src/ as at the start ({changed} path(s) differ from HEAD)"
        return Side(label, rev, WORKTREE, tree, workdir, about)
    commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    tree = root / label
    stack.callback(_remove_worktree, tree)
    _git("worktree", "add", "--detach", str(tree), commit)
    about = f"{rev} = " + _git("log", "-1", "--format=%h %s", commit)[:90]
    return Side(label, rev, commit, tree, workdir, about)


def _remove_worktree(tree: Path) -> None:
    quiet = {"cwd": REPO, "check": False, "capture_output": True}
    subprocess.run(["git", "worktree", "remove", "--force", str(tree)], **quiet)
    subprocess.run(["git", "worktree", "prune"], **quiet)


def check_imports(side: Side) -> None:
    """Fail unless a server of this side would import ``supervisor`` and ``handlers`` from it."""
    code = "import supervisor, handlers; print(supervisor.__file__); print(handlers.__file__)"
    env = {**os.environ, **side.env}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=side.workdir, env=env, capture_output=True, text=True
    )
    files = done.stdout.split()
    if done.returncode or not all(f.startswith(side.src + os.sep) for f in files):
        raise RuntimeError(f"{side.label}: imports resolve to {files or done.stderr}")


def check_environment(server: servers.Server, side: Side) -> None:
    """Fail unless the supervisor and each worker run with this side's ``PYTHONPATH``."""
    for proc in [psutil.Process(server.proc.pid), *server.workers()]:
        found = proc.environ().get("PYTHONPATH", "")
        if found.split(os.pathsep)[0] != side.src:
            raise RuntimeError(f"{side.label}: pid {proc.pid} has PYTHONPATH={found!r}")


@contextlib.contextmanager
def serving(side: Side, spec: str, model: str, **flags: object) -> Iterator[servers.Server]:
    """A ready server of this side (``flags`` as for servers.running), its environment checked."""
    workers = int(flags.get("workers", 1))
    with servers.running(
        [spec], str(side.workdir), ready={model: workers}, env=side.env, **flags
    ) as server:
        check_environment(server, side)
        yield server


def _load(server: servers.Server, model: str, concurrency: int, plan: run.Plan) -> dict:
    servers.wait_quiet(within=plan.quiet_wait)
    return run.load(server, model, concurrency, plan, {})


def tiny_c32(side: Side, specs: dict[str, str], plan: run.Plan) -> dict[str, Any]:
    with serving(side, specs["tiny"], "tiny", workers=2) as server:
        return _load(server, "tiny", 32, plan)


def tiny_c1(side: Side, specs: dict[str, str], plan: run.Plan) -> dict[str, Any]:
    """Also the supervisor's idle RSS, before the load (run.idle_rss: a few requests, 1 s idle)."""
    with serving(side, specs["tiny"], "tiny", workers=1) as server:
        rss_mb = run.idle_rss(server, "tiny")["supervisor"] * 1.048576  # MiB to MB
        return {**_load(server, "tiny", 1, plan), "rss_mb": rss_mb}


def mlp_batched(side: Side, specs: dict[str, str], plan: run.Plan) -> dict[str, Any]:
    batched = {"workers": 1, "batch_size": 8, "max_batch_delay": plan.batch_delay}
    with serving(side, specs["mlp"], "mlp", **batched) as server:
        return _load(server, "mlp", 32, plan)  # one request is one row


def cold(side: Side, specs: dict[str, str], plan: run.Plan) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="trio-supervisor-cold-") as workdir:
        return run.cold_start(workdir, env=side.env)


SCENARIOS = (
    Scenario("tiny, 2 workers, c=32", tiny_c32, (Metric("req/s", "rps", True),)),
    Scenario(
        "tiny, 1 worker, c=1",
        tiny_c1,
        (
            Metric("p50 ms", "p50_ms", False),
            Metric("req/s", "rps", True),
            Metric("supervisor idle RSS MB", "rss_mb", False),
        ),
    ),
    Scenario("MLP, batch 8 (5 ms), c=32", mlp_batched, (Metric("rows/s", "rps", True),)),
    Scenario("cold start", cold, (Metric("to first prediction s", "cold_start_s", False),)),
)


def warm_up(side: Side, specs: dict[str, str], plan: run.Plan) -> None:
    """Check the imports, then a cold start and a tiny server, untimed: bytecode compiled,
    files cached, the workers' environment checked."""
    check_imports(side)
    cold(side, specs, plan)
    with serving(side, specs["tiny"], "tiny", workers=1) as server:
        run.idle_rss(server, "tiny")


def compare(sides: list[Side], specs: dict[str, str], plan: run.Plan, rounds: int) -> dict:
    """Every scenario, its sides alternating; returns each run's figures by scenario and side."""
    found: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for scenario in SCENARIOS:
        runs = found[scenario.name] = {side.label: [] for side in sides}
        for n in range(rounds):
            for side in sides:
                figures = scenario.measure(side, specs, plan)
                runs[side.label].append(figures)
                print(_progress(scenario, side, n, figures), file=sys.stderr, flush=True)
    return found


def _progress(scenario: Scenario, side: Side, n: int, figures: dict[str, Any]) -> str:
    values = ", ".join(f"{m.name} {figures[m.key]:.4g}" for m in scenario.metrics)
    errors = figures.get("errors") or {}
    return f"  {scenario.name} [{side.label} {n + 1}]: {values}" + (
        f", errors {errors}" if errors else ""
    )


def _spread(values: list[float]) -> str:
    median = statistics.median(values)
    if len(values) < 2 or not median:
        return "n/a"
    return f"{100 * (max(values) - min(values)) / median:.1f}%"


def _verdict(metric: Metric, before: list[float], after: list[float]) -> str:
    """``better``/``worse`` when the two sides' ranges are apart, else ``within spread``."""
    if min(len(before), len(after)) < 2:
        return "n/a (1 round)"
    if max(before) < min(after):
        return "better" if metric.higher_is_better else "worse"
    if max(after) < min(before):
        return "worse" if metric.higher_is_better else "better"
    return "within spread"


def table_rows(found: dict[str, dict[str, list[dict[str, Any]]]]) -> list[list[Any]]:
    rows = []
    for scenario in SCENARIOS:
        runs = found.get(scenario.name)
        if not runs:
            continue
        for metric in scenario.metrics:
            before = [r[metric.key] for r in runs["before"]]
            after = [r[metric.key] for r in runs["after"]]
            b, a = statistics.median(before), statistics.median(after)
            spread = f"{_spread(before)} / {_spread(after)}"
            verdict = _verdict(metric, before, after)
            rows.append([f"{scenario.name}: {metric.name}", b, a, f"{a / b:.3f}", spread, verdict])
    return rows


def print_table(sides: list[Side], found: dict, plan: run.Plan, rounds: int, took: float) -> None:
    for side in sides:
        print(f"{side.label}: {side.about}")
    print(
        f"{rounds} round(s) per side, alternating; load runs of {plan.duration:g} s after "
        f"{plan.warmup:g} s warm-up; medians; took {took:.0f} s\n"
    )
    header = ["scenario", "before", "after", "after/before", "spread before / after", "apart?"]
    _table(header, table_rows(found))
    errors = {
        f"{name} [{label}]": [r["errors"] for r in runs if r.get("errors")]
        for name, by_side in found.items()
        for label, runs in by_side.items()
    }
    for where, seen in errors.items():
        if seen:
            print(f"errors in {where}: {seen}")
    other = [
        r["other_cpu_pct"]
        for by_side in found.values()
        for runs in by_side.values()
        for r in runs
        if "other_cpu_pct" in r
    ]
    if other:
        print(
            f"Other processes' CPU during the load runs: median {statistics.median(other):.0f}%"
            f" of one core (max {max(other):.0f}%)"
        )


def plan_of(args: argparse.Namespace) -> run.Plan:
    """bench/run.py's plan (one repeat per server: the rounds are the repeats)."""
    plan = run.Plan.quick() if args.quick else run.Plan()
    plan = dataclasses.replace(plan, repeats=1)
    if args.duration is not None:
        plan = dataclasses.replace(plan, duration=args.duration)
    return plan


def _terminated(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds: servers stopped, worktrees removed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", metavar="BEFORE_REV")
    parser.add_argument("after", metavar="AFTER_REV", nargs="?", default=WORKTREE)
    parser.add_argument("--rounds", type=int, default=3, help="runs per side per scenario")
    parser.add_argument("--duration", type=float, help="seconds per load run (default 4)")
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    parser.add_argument("--out", metavar="FILE", help="write every run's figures as JSON here")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    signal.signal(signal.SIGTERM, _terminated)
    plan, started = plan_of(args), time.perf_counter()
    results: dict[str, Any] = {"machine": run.machine(), "plan": dataclasses.asdict(plan)}
    try:
        _compare_in_tmp(args, plan, results)
    finally:  # also after an error or Ctrl-C
        results["leftover_pids"] = servers.leftovers()
        print(f"Server processes left: {results['leftover_pids'] or 'none'}")
    results["total_s"] = time.perf_counter() - started
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    if results["leftover_pids"]:
        sys.exit(f"server processes left running: {results['leftover_pids']}")


def _compare_in_tmp(args: argparse.Namespace, plan: run.Plan, results: dict[str, Any]) -> None:
    """Check out the sides, build the models, warm up, compare, print; then remove it all."""
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="trio-supervisor-compare-") as tmp,
        contextlib.ExitStack() as stack,  # exits first: the worktrees go before their directory
    ):
        root = Path(tmp)
        revs = zip(SIDES, (args.before, args.after), strict=True)
        sides = [_side(label, rev, root, stack) for label, rev in revs]
        specs = run._child_json("build", str(root / "models"))
        for side in sides:
            warm_up(side, specs, plan)
        results["runs"] = compare(sides, specs, plan, args.rounds)
        results["sides"] = {s.label: {"rev": s.rev, "commit": s.commit} for s in sides}
        print_table(sides, results["runs"], plan, args.rounds, time.perf_counter() - started)


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` is Ctrl-C or SIGTERM (a trio load run wraps it in a group)."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(KeyboardInterrupt) is not None
    return isinstance(exc, KeyboardInterrupt)


if __name__ == "__main__":
    try:
        main()
    except BaseException as exc:
        if not _interrupted(exc):
            raise
        sys.exit("interrupted (servers stopped, worktrees removed)")
