"""The built-in default model: an iris-flower classifier built without downloads.

The model is a nearest-centroid classifier written as one ``torch.nn.Linear``
layer: for class means ``mu_k``, ``-|x - mu_k|^2 = 2 mu_k.x - |mu_k|^2 - |x|^2`` and
the last term is shared by every class, so the logits are linear in ``x``. The
centroids are the per-species means of Fisher's iris data set (sepal length,
sepal width, petal length, petal width, in cm), so the weights are fixed and
every worker builds the same model.

Input per request: a JSON list of four numbers, or ``{"data": [...]}``.
Output: ``{"label": ..., "probabilities": {...}}``.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from handlers.base import Context

__all__ = ["CENTROIDS", "EXAMPLE", "LABELS", "IrisClassifier", "build_model", "features"]

LABELS = ("setosa", "versicolor", "virginica")
CENTROIDS = (
    (5.006, 3.428, 1.462, 0.246),
    (5.936, 2.770, 4.260, 1.326),
    (6.588, 2.974, 5.552, 2.026),
)
EXAMPLE = [5.1, 3.5, 1.4, 0.2]


def build_model() -> Any:
    """Build the classifier as a torch module (deterministic, no I/O)."""
    import torch

    means = torch.tensor(CENTROIDS)
    layer = torch.nn.Linear(4, len(LABELS))
    with torch.no_grad():
        layer.weight.copy_(2 * means)
        layer.bias.copy_(-(means * means).sum(dim=1))
    return layer.eval()


class IrisClassifier:
    """Classifies iris flowers from their four measurements."""

    def initialize(self, context: Context) -> None:
        """Build the model once per worker."""
        import torch

        self.torch = torch
        self.model = build_model()

    def handle(self, batch: list[dict[str, Any]], context: Context) -> list[Any]:
        """Classify the valid requests of the batch in one forward pass.

        A request with bad input gets a 400 of its own; the others still get answers.
        """
        results: list[Any] = [None] * len(batch)
        rows, where = [], []
        for idx, item in enumerate(batch):
            try:
                rows.append(features(item))
                where.append(idx)
            except ValueError as exc:
                context.set_response_status(400, "Bad Request", idx)
                results[idx] = {"code": 400, "type": "BadRequest", "message": str(exc)}
        if rows:
            for idx, probs in zip(where, self._predict(rows), strict=True):
                results[idx] = _answer(probs)
        return results

    def _predict(self, rows: list[list[float]]) -> list[list[float]]:
        with self.torch.inference_mode():
            logits = self.model(self.torch.tensor(rows, dtype=self.torch.float32))
            probs: list[list[float]] = self.torch.softmax(logits, dim=1).tolist()
        return probs


def _answer(probs: list[float]) -> dict[str, Any]:
    best = max(range(len(probs)), key=probs.__getitem__)
    return {
        "label": LABELS[best],
        "probabilities": {name: round(p, 6) for name, p in zip(LABELS, probs, strict=True)},
    }


def features(item: dict[str, Any]) -> list[float]:
    """The four measurements of one request, or ValueError saying what is wrong.

    Accepts a JSON body, a ``data`` form field, and also the form that ``curl -d``
    makes of a bare JSON list when no Content-Type is given (the list is the key).
    """
    value = item.get("data", item.get("body"))
    if value is None and len(item) == 1:
        key, field = next(iter(item.items()))
        value = key if field in ("", b"") else field
    if isinstance(value, bytes | str):
        with contextlib.suppress(ValueError):
            value = json.loads(value)
    if isinstance(value, dict):
        value = value.get("data")
    if not (isinstance(value, list) and len(value) == 4):
        raise ValueError(
            "expected a JSON list of 4 numbers (sepal length, sepal width, petal length, "
            "petal width) with Content-Type: application/json"
        )
    try:
        return [float(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError("the 4 measurements must be numbers") from None
