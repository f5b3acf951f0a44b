"""Rolling restarts and a kill -9 behind a real load balancer (HAProxy), on loopback.

Run: python bench/rolling_restart.py [--pre-stop-delay S] [--clients N] [--server-close] [--json]

Three ``python -m supervisor serve`` processes (one echo model each, the same
API keys from one read-only key file, as a Kubernetes Secret gives every
replica) listen on free 127.0.0.1 ports behind HAProxy, whose health checks
ask ``GET /v2/health/ready`` every ``--inter-ms`` (``fall 1 rise 2``). A few
clients send requests back to back through HAProxy (bounded: one request in
flight per client). Then:

1. rolling restart: each server in turn gets SIGTERM, is waited for, is
   started again and waited for until HAProxy has it UP again. Figures: requests,
   failures (must be 0), the longest request, and HAProxy's retries and
   redispatches (0: no request ever met a closed port; the drain alone did it).
2. kill -9 of one server: figures: failures, how many of them started before
   the kill (all must: only requests in flight on it may fail), and the time
   until HAProxy marked it DOWN.

HAProxy keeps its server connections open and reuses them (its default mode,
``http-reuse safe``; ``--server-close``: one per request), and retries a refused
connection on another server (``retries 2``, ``option redispatch``), as a
production config does; it never resends a request that reached a server.
Needs ``haproxy`` on PATH (Debian: ``apt-get install haproxy``). Only 127.0.0.1
is contacted; every wait is bounded.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

HANDLER = """
import time

class Echo:
    def initialize(self, context):
        pass

    def handle(self, batch, context):
        time.sleep(0.005)
        return [{"ok": True} for _ in batch]
"""
KEYS = {
    "inference": {"key": "rolling-restart-inference-key"},
    "management": {"key": "rolling-restart-management-key"},
    "API": {"key": "rolling-restart-api-key"},
}
AUTH = {"Authorization": f"Bearer {KEYS['inference']['key']}", "Content-Type": "text/plain"}


def free_port(rng: random.Random) -> int:
    """A free port of 127.0.0.1 below the ephemeral range.

    A restarted server binds its port again; a port in the ephemeral range could
    meanwhile become the local end of some outgoing connection (HAProxy's, a
    client's), and the bind would fail. Ports below the range are never chosen so.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(1000):
        port = rng.randrange(10000, low)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise OSError(f"no free port of 127.0.0.1 between 10000 and {low}")


def haproxy_config(
    frontend: int, stats: int, servers: list[int], inter_ms: int, *, keep_alive: bool = True
) -> str:
    """HAProxy's config: round robin over ``servers``, checks on the readiness route.

    ``keep_alive`` keeps server connections open and reuses them (HAProxy's default
    mode, ``http-reuse safe``); otherwise each request has its own server connection.
    """
    lines = [
        "global",
        "    maxconn 256",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout client 30s",
        "    timeout server 30s",
        "    timeout check 1s",
        "    http-reuse safe" if keep_alive else "    option http-server-close",
        "    retries 2",
        "    option redispatch",
        "frontend inference",
        f"    bind 127.0.0.1:{frontend}",
        "    default_backend servers",
        "frontend stats",
        f"    bind 127.0.0.1:{stats}",
        "    stats enable",
        "    stats uri /stats",
        "backend servers",
        "    balance roundrobin",
        "    option httpchk GET /v2/health/ready",
        "    http-check expect status 200",
        f"    default-server inter {inter_ms}ms fall 1 rise 2",
    ]
    lines += [f"    server s{i} 127.0.0.1:{port} check" for i, port in enumerate(servers)]
    return "\n".join(lines) + "\n"


@dataclass
class Call:
    """One request through HAProxy: when it started and ended, and how it went."""

    start: float
    end: float
    status: int | None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass
class Fleet:
    """The servers, HAProxy and the load, in one temporary directory."""

    root: Path
    pre_stop_delay: float
    inter_ms: int
    ports: list[int] = field(default_factory=list)
    procs: list[trio.Process | None] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    frontend: int = 0
    stats: int = 0

    def server_args(self, i: int) -> list[str]:
        model_dir = self.root / "model"
        return [
            sys.executable, "-m", "supervisor", "serve",
            f"--inference-address=127.0.0.1:{self.ports[i]}",
            "--management-address=127.0.0.1:0", "--metrics-address=127.0.0.1:0",
            "--models", f"echo=echo_handler@{model_dir}", "--workers", "2",
            "--keys-from", str(self.root / "secret" / "key_file.json"),
            "--pre-stop-delay", str(self.pre_stop_delay), "--ncs", "--no-grpc",
        ]  # fmt: skip

    async def start_server(self, i: int) -> None:
        """Start server ``i`` on its port and wait until it says ready."""
        cwd = self.root / f"s{i}"
        cwd.mkdir(exist_ok=True)
        log = (cwd / "server.log").open("ab")
        self.procs[i] = await trio.lowlevel.open_process(
            self.server_args(i), cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
        log.close()
        await wait_ready(f"http://127.0.0.1:{self.ports[i]}/v2/health/ready")

    async def stop_server(self, i: int, signum: int = signal.SIGTERM) -> int:
        """Signal server ``i`` and wait for it to exit; its exit status."""
        proc = self.procs[i]
        assert proc is not None
        proc.send_signal(signum)
        with trio.fail_after(60):
            code = await proc.wait()
        self.procs[i] = None
        return code

    async def haproxy(self) -> dict[str, dict[str, str]]:
        """HAProxy's per-server statistics (status UP/DOWN, retries ...), by server name."""
        async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
            r = await client.get(f"http://127.0.0.1:{self.stats}/stats;csv")
        rows = csv.DictReader(io.StringIO(r.text.lstrip("# ")))
        return {row["svname"]: row for row in rows if row["pxname"] == "servers"}

    async def wait_haproxy(self, name: str, status: str) -> float:
        """Wait until HAProxy reports server ``name`` as ``status``; the time it took."""
        began = trio.current_time()
        with trio.fail_after(60):
            while True:
                if (await self.haproxy())[name]["status"].startswith(status):
                    return trio.current_time() - began
                await trio.sleep(0.01)

    async def retries(self) -> int:
        """HAProxy's retries and redispatches so far, over all servers."""
        rows = (await self.haproxy()).values()
        return sum(int(row["wretr"] or 0) + int(row["wredis"] or 0) for row in rows)


async def wait_ready(url: str) -> None:
    async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
        with trio.fail_after(120):
            while True:
                try:
                    if (await client.get(url)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.05)


async def client_loop(fleet: Fleet, stop: trio.Event) -> None:
    """Requests back to back through HAProxy until ``stop``; every one is recorded."""
    url = f"http://127.0.0.1:{fleet.frontend}/predictions/echo"
    async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
        while not stop.is_set():
            start = trio.current_time()
            try:
                r = await client.post(url, content=b"x", headers=AUTH)
                call = Call(start, trio.current_time(), r.status_code)
            except httpx.HTTPError as exc:
                call = Call(start, trio.current_time(), None, f"{type(exc).__name__}: {exc}")
            fleet.calls.append(call)


def figures(calls: list[Call]) -> dict[str, Any]:
    failed = [c for c in calls if not c.ok]
    return {
        "requests": len(calls),
        "failures": len(failed),
        "longest_ms": round(max((c.end - c.start for c in calls), default=0.0) * 1000, 1),
        "failed": [{"status": c.status, "error": c.error[:200]} for c in failed[:10]],
    }


async def rolling_restart(fleet: Fleet) -> dict[str, Any]:
    """SIGTERM, wait, start again, wait until HAProxy has it UP: each server in turn."""
    first, retries = len(fleet.calls), await fleet.retries()
    began = trio.current_time()
    exits, stops, starts = [], [], []
    for i in range(len(fleet.ports)):
        signalled = trio.current_time()
        exits.append(await fleet.stop_server(i))
        stops.append(round(trio.current_time() - signalled, 2))
        await fleet.start_server(i)
        await fleet.wait_haproxy(f"s{i}", "UP")
        starts.append(round(trio.current_time() - signalled - stops[-1], 2))
    await trio.sleep(0.5)  # requests under way at the end are counted too
    calls = fleet.calls[first:]
    return {
        **figures(calls),
        "seconds": round(trio.current_time() - began, 1),
        "exit_codes": exits,
        "stop_seconds": stops,
        "start_to_up_seconds": starts,
        "haproxy_retries": await fleet.retries() - retries,
    }


async def kill_one(fleet: Fleet, i: int) -> dict[str, Any]:
    """kill -9 server ``i``: who failed, and how long HAProxy took to mark it DOWN."""
    first = len(fleet.calls)
    proc = fleet.procs[i]
    assert proc is not None
    killed_at = trio.current_time()
    proc.kill()
    down_after = await fleet.wait_haproxy(f"s{i}", "DOWN")
    await proc.wait()
    fleet.procs[i] = None
    await trio.sleep(2.0)  # and then a while with two servers
    calls = fleet.calls[first:]
    failed = [c for c in calls if not c.ok]
    return {
        **figures(calls),
        "failed_started_before_kill": sum(c.start < killed_at for c in failed),
        "down_after_ms": round(down_after * 1000, 1),
        "check_interval_ms": fleet.inter_ms,
    }


async def scenario(
    root: Path, *, pre_stop_delay: float, clients: int, inter_ms: int, keep_alive: bool = True
) -> dict[str, Any]:
    """The whole run: start, load, rolling restart, kill -9, stop. Returns the figures."""
    (root / "model").mkdir()
    (root / "model" / "echo_handler.py").write_text(HANDLER)
    secret = root / "secret"
    secret.mkdir()
    (secret / "key_file.json").write_text(json.dumps(KEYS))
    (secret / "key_file.json").chmod(0o444)
    secret.chmod(0o555)  # mounted read-only, as a Secret volume is
    fleet = Fleet(root, pre_stop_delay, inter_ms)
    rng = random.Random()
    ports: set[int] = set()
    while len(ports) < 5:
        ports.add(free_port(rng))
    *fleet.ports, fleet.frontend, fleet.stats = sorted(ports, key=lambda _: rng.random())
    fleet.procs = [None] * 3
    config = root / "haproxy.cfg"
    config.write_text(
        haproxy_config(fleet.frontend, fleet.stats, fleet.ports, inter_ms, keep_alive=keep_alive)
    )
    try:
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(fleet.start_server, i)
        return await _balanced(fleet, config, clients)
    finally:
        for proc in fleet.procs:
            if proc is not None and proc.returncode is None:
                proc.kill()
                with trio.CancelScope(shield=True):
                    await proc.wait()


async def _balanced(fleet: Fleet, config: Path, clients: int) -> dict[str, Any]:
    haproxy = shutil.which("haproxy")
    assert haproxy is not None
    proxy = await trio.lowlevel.open_process(
        [haproxy, "-f", str(config), "-db"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=(fleet.root / "haproxy.log").open("wb"),
    )
    try:
        await wait_ready(f"http://127.0.0.1:{fleet.frontend}/v2/health/ready")
        for i in range(3):
            await fleet.wait_haproxy(f"s{i}", "UP")
        stop = trio.Event()
        async with trio.open_nursery() as load:
            for _ in range(clients):
                load.start_soon(client_loop, fleet, stop)
            await trio.sleep(1.0)  # steady load before anything happens
            rolling = await rolling_restart(fleet)
            killed = await kill_one(fleet, 0)
            stop.set()
        exits = [await fleet.stop_server(i, signal.SIGINT) for i in (1, 2)]
    finally:
        proxy.kill()
        with trio.CancelScope(shield=True):
            await proxy.wait()
    return {"rolling_restart": rolling, "kill_9": killed, "final_exit_codes": exits}


def _print(result: dict[str, Any], args: argparse.Namespace) -> None:
    r, k = result["rolling_restart"], result["kill_9"]
    mode = "one per request" if args.server_close else "kept alive and reused"
    print(f"3 servers behind HAProxy, {args.clients} clients, checks every {args.inter_ms} ms")
    print(f"server connections: {mode}")
    print(f"pre_stop_delay {args.pre_stop_delay:g} s")
    print(
        f"rolling restart: {r['requests']} requests in {r['seconds']} s, {r['failures']} "
        f"failed, longest {r['longest_ms']} ms, HAProxy retries {r['haproxy_retries']}, "
        f"exit codes {r['exit_codes']}"
    )
    print(
        f"kill -9: {k['requests']} requests, {k['failures']} failed (all started before "
        f"the kill: {k['failed_started_before_kill'] == k['failures']}), DOWN after "
        f"{k['down_after_ms']} ms, longest {k['longest_ms']} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pre-stop-delay", type=float, default=5.0, help="default 5 (as served)")
    parser.add_argument("--clients", type=int, default=4, help="default 4")
    parser.add_argument("--inter-ms", type=int, default=200, help="health check interval")
    parser.add_argument(
        "--server-close",
        action="store_true",
        help="one server connection per request (option http-server-close); default: HAProxy's "
        "own, server connections kept alive and reused (http-reuse safe)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if shutil.which("haproxy") is None:
        sys.exit("haproxy is not on PATH (Debian: apt-get install haproxy)")
    with tempfile.TemporaryDirectory(prefix="rolling-") as tmp:
        root = Path(tmp)
        try:
            result = trio.run(
                lambda: scenario(
                    root,
                    pre_stop_delay=args.pre_stop_delay,
                    clients=args.clients,
                    inter_ms=args.inter_ms,
                    keep_alive=not args.server_close,
                )
            )
        finally:
            for log in sorted(root.glob("**/*.log")):  # the evidence, if anything went wrong
                if os.environ.get("ROLLING_LOGS"):
                    print(f"--- {log}\n{log.read_text()[-3000:]}", file=sys.stderr)
            (root / "secret").chmod(0o755)  # so that the directory can be removed
    print(json.dumps(result, indent=2) if args.json else "", end="\n" if args.json else "")
    if not args.json:
        _print(result, args)


if __name__ == "__main__":
    main()
