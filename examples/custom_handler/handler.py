"""A handler in TorchServe's shape: a plain class with initialize() and handle().

Each request's body is a JSON list of temperatures in Celsius; the answer is the
list in Fahrenheit. A batch of requests runs through the model as one tensor.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from model import Thermometer


class ThermometerHandler:
    """Loads the state dict next to it and converts batches of temperatures."""

    def initialize(self, context: Any) -> None:
        model_dir = context.system_properties["model_dir"]
        self.model = Thermometer()
        weights = torch.load(os.path.join(model_dir, "thermometer.pt"), weights_only=True)
        self.model.load_state_dict(weights)
        self.model.eval()

    def handle(self, batch: list[dict[str, Any]], context: Any) -> list[list[float]]:
        requests = [_temperatures(item) for item in batch]
        flat = torch.tensor([t for temps in requests for t in temps]).unsqueeze(1)
        with torch.inference_mode():
            converted = self.model(flat).squeeze(1).tolist()
        answers, start = [], 0
        for temps in requests:  # split the batch's answers back per request
            answers.append([round(f, 2) for f in converted[start : start + len(temps)]])
            start += len(temps)
        return answers


def _temperatures(item: dict[str, Any]) -> list[float]:
    """The request's temperatures (TorchServe passes the body as "data" or "body")."""
    body = item.get("data", item.get("body"))
    if isinstance(body, bytes | bytearray):
        body = json.loads(body)
    values = body if isinstance(body, list) else [body]
    return [float(v) for v in values]
