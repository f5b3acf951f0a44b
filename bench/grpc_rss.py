"""The supervisor's idle RSS with gRPC off and on (the default config, the iris model).

Each run starts ``python -m supervisor serve`` on free ports, waits for its worker,
sends 5 predictions over HTTP (and, with gRPC on, 5 over gRPC, so that its threads
exist), sits idle for 1 s and reads the supervisor's RSS. Runs alternate off/on.

    python bench/grpc_rss.py [--runs 3]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import servers

from supervisor.grpc.protos import inference_pb2, inference_pb2_grpc

IRIS = b"[5.1, 3.5, 1.4, 0.2]"

GRPC_LISTENING = re.compile(r"listening: gRPC inference (\S+), gRPC management (\S+)")


def one(grpc_on: bool) -> float:
    """The idle supervisor RSS in MiB of one server."""
    flags = (
        {"grpc_inference_address": "127.0.0.1:0", "grpc_management_address": "127.0.0.1:0"}
        if grpc_on
        else {"no_grpc": ""}
    )
    args = [
        a.removesuffix("=") for a in servers.serve_args(["iris=handlers.builtin.iris"], **flags)
    ]
    with tempfile.TemporaryDirectory() as cwd:
        server = servers.start(args, cwd)
        try:
            servers.wait_ready(server, "iris", 1)
            with httpx.Client(timeout=30) as client:
                for _ in range(5):
                    client.post(f"{server.inference}/predictions/iris", content=IRIS)
            if grpc_on:
                _grpc_calls(server)
            time.sleep(1.0)
            return float(server.rss_mb()["supervisor"])  # type: ignore[arg-type]
        finally:
            servers.stop(server.proc)


def _grpc_calls(server: servers.Server) -> None:
    deadline = time.monotonic() + 10
    while not (found := next(filter(None, map(GRPC_LISTENING.search, server.log)), None)):
        if time.monotonic() > deadline:
            raise TimeoutError("no gRPC listening line")
        time.sleep(0.05)
    with grpc.insecure_channel(found[1]) as channel:
        stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        request = inference_pb2.PredictionsRequest(model_name="iris", input={"data": IRIS})
        for _ in range(5):
            stub.Predictions(request, timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    found: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(runs):
        for label, on in (("off", False), ("on", True)):
            found[label].append(one(on))
    for label, values in found.items():
        listed = ", ".join(f"{v:.1f}" for v in values)
        print(f"gRPC {label}: supervisor idle RSS {statistics.median(values):.1f} MiB ({listed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
