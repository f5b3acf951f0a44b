"""Built-in ``tensor_handler``: JSON numbers in, the model's output as JSON lists out.

For any TorchScript or eager model (see ``handlers.torch_handler``) that takes
one tensor. Each request is a JSON number or (nested) list of numbers, either
the whole body or ``{"data": ...}``; the requests of a batch with the same shape
go through the model as one tensor (requests of other shapes as other
tensors). The answer to each request is its row of the output as a list; a
model returning a tuple or dict of tensors gives a list or dict per request.

Settings (model-config.yaml ``handler:`` section): ``dtype`` of the input tensor,
default ``float32`` (``int64`` for token ids, for instance).
"""

from __future__ import annotations

from typing import Any

from handlers.builtin.rejection import BadInput, RejectingHandler
from handlers.context import Context
from handlers.torch_handler import request_payload

__all__ = ["TensorHandler", "output_rows"]


class _ShapeGroups(list[tuple[list[int], Any]]):
    """Requests grouped by shape: ``(indexes in the batch, tensor or output)`` pairs."""


class TensorHandler(RejectingHandler):
    """JSON in, JSON out, for models that take and return tensors."""

    def initialize(self, context: Context) -> None:
        """Load the model; read the input dtype from the handler settings."""
        import torch

        super().initialize(context)
        settings = context.model_yaml_config.get("handler") or {}
        name = str(settings.get("dtype", "float32"))
        dtype = getattr(torch, name, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"handler dtype {name!r} is not a torch dtype")
        self.dtype = dtype

    def decode_row(self, row: Any) -> Any:
        """One request as a tensor.

        Raises:
            BadInput: it is not a number or a (nested) list of numbers of one shape.
        """
        import torch

        try:
            value = request_payload(row, parse_json=True)
        except ValueError:
            raise BadInput("the input is not JSON") from None
        if isinstance(value, dict) and "data" in value:
            value = value["data"]
        try:
            return torch.as_tensor(value, dtype=self.dtype)
        except (TypeError, ValueError, RuntimeError, OverflowError):
            raise BadInput(
                "expected a JSON number or a (nested) list of numbers with one shape"
            ) from None

    def preprocess(self, data: list[dict[str, Any]]) -> Any:
        """One tensor for the batch, or ``[(indexes, tensor), ...]`` by shape."""
        import torch

        tensors = self.decode_rows(data, self.decode_row)
        shapes: dict[tuple[int, ...], list[int]] = {}
        for idx, tensor in enumerate(tensors):
            shapes.setdefault(tuple(tensor.shape), []).append(idx)
        if len(shapes) == 1:
            return torch.stack(tensors).to(self.device)
        return _ShapeGroups(
            (indexes, torch.stack([tensors[i] for i in indexes]).to(self.device))
            for indexes in shapes.values()
        )

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        """Run the model once per group of same-shaped requests."""
        if isinstance(data, _ShapeGroups):
            return _ShapeGroups(
                (indexes, super(TensorHandler, self).inference(batch, *args, **kwargs))
                for indexes, batch in data
            )
        return super().inference(data, *args, **kwargs)

    def postprocess(self, data: Any) -> list[Any]:
        """One answer per request, in request order."""
        if not isinstance(data, _ShapeGroups):
            return output_rows(data)
        answers: list[Any] = [None] * sum(len(indexes) for indexes, _ in data)
        for indexes, output in data:
            for idx, answer in zip(indexes, output_rows(output), strict=True):
                answers[idx] = answer
        return answers


def output_rows(output: Any) -> list[Any]:
    """Split a model's batched output into one JSON-able answer per request."""
    if isinstance(output, tuple | list):
        columns = [output_rows(part) for part in output]
        return [list(row) for row in zip(*columns, strict=True)]
    if isinstance(output, dict):
        keys = list(output)
        columns = [output_rows(output[key]) for key in keys]
        return [dict(zip(keys, row, strict=True)) for row in zip(*columns, strict=True)]
    rows: list[Any] = output.tolist()
    return rows
