"""The benchmark's models, built here (no downloads), and their in-process limit.

Run: python bench/models.py build DIR       # writes DIR/tiny and DIR/mlp
     python bench/models.py baseline DIR [--seconds S] [--repeats N]

``build`` writes one model directory per model: a handler module and the
weights (``torch.save`` of a seeded ``state_dict``). Both handlers take a batch
of requests whose bodies are JSON lists of floats, run one forward pass for the
whole batch and answer each request with its output row (and the worker's pid,
so the recovery scenario can tell the new worker's answers from the old one's).

``baseline`` is the physical limit: the same weights called in this process in
a plain loop, with torch's default thread count, printed as JSON.

- tiny: ``nn.Linear(16, 4)``, dominated by per-request overhead.
- mlp: 1024 -> 4096 -> 2048 -> 1024 -> 16 with ReLUs (about 14.7 M parameters),
  compute- and memory-bound.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

MODELS: dict[str, tuple[int, ...]] = {"tiny": (16, 4), "mlp": (1024, 4096, 2048, 1024, 16)}

HANDLER = '''"""Benchmark handler for {name}: sizes {sizes}; a JSON list of floats per request."""

import os

import torch

SIZES = {sizes!r}


def build(sizes):
    layers = []
    for i, (width_in, width_out) in enumerate(zip(sizes, sizes[1:])):
        if i:
            layers.append(torch.nn.ReLU())
        layers.append(torch.nn.Linear(width_in, width_out))
    return torch.nn.Sequential(*layers).eval()


class Bench:
    def initialize(self, context):
        self.model = build(SIZES)
        path = os.path.join(context.system_properties["model_dir"], "weights.pt")
        self.model.load_state_dict(torch.load(path, weights_only=True))
        self.pid = os.getpid()

    def handle(self, batch, context):
        rows = torch.tensor([row.get("data") or row.get("body") for row in batch])
        with torch.inference_mode():
            out = self.model(rows).tolist()
        return [{{"pid": self.pid, "y": y}} for y in out]
'''


def parameters(name: str) -> int:
    """The model's parameter count, from its sizes."""
    sizes = MODELS[name]
    return sum(a * b + b for a, b in itertools.pairwise(sizes))


def body(name: str) -> bytes:
    """One request body: a JSON list of the model's input width (3 decimals each)."""
    width = MODELS[name][0]
    return json.dumps([round((i % 97) / 97 - 0.5, 3) for i in range(width)]).encode()


def build(root: Path) -> dict[str, str]:
    """Write every model into ``root/<name>`` (handler module + weights).

    Returns:
        The ``--models`` spec per model: ``NAME=bench_NAME@DIR``.
    """
    import torch

    specs = {}
    for name, sizes in MODELS.items():
        directory = root / name
        directory.mkdir(parents=True, exist_ok=True)
        module = f"bench_{name}"
        source = HANDLER.format(name=name, sizes=sizes)
        (directory / f"{module}.py").write_text(source)
        torch.manual_seed(0)
        namespace: dict[str, Any] = {}
        exec(compile(source, module, "exec"), namespace)
        torch.save(namespace["build"](sizes).state_dict(), directory / "weights.pt")
        specs[name] = f"{name}={module}@{directory}"
    return specs


def _load(root: Path, name: str) -> tuple[Any, Any]:
    """Import the handler from its model dir, as a worker does, and initialise it."""
    sys.path.insert(0, str(root / name))
    module = __import__(f"bench_{name}")

    class _Context:
        system_properties = {"model_dir": str(root / name)}  # noqa: RUF012

    handler = module.Bench()
    handler.initialize(_Context())
    return handler, _Context()


def _rate(call: Any, rows: int, seconds: float) -> tuple[float, float]:
    """Call ``call`` in a loop for ``seconds``.

    Returns:
        rows/s from the median time per call, and that median (seconds).
    """
    for _ in range(3):
        call()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return rows / median, median


def baseline(root: Path, seconds: float) -> dict[str, Any]:
    """In-process rows/s and time per call: the bare forward pass, and the handler.

    ``forward`` calls the model on a ready tensor (the physical limit); ``handler``
    calls the handler on parsed JSON rows, as a worker does, without the server.
    """
    import torch

    results: dict[str, Any] = {"torch_threads": torch.get_num_threads()}
    for name in MODELS:
        handler, context = _load(root, name)
        row = json.loads(body(name))
        for batch in (1, 8):
            x = torch.tensor([row] * batch)
            items = [{"body": row} for _ in range(batch)]

            def forward(x: Any = x, model: Any = handler.model) -> None:
                with torch.inference_mode():
                    model(x)

            def handle(
                items: list[Any] = items, handler: Any = handler, ctx: Any = context
            ) -> None:
                handler.handle(items, ctx)

            for kind, call in (("forward", forward), ("handler", handle)):
                rate, per_call = _rate(call, batch, seconds)
                key = f"{name}_b{batch}_{kind}"
                results[key] = {"rows_per_s": rate, "per_call_ms": per_call * 1e3}
            if name == "mlp":  # what one core can do: the server's other processes need the other
                torch.set_num_threads(1)
                rate, per_call = _rate(forward, batch, seconds)
                results[f"{name}_b{batch}_forward_1thread"] = {
                    "rows_per_s": rate,
                    "per_call_ms": per_call * 1e3,
                }
                torch.set_num_threads(results["torch_threads"])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("build", "baseline"))
    parser.add_argument("root", type=Path)
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    args = parser.parse_args()
    if args.command == "build":
        print(json.dumps(build(args.root)))
    else:
        print(json.dumps(baseline(args.root, args.seconds)))


if __name__ == "__main__":
    main()
