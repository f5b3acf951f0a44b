"""Built-in ``tensor_handler``: JSON numbers in, the model's output as JSON lists out.

For any TorchScript or eager model (see ``handlers.torch_handler``) that takes
one tensor. Each request is a JSON number or (nested) list of numbers, either
the whole body or ``{"data": ...}``; the requests of a batch with the same shape
go through the model as one tensor (requests of other shapes as other
tensors). The answer to each request is its row of the output as a list; a
model returning a tuple or dict of tensors gives a list or dict per request.

Settings (model-config.yaml ``handler:`` section): ``dtype`` of the input tensor,
default ``float32`` (``int64`` for token ids, for instance).

It also serves Open Inference Protocol v2 requests with no code
(``infer_tensors``, the tensor contract of ``handlers.oip``): each request has
one input whose first dimension is its batch dimension, of the ``dtype`` above
(another datatype is a 400 naming the input); requests whose other dimensions
agree are concatenated and go through the model as one tensor, and each gets
its rows of the output (of every output, for a tuple or dict of tensors).
"""

from __future__ import annotations

from typing import Any

from handlers.base import PredictionException
from handlers.builtin.rejection import BadInput, RejectingHandler
from handlers.context import Context
from handlers.oip import datatype_of
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

    def infer_tensors(self, requests: list[dict[str, Any]], context: Context) -> list[Any]:
        """OIP v2 requests: one input each, concatenated by shape, rows of the output back."""
        import torch

        self.context = context
        answers: list[Any] = [None] * len(requests)
        groups: dict[tuple[int, ...], list[tuple[int, Any]]] = {}
        for idx, inputs in enumerate(requests):
            tensor = self._oip_input(inputs)
            if isinstance(tensor, PredictionException):
                answers[idx] = tensor
            else:
                groups.setdefault(tuple(tensor.shape[1:]), []).append((idx, tensor))
        for members in groups.values():
            batch = torch.cat([tensor for _, tensor in members]).to(self.device)
            sizes = [tensor.shape[0] for _, tensor in members]
            output = self.inference(batch)
            for (idx, _), part in zip(members, _split_rows(output, sizes), strict=True):
                answers[idx] = part
        return answers

    def _oip_input(self, inputs: dict[str, Any]) -> Any:
        """The request's one input tensor, or the PredictionException that refuses it."""
        import torch

        if len(inputs) != 1:
            return PredictionException(f"this model takes one input, got {len(inputs)}", 400)
        name, tensor = next(iter(inputs.items()))
        if not isinstance(tensor, torch.Tensor) or tensor.dtype != self.dtype:
            kind = datatype_of(tensor.dtype) if isinstance(tensor, torch.Tensor) else "BYTES"
            return PredictionException(
                f"input '{name}' is {kind}; this model takes {datatype_of(self.dtype)}", 400
            )
        if tensor.dim() == 0:
            return PredictionException(f"input '{name}' needs a batch dimension", 400)
        return tensor

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


def _split_rows(output: Any, sizes: list[int]) -> list[Any]:
    """A batched output cut into each request's rows (tuples and dicts part by part)."""
    import torch

    if isinstance(output, tuple | list):
        columns = [_split_rows(part, sizes) for part in output]
        return [tuple(row) for row in zip(*columns, strict=True)]
    if isinstance(output, dict):
        keys = list(output)
        columns = [_split_rows(output[key], sizes) for key in keys]
        return [dict(zip(keys, row, strict=True)) for row in zip(*columns, strict=True)]
    return list(torch.split(output, sizes))
