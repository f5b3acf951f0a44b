"""Serve a model inside a Trio program, without HTTP.

``open_supervisor()`` runs the supervisor (and the worker processes) for the
duration of the ``async with`` block; this program never imports torch, the
worker does. Run make_model.py first.
"""

from __future__ import annotations

import json
from pathlib import Path

import trio

from supervisor import ModelConfig, ModelNotFound, Supervisor, open_supervisor

HERE = Path(__file__).resolve().parent

XOR = ModelConfig(
    name="xor",
    handler="xor:XorHandler",  # module xor, found in model_dir
    model_dir=str(HERE),
    batch_size=4,
    max_batch_delay=0.05,  # seconds a batch may wait to fill
)


async def ask(sup: Supervisor, a: int, b: int, answers: dict[tuple[int, int], int]) -> None:
    reply = await sup.predict("xor", json.dumps([a, b]).encode())
    answers[(a, b)] = json.loads(reply.body)


async def main() -> None:
    async with open_supervisor() as sup:
        stats = await sup.load_model(XOR)  # returns once the worker is ready
        print(f"loaded {stats.config.name} {stats.config.version}")
        answers: dict[tuple[int, int], int] = {}
        async with trio.open_nursery() as nursery:  # four at once, batched together
            for a in (0, 1):
                for b in (0, 1):
                    nursery.start_soon(ask, sup, a, b, answers)
        for (a, b), value in sorted(answers.items()):
            print(f"{a} xor {b} = {value}")
        try:
            await sup.predict("and", b"[1, 1]")
        except ModelNotFound as exc:  # the supervisor's errors carry an HTTP status
            print(f"error {exc.status}: {exc.message}")
    print("stopped: no worker is left running")


if __name__ == "__main__":
    trio.run(main)
