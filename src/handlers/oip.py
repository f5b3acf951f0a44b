"""Open Inference Protocol v2 tensors in the worker: canonical bytes in, tensors out, and back.

The supervisor sends a tensor request (OIP v2 over REST or gRPC) in one
canonical form: the ``body`` parameter of type ``application/vnd.oip-v2;
header-length=N`` holds a JSON header (``inputs`` with ``name``, ``datatype``,
``shape`` and ``parameters.binary_data_size``; ``id``; ``outputs`` asked for)
and then each input's raw little-endian bytes (``BYTES``: a 4-byte length before
each element). The reserved header ``oip: v2`` marks such a request.

How a handler gets it depends on the handler:

* a handler with ``infer_tensors(requests, context)`` (the tensor contract, see
  docs/handlers.md) gets, per request, a dict of named tensors (``BYTES``: a
  flat list of ``bytes``) and returns, per request, a tensor, a list or tuple
  of tensors, a dict of named tensors, or a ``PredictionException`` that fails
  that request alone;
* any other handler gets what TorchServe 0.12 passes for an OIP REST request:
  ``data[i]["body"]`` is the OIP JSON request as a dict (``data`` as flat
  lists, ``BYTES`` as strings) with the header ``explain: False``; its answer
  (an OIP JSON response, as a dict) goes back as JSON.

A batch may mix tensor requests and plain ones; each kind goes to the handler
as its own batch. torch is imported inside the functions that need it.
"""

from __future__ import annotations

import struct
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from handlers.base import HandlerFunction, PredictionException
from handlers.context import Context
from handlers.protocol import InferItem, ReplyItem
from handlers.reply import failure

__all__ = [
    "CANONICAL_TYPE",
    "TENSOR_METHOD",
    "PlainRunner",
    "datatype_of",
    "encode_outputs",
    "is_tensor_request",
    "read_inputs",
    "run_tensor_batch",
    "torchserve_request",
]

CANONICAL_TYPE = "application/vnd.oip-v2"
"""The canonical form's content type (plus ``; header-length=N``)."""
TENSOR_METHOD = "infer_tensors"
"""The handler method of the tensor contract."""

PlainRunner = Callable[[list[InferItem], list[dict[str, Any] | None]], list[ReplyItem]]
"""Runs a batch the usual way; a dict given for an item is its parameters, decoded."""

_TORCH = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "BF16": "bfloat16",
    "FP32": "float32",
    "FP64": "float64",
}
_OIP = {torch_name: oip for oip, torch_name in _TORCH.items()}
_LEN = struct.Struct("<I")


def is_tensor_request(item: InferItem) -> bool:
    """Whether ``item`` is an OIP tensor request (the server's reserved header says so)."""
    return item.headers.get("oip") == "v2"


def run_tensor_batch(
    handle: HandlerFunction, context: Context, items: list[InferItem], run_plain: PlainRunner
) -> list[ReplyItem]:
    """Run a batch holding tensor requests; one reply per item, in order.

    Args:
        handle: the loaded handler.
        context: the handler's context.
        items: the batch (tensor requests and maybe plain ones).
        run_plain: runs a batch the usual way (plain requests, and every request
            of a handler without the tensor contract).
    """
    method = getattr(getattr(handle, "__self__", None), TENSOR_METHOD, None)
    if not callable(method):
        return run_plain(
            [_as_torchserve_item(it) if is_tensor_request(it) else it for it in items],
            [{"body": torchserve_request(it)} if is_tensor_request(it) else None for it in items],
        )
    tensor = [idx for idx, it in enumerate(items) if is_tensor_request(it)]
    plain = [idx for idx, it in enumerate(items) if not is_tensor_request(it)]
    replies: list[ReplyItem | None] = [None] * len(items)
    if plain:
        answers = run_plain([items[i] for i in plain], [None] * len(plain))
        for idx, reply in zip(plain, answers, strict=True):
            replies[idx] = reply
    answers = _run_tensors(method, context, [items[i] for i in tensor])
    for idx, reply in zip(tensor, answers, strict=True):
        replies[idx] = reply
    return [reply for reply in replies if reply is not None]


def _run_tensors(
    method: Callable[..., Any], context: Context, items: list[InferItem]
) -> list[ReplyItem]:
    requests = [read_inputs(it) for it in items]
    context.start_batch([it.request_id for it in items], [dict(it.headers) for it in items])
    try:
        results = method(requests, context)
    except PredictionException as exc:
        return [failure(it.request_id, exc.error_code, exc.message) for it in items]
    except Exception as exc:
        traceback.print_exc()
        sys.stderr.flush()
        message = f"Prediction failed: {type(exc).__name__}: {exc}"
        return [failure(it.request_id, 503, message) for it in items]
    if not isinstance(results, list) or len(results) != len(items):
        message = "Invalid model predict output: expected one result per request"
        return [failure(it.request_id, 503, message) for it in items]
    names = _declared_outputs(context)
    return [
        _tensor_reply(it, result, names, context.response_status(idx))
        for idx, (it, result) in enumerate(zip(items, results, strict=True))
    ]


def _tensor_reply(item: InferItem, result: Any, names: Sequence[str], status: int) -> ReplyItem:
    if isinstance(result, PredictionException):
        return failure(item.request_id, result.error_code, result.message)
    try:
        body, content_type = encode_outputs(result, names)
    except (TypeError, ValueError, RuntimeError) as exc:
        return failure(item.request_id, 503, f"Unsupported model output data type: {exc}")
    return ReplyItem(item.request_id, ok=True, status=status, body=body, content_type=content_type)


def read_inputs(item: InferItem) -> dict[str, Any]:
    """A tensor request's inputs: name -> tensor (``BYTES``: a flat list of bytes)."""
    header, blobs = _split(item)
    inputs: dict[str, Any] = {}
    offset = 0
    for spec in header["inputs"]:
        size = spec["parameters"]["binary_data_size"]
        inputs[spec["name"]] = _tensor(spec, blobs, offset, size)
        offset += size
    return inputs


def torchserve_request(item: InferItem) -> dict[str, Any]:
    """A tensor request as TorchServe passes an OIP request's body: the JSON request."""
    header, _ = _split(item)
    inputs = read_inputs(item)
    request: dict[str, Any] = {}
    if "id" in header:
        request["id"] = header["id"]
    request["inputs"] = [
        {
            "name": spec["name"],
            "shape": spec["shape"],
            "datatype": spec["datatype"],
            "data": _json_data(inputs[spec["name"]]),
        }
        for spec in header["inputs"]
    ]
    if "outputs" in header:
        request["outputs"] = header["outputs"]
    return request


def encode_outputs(result: Any, names: Sequence[str] = ()) -> tuple[bytes, str]:
    """A handler's answer in canonical form: the body and its content type.

    Args:
        result: a tensor, a list or tuple of tensors, or a dict of named ones (a
            list of ``str`` or ``bytes`` is a ``BYTES`` tensor).
        names: the declared output names, used in order for unnamed tensors
            (``output0``, ``output1``... past them).

    Raises:
        TypeError: a value that is no tensor of a known datatype.
    """
    specs = []
    raws = []
    for name, value in _named(result, names).items():
        datatype, shape, raw = _tensor_bytes(value)
        specs.append(
            {
                "name": name,
                "datatype": datatype,
                "shape": shape,
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        raws.append(raw)
    head = orjson.dumps({"outputs": specs})
    return b"".join([head, *raws]), f"{CANONICAL_TYPE}; header-length={len(head)}"


def datatype_of(dtype: Any) -> str:
    """The OIP datatype of a ``torch.dtype`` (its torch name when OIP has none)."""
    name = str(dtype).removeprefix("torch.")
    return _OIP.get(name, name)


def _named(result: Any, names: Sequence[str]) -> dict[str, Any]:
    if isinstance(result, Mapping):
        return {str(k): v for k, v in result.items()}
    if isinstance(result, tuple) or (isinstance(result, list) and not _is_strings(result)):
        return {_name(names, i): v for i, v in enumerate(result)}
    return {_name(names, 0): result}


def _name(names: Sequence[str], idx: int) -> str:
    return names[idx] if idx < len(names) else f"output{idx}"


def _is_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str | bytes) for v in value)


def _tensor_bytes(value: Any) -> tuple[str, list[int], bytes]:
    import torch

    if _is_strings(value):
        elements = [v.encode() if isinstance(v, str) else v for v in value]
        return "BYTES", [len(elements)], b"".join(_LEN.pack(len(e)) + e for e in elements)
    tensor = torch.as_tensor(value).detach().cpu().contiguous()
    datatype = datatype_of(tensor.dtype)
    if datatype not in _TORCH:
        raise TypeError(f"no OIP datatype for {tensor.dtype}")
    raw = tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
    return datatype, list(tensor.shape), raw


def _tensor(spec: dict[str, Any], blobs: bytearray, offset: int, size: int) -> Any:
    import torch

    if spec["datatype"] == "BYTES":
        return _elements(bytes(blobs[offset : offset + size]))
    dtype = getattr(torch, _TORCH[spec["datatype"]])
    if size == 0:
        return torch.empty(spec["shape"], dtype=dtype)
    count = size // dtype.itemsize
    flat = torch.frombuffer(blobs, dtype=dtype, count=count, offset=offset)
    return flat.reshape(spec["shape"])


def _elements(raw: bytes) -> list[bytes]:
    values, offset = [], 0
    while offset < len(raw):
        size = _LEN.unpack_from(raw, offset)[0]
        values.append(raw[offset + 4 : offset + 4 + size])
        offset += 4 + size
    return values


def _json_data(value: Any) -> list[Any]:
    if isinstance(value, list):
        return [v.decode("utf-8", "replace") for v in value]
    flat: list[Any] = value.reshape(-1).tolist()
    return flat


def _split(item: InferItem) -> tuple[dict[str, Any], bytearray]:
    """The canonical header and a writable copy of the bytes after it."""
    content_type, body = item.params["body"]
    length = int(content_type.rpartition("header-length=")[2])
    header: dict[str, Any] = orjson.loads(body[:length])
    return header, bytearray(body[length:])


def _as_torchserve_item(item: InferItem) -> InferItem:
    return InferItem(item.request_id, {**item.headers, "explain": "False"}, item.params)


def _declared_outputs(context: Context) -> list[str]:
    """The output names model-config.yaml declares (``oip: outputs:``), in order."""
    section = context.model_yaml_config.get("oip")
    outputs = section.get("outputs") if isinstance(section, dict) else None
    if not isinstance(outputs, list):
        return []
    return [str(o["name"]) for o in outputs if isinstance(o, dict) and "name" in o]
