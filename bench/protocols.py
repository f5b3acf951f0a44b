"""Every protocol on one server: /predictions, OIP v2 REST JSON and binary, OIP and TorchServe gRPC.

Run: python bench/protocols.py [--rounds N] [--duration S] [--quick] [--out FILE]
                                [--profile DIR [--py-spy PATH]]

The tiny model of bench/models.py (``Linear(16, 4)``, the same weights and
``handle`` as bench/run.py's figure), plus the tensor contract
(``infer_tensors``) so OIP requests reach it as a tensor, and a ``handle`` that
parses the bytes TorchServe's gRPC ``Predictions`` sends; 2 workers,
``serve --disable-token-auth``, gRPC on free ports of 127.0.0.1. Each round runs
32 closed-loop clients of each protocol in turn on the same server, ``--rounds``
times (default 3), and the table gives the medians:

- ``/predictions``: bench/loadgen.py, the JSON list body (today's figure);
- OIP REST JSON and binary: bench/loadgen.py on ``/v2/models/tiny/infer``, the
  binary one with ``Inference-Header-Content-Length`` and a binary output;
- OIP gRPC (``ModelInfer``, raw contents) and TorchServe gRPC (``Predictions``,
  the JSON body): grpcio's asyncio client with the generated stubs, one channel
  per client (as the HTTP clients have one connection each);
- KServe v1 (no target): ``:predict`` with one instance, the same JSON list.

Ratios are to ``/predictions`` (targets: OIP REST >= 0.9, gRPC >= 0.8). Then the
supervisor's idle RSS with gRPC on and with ``--no-grpc`` (a fresh server each,
after 5 requests and 1 s idle). Servers are stopped with SIGTERM and the run
fails if any of their processes is left.

``--profile DIR`` adds one more load run of each protocol, not measured, with
py-spy (``record --gil``, 200 Hz) on the supervisor; the raw profiles go to DIR
and a summary per protocol (bench/profile_summary.py) is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import loadgen
import models
import profile_summary
import run
import servers
from report import _table

from supervisor.grpc.protos import inference_pb2 as ts_pb
from supervisor.grpc.protos import inference_pb2_grpc as ts_grpc
from supervisor.grpc.protos import open_inference_grpc_pb2 as oip_pb
from supervisor.grpc.protos import open_inference_grpc_pb2_grpc as oip_grpc

PROTOCOLS = (
    "/predictions",
    "OIP REST JSON",
    "OIP REST binary",
    "OIP gRPC",
    "TorchServe gRPC",
    "KServe v1",
)
TARGETS = {"OIP REST JSON": 0.9, "OIP REST binary": 0.9, "OIP gRPC": 0.8, "TorchServe gRPC": 0.8}
GRPC_LINE = re.compile(r"listening: gRPC inference (\S+), gRPC management (\S+)")
CONCURRENCY = 32

OIP_HANDLER = '''"""bench_tiny with the tensor contract: OIP v2 requests as one forward pass."""

import json

import torch

from bench_tiny import Bench


class BenchOip(Bench):
    def handle(self, batch, context):
        for row in batch:  # TorchServe's gRPC sends the body as bytes, without a content type
            if isinstance(row.get("body"), (bytes, bytearray)):
                row["body"] = json.loads(row["body"])
        return super().handle(batch, context)

    def infer_tensors(self, requests, context):
        rows = torch.cat([inputs["x"] for inputs in requests])
        with torch.inference_mode():
            out = self.model(rows)
        return [{"y": row.unsqueeze(0)} for row in out]
'''


def row() -> list[float]:
    """The request's 16 inputs (bench/models.py's body)."""
    values: list[float] = json.loads(models.body("tiny"))
    return values


def rest_specs(base: str, plan: run.Plan) -> dict[str, loadgen.LoadSpec]:
    """The HTTP load of each REST protocol."""
    tensor = {"name": "x", "datatype": "FP32", "shape": [1, 16]}
    raw = struct.pack("<16f", *row())
    header = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    ).encode()
    binary = (
        ("Content-Type", "application/octet-stream"),
        ("Inference-Header-Content-Length", str(len(header))),
    )
    common = {
        "concurrency": CONCURRENCY,
        "duration": plan.duration,
        "warmup": plan.warmup,
        "max_requests": plan.max_requests,
    }
    infer = f"{base}/v2/models/tiny/infer"
    oip_json = json.dumps({"inputs": [{**tensor, "data": row()}]}).encode()
    v1 = json.dumps({"instances": [row()]}).encode()
    return {
        "/predictions": loadgen.LoadSpec(f"{base}/predictions/tiny", models.body("tiny"), **common),
        "OIP REST JSON": loadgen.LoadSpec(infer, oip_json, **common),
        "OIP REST binary": loadgen.LoadSpec(infer, header + raw, binary, **common),
        "KServe v1": loadgen.LoadSpec(f"{base}/v1/models/tiny:predict", v1, **common),
    }


def grpc_calls() -> dict[str, tuple[Callable[[grpc.aio.Channel], Any], Any]]:
    """Each gRPC protocol's stub method (given a channel) and its request."""
    tensor = oip_pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 16])
    infer = oip_pb.ModelInferRequest(
        model_name="tiny", inputs=[tensor], raw_input_contents=[struct.pack("<16f", *row())]
    )
    predict = ts_pb.PredictionsRequest(model_name="tiny", input={"body": models.body("tiny")})
    return {
        "OIP gRPC": (lambda ch: oip_grpc.GRPCInferenceServiceStub(ch).ModelInfer, infer),
        "TorchServe gRPC": (lambda ch: ts_grpc.InferenceAPIsServiceStub(ch).Predictions, predict),
    }


async def _grpc_client(target: str, method: Any, request: Any, end: float, events: list) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        call = method(channel)
        while time.perf_counter() < end:
            sent = time.perf_counter()
            try:
                await call(request, timeout=30)
                outcome: int | str = 200
            except grpc.aio.AioRpcError as exc:
                outcome = exc.code().name
            events.append((sent, time.perf_counter(), outcome))


def grpc_load(target: str, protocol: str, plan: run.Plan) -> dict[str, Any]:
    """``CONCURRENCY`` closed-loop gRPC clients for ``warmup + duration`` s; the summary."""
    method, request = grpc_calls()[protocol]
    events: list[tuple[float, float, int | str]] = []

    async def main() -> float:
        started = time.perf_counter()
        end = started + plan.warmup + plan.duration
        clients = [_grpc_client(target, method, request, end, events) for _ in range(CONCURRENCY)]
        await asyncio.gather(*clients)
        return started

    started = asyncio.run(main())
    measured_from, stopped = started + plan.warmup, time.perf_counter()
    window = [e for e in events if e[1] >= measured_from]
    ok = sorted(done - sent for sent, done, outcome in window if outcome == 200)
    seconds = stopped - measured_from
    return {
        "requests": len(window),
        "rps": len(ok) / seconds,
        "p50_ms": loadgen._percentile(ok, 50) * 1e3,
        "p99_ms": loadgen._percentile(ok, 99) * 1e3,
        "errors": dict(Counter(str(e[2]) for e in events if e[2] != 200)),
    }


def measure(server: servers.Server, target: str, protocol: str, plan: run.Plan) -> dict:
    """One load run of ``protocol``, with the supervisor's CPU per request."""
    if protocol in TARGETS and "gRPC" in protocol:
        pids = [server.proc.pid] + [w.pid for w in server.workers()]
        before = servers.Usage.now(pids)
        summary = grpc_load(target, protocol, plan)
        after = servers.Usage.now(pids)
        return {**summary, **servers.usage(before, after, pids[0], summary["requests"])}
    return run._load_once(server, rest_specs(server.inference, plan)[protocol], {})


def profile(server: servers.Server, target: str, plan: run.Plan, out: Path, spy: str) -> dict:
    """One unmeasured load run per protocol with py-spy on the supervisor; summaries."""
    out.mkdir(parents=True, exist_ok=True)
    found = {}
    for protocol in PROTOCOLS:
        raw = out / f"{protocol.replace('/', '').replace(' ', '-')}.txt"
        record = [spy, "record", "--gil", "-r", "200", "--format", "raw", "--nonblocking"]
        record += [
            "-d",
            str(max(1, int(plan.duration))),
            "-p",
            str(server.proc.pid),
            "-o",
            str(raw),
        ]
        with subprocess.Popen(record, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as spy_:
            measure(server, target, protocol, plan)
            spy_.wait(timeout=60)
        found[protocol] = profile_summary.summarise(raw, top=8)
    return found


def build(root: Path) -> str:
    """The tiny model with the tensor contract; its ``--models`` spec."""
    spec = run._child_json("build", str(root / "models"))["tiny"]
    directory = Path(spec.split("@", 1)[1])
    (directory / "bench_tiny_oip.py").write_text(OIP_HANDLER)
    return f"tiny=bench_tiny_oip@{directory}"


@contextlib.contextmanager
def serving(spec: str, root: Path, *, grpc_on: bool) -> Iterator[tuple[servers.Server, str]]:
    """A server with 2 workers of ``spec``; with gRPC on free ports (its inference target)."""
    args = servers.serve_args([spec], workers=2)
    if grpc_on:
        args += ["--grpc-inference-address=127.0.0.1:0", "--grpc-management-address=127.0.0.1:0"]
    else:
        args.append("--no-grpc")
    server = servers.start(args, str(root))
    try:
        servers.wait_ready(server, "tiny", 2)
        target = ""
        if grpc_on:
            deadline = time.perf_counter() + 30
            while not (found := [m for line in server.log if (m := GRPC_LINE.search(line))]):
                if time.perf_counter() > deadline:
                    raise TimeoutError("no gRPC line:\n" + "\n".join(server.log))
                time.sleep(0.05)
            target = found[0].group(1)
        yield server, target
    finally:
        servers.stop(server.proc)


def rows(found: dict[str, list[dict[str, Any]]]) -> list[list[Any]]:
    base = statistics.median(r["rps"] for r in found["/predictions"])
    table = []
    for protocol in PROTOCOLS:
        runs = found[protocol]
        rps = statistics.median(r["rps"] for r in runs)
        target = TARGETS.get(protocol)
        verdict = "" if target is None else ("met" if rps / base >= target else "missed")
        table.append(
            [
                protocol,
                rps,
                statistics.median(r["p50_ms"] for r in runs),
                statistics.median(r["p99_ms"] for r in runs),
                statistics.median(r["supervisor_cpu_us_per_request"] for r in runs),
                f"{rps / base:.3f}",
                f">= {target}" if target else "",
                verdict,
                sum(sum(r["errors"].values()) for r in runs),
            ]
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs per protocol (default 3)")
    parser.add_argument("--duration", type=float, help="seconds per load run (default 4)")
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    parser.add_argument("--out", metavar="FILE", help="write every run's figures as JSON here")
    parser.add_argument("--profile", metavar="DIR", type=Path, help="profile each protocol too")
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy command (--profile)")
    args = parser.parse_args()
    plan = dataclasses.replace(run.Plan.quick() if args.quick else run.Plan(), repeats=1)
    if args.duration is not None:
        plan = dataclasses.replace(plan, duration=args.duration)
    started = time.perf_counter()
    results: dict[str, Any] = {"machine": run.machine(), "plan": dataclasses.asdict(plan)}
    try:
        results.update(_run(plan, args.rounds, args.profile, args.py_spy))
    finally:
        results["leftover_pids"] = servers.leftovers()
    print(
        f"tiny model, 2 workers, c={CONCURRENCY}, one server with gRPC on; {args.rounds} "
        f"round(s) of every protocol in turn; load runs of {plan.duration:g} s after "
        f"{plan.warmup:g} s warm-up; medians; took {time.perf_counter() - started:.0f} s\n"
    )
    header = ["protocol", "req/s", "p50 ms", "p99 ms", "supervisor CPU us/request"]
    _table([*header, "x /predictions", "target", "", "errors"], rows(results["runs"]))
    rss = results["idle_rss_mb"]
    _table(["supervisor idle RSS", "MiB"], [[k, v] for k, v in rss.items()])
    for protocol, summary in results.get("profiles", {}).items():
        print(
            f"{protocol}: {summary['samples']} samples; by package {summary['self_by_package_pct']}"
        )
        print(f"  stages {summary['stages_pct']}")
        print(f"  top self {summary['top_self_pct']}\n")
    print(f"Server processes left: {results['leftover_pids'] or 'none'}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    if results["leftover_pids"]:
        sys.exit(f"server processes left running: {results['leftover_pids']}")


def _run(plan: run.Plan, rounds: int, profiles: Path | None, spy: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="trio-supervisor-protocols-") as tmp:
        root = Path(tmp)
        spec = build(root)
        found: dict[str, list[dict[str, Any]]] = {p: [] for p in PROTOCOLS}
        with serving(spec, root, grpc_on=True) as (server, target):
            for n in range(rounds):
                for protocol in PROTOCOLS:
                    servers.wait_quiet(within=plan.quiet_wait)
                    figures = measure(server, target, protocol, plan)
                    found[protocol].append(figures)
                    errors = figures.get("errors") or {}
                    print(
                        f"  [{protocol} {n + 1}] {figures['rps']:.0f} req/s, p50 "
                        f"{figures['p50_ms']:.2f} ms" + (f", errors {errors}" if errors else ""),
                        file=sys.stderr,
                        flush=True,
                    )
            summaries = profile(server, target, plan, profiles, spy) if profiles else {}
        rss = {}
        for grpc_on in (True, False):
            with serving(spec, root, grpc_on=grpc_on) as (server, _):
                rss[f"gRPC {'on' if grpc_on else 'off'}"] = run.idle_rss(server, "tiny")[
                    "supervisor"
                ]
        return {"runs": found, "idle_rss_mb": rss, "profiles": summaries}


if __name__ == "__main__":
    main()
