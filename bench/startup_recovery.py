"""Cold start, kill -9 recovery and memory of `python -m supervisor serve`.

Run: python bench/startup_recovery.py [--runs N]

Starts the server with its built-in model on free 127.0.0.1 ports, and measures:
- cold start: process start to the first successful prediction;
- RSS of the supervisor process and of its worker once idle;
- recovery: with one client sending requests back to back, SIGKILL the only
  worker; time from the kill to the next success, and requests that failed.
Only 127.0.0.1 is contacted; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
import psutil

LISTENING = re.compile(r"listening: inference ([^,\s]+), management ([^,\s]+)")
BODY = b"[5.1, 3.5, 1.4, 0.2]"
HEADERS = {"Content-Type": "application/json"}


def start_server(workdir: str, warm_spare: bool) -> tuple[subprocess.Popen[bytes], float]:
    args = [sys.executable, "-m", "supervisor", "serve"]
    if warm_spare:
        config = os.path.join(workdir, "spare.toml")
        with open(config, "w") as handle:
            handle.write("[defaults]\nwarm_spare = true\n")
        args += ["--config", config]
    args += [f"--{k}-address=127.0.0.1:0" for k in ("inference", "management", "metrics")]
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, cwd=workdir, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    return proc, t0


def headers(workdir: str, kind: str) -> dict[str, str]:
    """The default config has token authorization on: read the key file."""
    with open(os.path.join(workdir, "key_file.json")) as handle:
        key = json.load(handle)[kind]["key"]
    return {**HEADERS, "Authorization": f"Bearer {key}"}


def describe(url: str, workdir: str) -> dict:
    return httpx.get(f"{url}/models/iris", headers=headers(workdir, "management")).json()[0]


def serving_worker(management: str, workdir: str, warm_spare: bool) -> int:
    """The serving worker's pid (once the spare, if any, is ready too)."""
    deadline = time.perf_counter() + 60
    while time.perf_counter() < deadline:
        desc = describe(management, workdir)
        if not warm_spare or desc["warmSpare"]["pid"]:
            return int(desc["workers"][0]["pid"])
        time.sleep(0.05)
    raise TimeoutError("the warm spare did not become ready")


def wait_listening(proc: subprocess.Popen[bytes], deadline: float) -> tuple[str, str]:
    assert proc.stderr is not None
    while time.perf_counter() < deadline:
        line = proc.stderr.readline().decode()
        if match := LISTENING.search(line):
            return match.group(1), match.group(2)
    raise TimeoutError("server did not report its addresses")


def first_success(client: httpx.Client, url: str, deadline: float) -> float:
    while time.perf_counter() < deadline:
        if client.post(url, content=BODY).status_code == 200:
            return time.perf_counter()
    raise TimeoutError("no successful prediction")


def recovery(client: httpx.Client, url: str, worker_pid: int) -> tuple[float, int]:
    for _ in range(20):
        client.post(url, content=BODY)
    killed_at = time.perf_counter()
    os.kill(worker_pid, signal.SIGKILL)
    failed = 0
    deadline = killed_at + 30
    while time.perf_counter() < deadline:
        if client.post(url, content=BODY).status_code == 200:
            return time.perf_counter() - killed_at, failed
        failed += 1
    raise TimeoutError("no success after the kill")


def one_run(warm_spare: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as workdir:
        return _measure(workdir, warm_spare)


def _measure(workdir: str, warm_spare: bool) -> dict[str, float]:
    proc, t0 = start_server(workdir, warm_spare)
    try:
        inference, management = wait_listening(proc, t0 + 60)
        url = f"{inference}/predictions/iris"
        with httpx.Client(timeout=30, headers=headers(workdir, "inference")) as client:
            cold = first_success(client, url, t0 + 60) - t0
            time.sleep(1.0)  # let both processes settle before reading RSS
            sup_rss = psutil.Process(proc.pid).memory_info().rss
            worker = psutil.Process(serving_worker(management, workdir, warm_spare))
            worker_rss = worker.memory_info().rss
            took, failed = recovery(client, url, worker.pid)
        return {
            "cold_start_s": cold,
            "supervisor_rss_mb": sup_rss / 2**20,
            "worker_rss_mb": worker_rss / 2**20,
            "recovery_s": took,
            "failed_requests": failed,
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warm-spare", action="store_true", help="keep a loaded standby worker")
    args = parser.parse_args()
    runs = [one_run(args.warm_spare) for _ in range(args.runs)]
    print(f"{'metric':<20} {'median':>10} {'min':>10} {'max':>10}")
    for key in runs[0]:
        values = [r[key] for r in runs]
        median, low, high = statistics.median(values), min(values), max(values)
        print(f"{key:<20} {median:>10.3f} {low:>10.3f} {high:>10.3f}")


if __name__ == "__main__":
    main()
