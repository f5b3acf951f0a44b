"""What TLS costs the prediction path: the tiny model over http and https, alternating.

Run: python bench/tls.py [--rounds N] [--duration S] [--quick] [--out FILE]

One scenario (bench/compare.py's first): the tiny model (bench/models.py), 2
workers, ``serve --disable-token-auth``, 32 keep-alive clients of
bench/loadgen.py. Each round runs it on a fresh http server, then on a fresh
server whose inference port is ``https://`` (the lean front end in a
``trio.SSLStream``; the certificate and key are made by the ``openssl`` command
at the start, a P-256 key), ``--rounds`` times (default 3), so both schemes see
the same noise of this shared machine. The load generator verifies the
certificate; its connections are kept alive, so a handshake is paid once per
client and the figure is the cost of encrypting and decrypting the requests.

It prints one Markdown table: the median of each scheme, https/http, the spread
of each ((max - min) / median) and whether the two ranges are apart. Servers are
stopped with SIGTERM and the run fails if any of their processes is left.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import loadgen
import models
import run
import servers
from report import _table

SCHEMES = ("http", "https")
METRICS = (
    ("req/s", "rps", True),
    ("p50 ms", "p50_ms", False),
    ("p99 ms", "p99_ms", False),
    ("supervisor CPU us/request", "supervisor_cpu_us_per_request", False),
)


def make_certificate(root: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (mode 0600), by ``openssl``."""
    certificate, key = root / "cert.pem", root / "key.pem"
    command = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    command += ["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
    command += ["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    command += ["-keyout", str(key), "-out", str(certificate)]
    subprocess.run(command, check=True, capture_output=True)
    key.chmod(0o600)
    return certificate, key


def https_config(root: Path, certificate: Path, key: Path) -> Path:
    path = root / "tls.toml"
    path.write_text(f'[server]\ncertificate_file = "{certificate}"\nprivate_key_file = "{key}"\n')
    return path


def measure(
    scheme: str, spec: str, root: Path, plan: run.Plan, tls: dict[str, Any]
) -> dict[str, Any]:
    """One load run of the tiny model, 2 workers, c=32, on a fresh server of ``scheme``."""
    flags: dict[str, object] = {"workers": 2}
    if scheme == "https":
        flags |= {"config": tls["config"], "inference_address": "https://127.0.0.1:0"}
    with servers.running([spec], str(root), ready={"tiny": 2}, **flags) as server:
        assert server.inference.startswith(f"{scheme}://"), server.inference
        servers.wait_quiet(within=plan.quiet_wait)
        load = loadgen.LoadSpec(
            f"{server.inference}/predictions/tiny",
            models.body("tiny"),
            concurrency=32,
            duration=plan.duration,
            warmup=plan.warmup,
            max_requests=plan.max_requests,
            tls=tls["client"] if scheme == "https" else None,
        )
        return run._load_once(server, load, {})


def table_rows(found: dict[str, list[dict[str, Any]]]) -> list[list[Any]]:
    rows = []
    for name, key, higher in METRICS:
        http = [r[key] for r in found["http"]]
        https = [r[key] for r in found["https"]]
        a, b = statistics.median(http), statistics.median(https)
        spread = f"{_spread(http)} / {_spread(https)}"
        rows.append([name, a, b, f"{b / a:.3f}", spread, _verdict(higher, http, https)])
    return rows


def _spread(values: list[float]) -> str:
    median = statistics.median(values)
    if len(values) < 2 or not median:
        return "n/a"
    return f"{100 * (max(values) - min(values)) / median:.1f}%"


def _verdict(higher_is_better: bool, http: list[float], https: list[float]) -> str:
    """Whether https is ``better`` or ``worse`` with the two ranges apart, else within spread."""
    if min(len(http), len(https)) < 2:
        return "n/a (1 round)"
    if max(http) < min(https):
        return "better" if higher_is_better else "worse"
    if max(https) < min(http):
        return "worse" if higher_is_better else "better"
    return "within spread"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs per scheme (default 3)")
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
        f"tiny model, 2 workers, c=32; {args.rounds} round(s), http then https; load runs of "
        f"{plan.duration:g} s after {plan.warmup:g} s warm-up; medians; took {took:.0f} s\n"
    )
    _table(
        ["metric", "http", "https", "https/http", "spread http / https", "apart?"],
        table_rows(results["runs"]),
    )
    print(f"Server processes left: {results['leftover_pids'] or 'none'}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    if results["leftover_pids"]:
        sys.exit(f"server processes left running: {results['leftover_pids']}")


def _run(plan: run.Plan, rounds: int) -> dict[str, list[dict[str, Any]]]:
    with tempfile.TemporaryDirectory(prefix="trio-supervisor-tls-") as tmp:
        root = Path(tmp)
        specs = run._child_json("build", str(root / "models"))
        certificate, key = make_certificate(root)
        client = ssl.create_default_context(cafile=str(certificate))
        tls = {"config": https_config(root, certificate, key), "client": client}
        found: dict[str, list[dict[str, Any]]] = {scheme: [] for scheme in SCHEMES}
        for n in range(rounds):
            for scheme in SCHEMES:
                figures = measure(scheme, specs["tiny"], root, plan, tls)
                found[scheme].append(figures)
                errors = figures.get("errors") or {}
                print(
                    f"  [{scheme} {n + 1}] {figures['rps']:.0f} req/s, p50 "
                    f"{figures['p50_ms']:.2f} ms" + (f", errors {errors}" if errors else ""),
                    file=sys.stderr,
                    flush=True,
                )
        return found


if __name__ == "__main__":
    main()
