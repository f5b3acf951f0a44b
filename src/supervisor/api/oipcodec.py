"""Open Inference Protocol v2 tensors on the supervisor side: requests in, replies out.

Pure (the standard library and orjson; no trio, torch or numpy). Every way a
tensor request arrives becomes one canonical form for the worker, and the
worker's canonical reply becomes each protocol's response.

The canonical form (a request's ``body`` parameter, and a reply's body) is the
binary tensor extension's layout: a JSON header, then each tensor's raw bytes in
order, little-endian, row-major (``BYTES``: a 4-byte little-endian length before
each element, as Triton). Every tensor in the header carries
``parameters.binary_data_size``; the header's length is the content type's
``header-length`` parameter (``application/vnd.oip-v2; header-length=57``). A
request also carries the reserved worker header ``OIP_FIELD`` (set by the
server, never taken from a client), so the worker knows it is a tensor request.

Public API::

    decode_rest(body, header_length) -> Request     JSON, or binary extension
                                                    (Inference-Header-Content-Length)
    decode_split(header, raws) -> Request           gRPC ModelInferRequest as a dict
                                                    (the JSON request's keys, ``data``
                                                    from typed contents) + raw contents
    Request.params                                  the worker's parameters
    Request.fields                                  the reserved worker header to add
    decode_reply(body, content_type) -> list[Tensor] | None
                                                    the worker's answer (canonical, or an
                                                    OIP JSON response from a TorchServe
                                                    handler); None: not tensors, pass it on
    render_rest(request, outputs, model=, version=) -> (body, header_length | None)
    render_split(request, outputs, model=, version=) -> (header dict, raw byte strings)
    Tensor(name, datatype, shape, raw)              one tensor, raw canonical bytes
    DATATYPES                                       datatype -> element size (BYTES: 0)

Every refusal is ``InvalidRequest`` (400) with a message naming the tensor.
"""

from __future__ import annotations

import math
import struct
import sys
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from supervisor.errors import InvalidRequest

__all__ = [
    "CANONICAL_TYPE",
    "DATATYPES",
    "OIP_FIELD",
    "Request",
    "Tensor",
    "decode_reply",
    "decode_rest",
    "decode_split",
    "render_rest",
    "render_split",
]

CANONICAL_TYPE = "application/vnd.oip-v2"
"""The content type of the canonical form (plus ``; header-length=N``)."""
OIP_FIELD = "oip"
"""The reserved worker header that marks a tensor request (value ``v2``)."""

DATATYPES: dict[str, int] = {
    "BOOL": 1,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "BF16": 2,
    "FP32": 4,
    "FP64": 8,
    "BYTES": 0,
}
"""Every OIP datatype and its element size in bytes (``BYTES``: variable)."""

_TYPECODES = {
    "UINT8": "B",
    "UINT16": "H",
    "UINT32": "I",
    "UINT64": "Q",
    "INT8": "b",
    "INT16": "h",
    "INT32": "i",
    "INT64": "q",
    "FP32": "f",
    "FP64": "d",
}
_INT = {int}
_LENGTH_PARAMETER = "; header-length="
_SWAP = sys.byteorder != "little"
_LEN = struct.Struct("<I")


@dataclass(frozen=True)
class Tensor:
    """One tensor in canonical form.

    Attributes:
        name: its name.
        datatype: an OIP datatype (``DATATYPES``).
        shape: its dimensions.
        raw: its elements' bytes (little-endian; ``BYTES`` length-prefixed).
    """

    name: str
    datatype: str
    shape: list[int]
    raw: bytes


@dataclass(frozen=True)
class Request:
    """A decoded inference request.

    Attributes:
        id: the client's request ``id`` (echoed in the response), if any.
        body: the canonical bytes for the worker.
        header_length: the length of the canonical JSON header in ``body``.
        outputs: the outputs asked for, in order: name -> binary (None: as the
            request's default); empty: every output.
        binary_output: the request's ``binary_data_output`` (REST only).
    """

    id: str | None
    body: bytes
    header_length: int
    outputs: dict[str, bool | None] = field(default_factory=dict)
    binary_output: bool = False

    @property
    def params(self) -> dict[str, tuple[str, bytes]]:
        """The worker's parameters (``Call.params``): ``body`` in canonical form."""
        return {"body": (_content_type(self.header_length), self.body)}

    @property
    def fields(self) -> dict[str, str]:
        """The reserved worker header to add to the call's fields."""
        return {OIP_FIELD: "v2"}


def decode_rest(body: bytes, header_length: int | None) -> Request:
    """An OIP REST request body as a ``Request``.

    Args:
        body: the request body.
        header_length: ``Inference-Header-Content-Length`` (None: the body is JSON
            only).

    Raises:
        InvalidRequest: the body is not a valid inference request.
    """
    end = len(body)
    if header_length is None:
        header_length = end
    elif not 0 <= header_length <= end:
        raise InvalidRequest(
            f"Inference-Header-Content-Length {header_length} is beyond the body ({end} bytes)"
        )
    header = _json_object(body[:header_length], "the inference request")
    offset = header_length  # the next input's binary data, if it has any
    tensors = []
    for spec in _inputs(header):
        size = _binary_size(spec)
        if size is None:
            tensors.append(_from_data(spec))
            continue
        if offset + size > end:
            raise InvalidRequest(f"input '{spec['name']}': binary_data_size beyond the body")
        tensors.append(_from_raw(spec, body[offset : offset + size]))
        offset += size
    if offset != end:
        raise InvalidRequest(f"{end - offset} bytes of binary data that no input claims")
    return _request(header, tensors, rest=True)


def decode_split(header: Mapping[str, Any], raws: Sequence[bytes]) -> Request:
    """A gRPC ``ModelInferRequest``, already split, as a ``Request``.

    Args:
        header: the request's fields as the JSON request has them (``id``,
            ``parameters``, ``inputs`` with ``name``, ``datatype``, ``shape`` and,
            from typed contents, a flat ``data`` list; ``outputs``).
        raws: ``raw_input_contents``: one per input, in order, or none.

    Raises:
        InvalidRequest: the request is not valid.
    """
    inputs = _inputs(header)
    if raws and len(raws) != len(inputs):
        raise InvalidRequest(f"{len(raws)} raw input contents for {len(inputs)} inputs")
    if raws:
        tensors = [_from_raw(spec, bytes(raw)) for spec, raw in zip(inputs, raws, strict=True)]
    else:
        tensors = [_from_data(spec) for spec in inputs]
    return _request(header, tensors, rest=False)


def decode_reply(body: bytes, content_type: str) -> list[Tensor] | None:
    """The worker's answer as tensors, or None when it holds none.

    A canonical reply (``CANONICAL_TYPE``) gives its tensors. A JSON object with
    an ``outputs`` list (an OIP response, as a TorchServe handler returns it) is
    packed as a request's inputs would be. Anything else gives None: the caller
    passes the answer on as it is, as TorchServe does.

    Raises:
        InvalidRequest: a JSON ``outputs`` list that is not valid tensors.
    """
    if content_type.startswith(CANONICAL_TYPE):
        header_length = _header_length(content_type)
        header = orjson.loads(body[:header_length])
        return _split_raw(header.get("outputs") or [], body, header_length)
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("outputs"), list):
        return None
    return [_from_data(_checked(spec, "output"), "output") for spec in parsed["outputs"]]


def render_rest(
    request: Request, outputs: Sequence[Tensor], *, model: str, version: str | None
) -> tuple[bytes, int | None]:
    """The REST response: its body, and its header's length when it has binary data.

    Outputs asked for with ``binary_data`` (or all, with ``binary_data_output``)
    carry ``parameters.binary_data_size`` and follow the JSON header raw; the
    others carry ``data`` (flat, row-major).

    Raises:
        InvalidRequest: an output asked for that the model did not give, or a
            ``BYTES`` output that is not UTF-8 asked for as JSON.
    """
    described = []
    raws = []
    for tensor, binary in _selected(request, outputs, model):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": tensor.shape,
        }
        if binary:
            entry["parameters"] = {"binary_data_size": len(tensor.raw)}
            raws.append(tensor.raw)
        else:
            entry["data"] = _unpack(tensor)
        described.append(entry)
    head = orjson.dumps(_response_head(request, model, version, described))
    if not raws:
        return head, None
    return b"".join([head, *raws]), len(head)


def render_split(
    request: Request, outputs: Sequence[Tensor], *, model: str, version: str | None
) -> tuple[dict[str, Any], list[bytes]]:
    """The gRPC ``ModelInferResponse``, split: its fields, and ``raw_output_contents``.

    The fields are ``model_name``, ``model_version``, ``id`` and ``outputs``
    (``name``, ``datatype``, ``shape``); each output's raw bytes are in the list,
    in the same order.

    Raises:
        InvalidRequest: an output asked for that the model did not give.
    """
    chosen = [tensor for tensor, _ in _selected(request, outputs, model)]
    described = [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in chosen]
    return _response_head(request, model, version, described), [t.raw for t in chosen]


def _response_head(
    request: Request, model: str, version: str | None, outputs: list[dict[str, Any]]
) -> dict[str, Any]:
    head: dict[str, Any] = {"model_name": model}
    if version:
        head["model_version"] = version
    if request.id is not None:
        head["id"] = request.id
    head["outputs"] = outputs
    return head


def _selected(request: Request, outputs: Sequence[Tensor], model: str) -> list[tuple[Tensor, bool]]:
    """The outputs to send, each with whether it goes as binary data."""
    if not request.outputs:
        return [(t, request.binary_output) for t in outputs]
    by_name = {t.name: t for t in outputs}
    chosen = []
    for name, binary in request.outputs.items():
        if name not in by_name:
            raise InvalidRequest(f"unexpected inference output '{name}' for model '{model}'")
        chosen.append((by_name[name], request.binary_output if binary is None else binary))
    return chosen


def _request(header: Mapping[str, Any], tensors: list[Tensor], *, rest: bool) -> Request:
    """The canonical ``Request`` for decoded ``tensors``."""
    rid = header.get("id")
    if rid is not None and not isinstance(rid, str):
        raise InvalidRequest("the request id must be a string")
    params = header.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise InvalidRequest("parameters must be an object")
    outputs = _outputs(header.get("outputs"))
    canonical_head: dict[str, Any] = {
        "inputs": [
            {
                "name": t.name,
                "datatype": t.datatype,
                "shape": t.shape,
                "parameters": {"binary_data_size": len(t.raw)},
            }
            for t in tensors
        ]
    }
    if rid is not None:
        canonical_head["id"] = rid
    if outputs:
        canonical_head["outputs"] = [{"name": name} for name in outputs]
    head = orjson.dumps(canonical_head)
    binary = bool(params.get("binary_data_output", False)) if rest and params else False
    body = b"".join([head, *(t.raw for t in tensors)])
    return Request(rid, body, len(head), outputs, binary)


def _outputs(raw: Any) -> dict[str, bool | None]:
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise InvalidRequest("outputs must be a list")
    chosen: dict[str, bool | None] = {}
    for spec in raw:
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise InvalidRequest("each requested output needs a name")
        params = spec.get("parameters")
        binary = params.get("binary_data") if isinstance(params, dict) else None
        chosen[spec["name"]] = None if binary is None else bool(binary)
    return chosen


def _inputs(header: Mapping[str, Any]) -> list[dict[str, Any]]:
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidRequest("the inference request needs a non-empty list of inputs")
    checked = [_checked(spec, "input") for spec in inputs]
    if len(checked) > 1 and len({spec["name"] for spec in checked}) != len(checked):
        raise InvalidRequest("input names must be unique")
    return checked


def _checked(spec: Any, kind: str) -> dict[str, Any]:
    """A tensor's JSON description, its name, datatype and shape checked."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise InvalidRequest(f"each {kind} needs a name, a datatype and a shape")
    name = spec["name"]
    if spec.get("datatype") not in DATATYPES:
        known = ", ".join(DATATYPES)
        raise InvalidRequest(f"{kind} '{name}': datatype must be one of {known}")
    shape = spec.get("shape")
    if not isinstance(shape, list) or not _is_shape(shape):
        raise InvalidRequest(f"{kind} '{name}': shape must be a list of non-negative integers")
    return spec


def _is_shape(shape: list[Any]) -> bool:
    """Whether every dimension is a non-negative ``int`` (a bool is no dimension)."""
    return not shape or (set(map(type, shape)) == _INT and min(shape) >= 0)


def _binary_size(spec: dict[str, Any]) -> int | None:
    params = spec.get("parameters")
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is None:
        return None
    if type(size) is not int or size < 0:
        raise InvalidRequest(f"input '{spec['name']}': binary_data_size must be a byte count")
    if "data" in spec:
        raise InvalidRequest(f"input '{spec['name']}': both data and binary_data_size")
    return size


def _from_raw(spec: dict[str, Any], raw: bytes) -> Tensor:
    """A tensor given as raw bytes, its size checked against its shape."""
    name, datatype, shape = spec["name"], spec["datatype"], spec["shape"]
    count = math.prod(shape)
    if datatype == "BYTES":
        found = _count_elements(raw)
    else:
        found = len(raw) // DATATYPES[datatype] if len(raw) % DATATYPES[datatype] == 0 else -1
    if found != count:
        raise InvalidRequest(
            f"input '{name}': shape {shape} needs {count} {datatype} elements, "
            f"the binary data holds {len(raw)} bytes"
        )
    return Tensor(name, datatype, shape, raw)


def _from_data(spec: dict[str, Any], kind: str = "input") -> Tensor:
    """A tensor given as JSON ``data`` (nested or flat), packed to canonical bytes."""
    name, datatype, shape = spec["name"], spec["datatype"], spec["shape"]
    what = f"{kind} '{name}'"
    if "data" not in spec:
        raise InvalidRequest(f"{what}: no data (nor binary_data_size)")
    try:
        flat = _flatten(spec["data"], what)
    except RecursionError:
        raise InvalidRequest(f"{what}: data nests too deeply") from None
    count = math.prod(shape)
    if len(flat) != count:
        raise InvalidRequest(f"{what}: shape {shape} needs {count} elements, data has {len(flat)}")
    try:
        raw = _pack(datatype, flat)
    except (TypeError, ValueError, OverflowError, struct.error) as exc:
        raise InvalidRequest(f"{what}: data is not {datatype}: {exc}") from None
    return Tensor(name, datatype, shape, raw)


def _flatten(data: Any, what: str) -> list[Any]:
    if not isinstance(data, list):
        return [data]  # a scalar (shape [] or [1])
    if not data or not isinstance(data[0], list):
        return data
    flat: list[Any] = []
    for row in data:
        if not isinstance(row, list):
            raise InvalidRequest(f"{what}: data nests unevenly")
        flat.extend(_flatten(row, what))
    return flat


def _pack(datatype: str, flat: list[Any]) -> bytes:
    """Elements as canonical bytes (raises TypeError and kin on a wrong element)."""
    code = _TYPECODES.get(datatype)
    if code is not None:
        if code not in "fd" and any(type(v) is float for v in flat):
            raise TypeError("integers expected")
        packed = array(code, flat)
        if _SWAP:
            packed.byteswap()
        return packed.tobytes()
    if datatype == "FP16":
        return struct.pack(f"<{len(flat)}e", *flat)
    if datatype == "BOOL":
        if not all(type(v) is bool for v in flat):
            raise TypeError("true or false expected")
        return bytes(flat)
    if datatype == "BYTES":
        return b"".join(_LEN.pack(len(b)) + b for b in map(_element_bytes, flat))
    raise ValueError("BF16 can only be sent as binary data")


def _element_bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return value
    raise TypeError("strings expected")


def _count_elements(raw: bytes) -> int:
    """The number of length-prefixed elements in ``raw``; -1 if they do not fit it."""
    offset = count = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            return -1
        offset += 4 + _LEN.unpack_from(raw, offset)[0]
        count += 1
    return count if offset == len(raw) else -1


def _split_raw(outputs: list[dict[str, Any]], body: bytes, offset: int) -> list[Tensor]:
    """The canonical header's tensors, each cut from ``body`` in order from ``offset``."""
    tensors = []
    for spec in outputs:
        size = spec["parameters"]["binary_data_size"]
        raw = body[offset : offset + size]
        tensors.append(Tensor(spec["name"], spec["datatype"], list(spec["shape"]), raw))
        offset += size
    return tensors


def _unpack(tensor: Tensor) -> list[Any]:
    """A tensor's elements as a flat JSON-ready list."""
    raw, datatype = tensor.raw, tensor.datatype
    code = _TYPECODES.get(datatype)
    if code is not None:
        values = array(code)
        values.frombytes(raw)
        if _SWAP:
            values.byteswap()
        return values.tolist()
    if datatype == "FP16":
        return list(struct.unpack(f"<{len(raw) // 2}e", raw))
    if datatype == "BF16":
        wide = bytearray(2 * len(raw))
        wide[2::4], wide[3::4] = raw[0::2], raw[1::2]
        return _unpack(Tensor(tensor.name, "FP32", tensor.shape, bytes(wide)))
    if datatype == "BOOL":
        return [b != 0 for b in raw]
    return _strings(tensor)


def _strings(tensor: Tensor) -> list[str]:
    raw, offset, values = tensor.raw, 0, []
    while offset < len(raw):
        size = _LEN.unpack_from(raw, offset)[0]
        try:
            values.append(raw[offset + 4 : offset + 4 + size].decode())
        except UnicodeDecodeError:
            raise InvalidRequest(
                f"output '{tensor.name}' holds bytes that are not UTF-8: ask for it as binary data"
            ) from None
        offset += 4 + size
    return values


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise InvalidRequest(f"{what} must be a JSON object")
    return parsed


def _content_type(header_length: int) -> str:
    return f"{CANONICAL_TYPE}{_LENGTH_PARAMETER}{header_length}"


def _header_length(content_type: str) -> int:
    kind, found, value = content_type.partition(_LENGTH_PARAMETER)
    if found and kind == CANONICAL_TYPE and value.isdigit():  # as _content_type writes it
        return int(value)
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key == "header-length" and value.isdigit():
            return int(value)
    raise InvalidRequest(f"no header-length in {content_type!r}")
