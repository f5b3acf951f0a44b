"""A two-layer network that computes XOR, and its handler.

``XorNet`` is the model; ``XorHandler`` loads the weights that make_model.py
saved next to this file and answers ``[a, b]`` with ``a xor b``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch


class XorNet(torch.nn.Module):
    """relu(a + b) - 2 * relu(a + b - 1): 0, 1, 1, 0 on the four corners."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(2, 2)
        self.out = torch.nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))


class XorHandler:
    """Answers each request (a JSON pair of bits) with their XOR."""

    def initialize(self, context: Any) -> None:
        model_dir = context.system_properties["model_dir"]
        self.model = XorNet()
        weights = torch.load(os.path.join(model_dir, "xor.pt"), weights_only=True)
        self.model.load_state_dict(weights)
        self.model.eval()

    def handle(self, batch: list[dict[str, Any]], context: Any) -> list[int]:
        pairs = [_pair(item) for item in batch]
        with torch.inference_mode():
            outputs = self.model(torch.tensor(pairs, dtype=torch.float32)).squeeze(1)
        return [round(value) for value in outputs.tolist()]


def _pair(item: dict[str, Any]) -> list[float]:
    body = item.get("data", item.get("body"))
    if isinstance(body, bytes | bytearray):
        body = json.loads(body)
    return [float(bit) for bit in body]
