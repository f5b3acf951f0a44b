"""A text handler: the sum of the words' scores, labelled with a threshold.

The threshold comes from the archive's model-config.yaml (its ``handler``
section), which TorchServe and trio-supervisor both hand to the handler as
``context.model_yaml_config``.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import torch


class SentimentHandler:
    """Scores each request's text with a bag of words."""

    def initialize(self, context: Any) -> None:
        model_dir = context.system_properties["model_dir"]
        with open(os.path.join(model_dir, "vocab.json")) as f:
            self.vocab: dict[str, int] = json.load(f)
        self.bag = torch.nn.EmbeddingBag(len(self.vocab) + 1, 1, mode="sum")
        weights = torch.load(os.path.join(model_dir, "sentiment.pt"), weights_only=True)
        self.bag.load_state_dict(weights)
        self.bag.eval()
        settings = context.model_yaml_config.get("handler", {})
        self.threshold = float(settings.get("threshold", 0.5))

    def handle(self, batch: list[dict[str, Any]], context: Any) -> list[dict[str, Any]]:
        rows = [self._rows(item) for item in batch]
        offsets = torch.tensor([0] + [len(r) for r in rows[:-1]]).cumsum(0)
        flat = torch.tensor([row for r in rows for row in r], dtype=torch.long)
        with torch.inference_mode():
            scores = self.bag(flat, offsets).squeeze(1).tolist()
        return [{"label": self._label(score), "score": score} for score in scores]

    def _rows(self, item: dict[str, Any]) -> list[int]:
        """The text's words as embedding rows (TorchServe passes "data" or "body")."""
        text = item.get("data", item.get("body")) or ""
        if isinstance(text, bytes | bytearray):
            text = text.decode()
        words = re.findall(r"[a-z']+", str(text).lower())
        return [self.vocab.get(word, 0) for word in words] or [0]

    def _label(self, score: float) -> str:
        if score >= self.threshold:
            return "positive"
        if score <= -self.threshold:
            return "negative"
        return "neutral"
