"""The OIP v2 tensor codec (supervisor.api.oipcodec): pure, checked against numpy's layout."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from supervisor.api.oipcodec import (
    CANONICAL_TYPE,
    OIP_FIELD,
    Request,
    Tensor,
    decode_reply,
    decode_rest,
    decode_split,
    render_rest,
    render_split,
)
from supervisor.errors import InvalidRequest

NUMPY = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


def canonical(request: Request) -> tuple[dict[str, Any], bytes]:
    """The canonical header and the raw bytes after it, as the worker reads them."""
    content_type, body = request.params["body"]
    assert content_type == f"{CANONICAL_TYPE}; header-length={request.header_length}"
    return orjson.loads(body[: request.header_length]), body[request.header_length :]


def arrays(datatype: str) -> st.SearchStrategy[np.ndarray]:
    dtype = np.dtype(NUMPY[datatype]).newbyteorder("<")
    elements = None
    if datatype.startswith("FP"):
        elements = {"allow_nan": False, "allow_infinity": False}
    return hnp.arrays(
        dtype, hnp.array_shapes(min_dims=0, max_dims=3, max_side=4), elements=elements
    )


@pytest.mark.parametrize("datatype", sorted(NUMPY))
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_json_data_packs_as_numpy_lays_it_out(datatype: str, data: st.DataObject) -> None:
    array = data.draw(arrays(datatype))
    nested = data.draw(st.booleans())
    values = array.tolist() if nested else array.flatten().tolist()
    spec = {"name": "x", "datatype": datatype, "shape": list(array.shape), "data": values}
    request = decode_rest(orjson.dumps({"inputs": [spec]}), None)
    header, raw = canonical(request)
    assert raw == array.tobytes()
    assert header["inputs"] == [
        {
            "name": "x",
            "datatype": datatype,
            "shape": list(array.shape),
            "parameters": {"binary_data_size": array.nbytes},
        }
    ]
    tensor = Tensor("y", datatype, list(array.shape), array.tobytes())
    body, header_length = render_rest(request, [tensor], model="m", version=None)
    assert header_length is None
    out = orjson.loads(body)["outputs"][0]
    assert np.array_equal(np.array(out["data"], dtype=array.dtype).reshape(array.shape), array)


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.text(max_size=10), max_size=8), binary=st.booleans())
def test_bytes_elements_are_length_prefixed_both_ways(values: list[str], binary: bool) -> None:
    raw = b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)
    spec: dict[str, Any] = {"name": "s", "datatype": "BYTES", "shape": [len(values)]}
    if binary:
        spec["parameters"] = {"binary_data_size": len(raw)}
        head = orjson.dumps({"inputs": [spec]})
        request = decode_rest(head + raw, len(head))
    else:
        spec["data"] = values
        request = decode_rest(orjson.dumps({"inputs": [spec]}), None)
    assert canonical(request)[1] == raw
    body, _ = render_rest(
        request, [Tensor("o", "BYTES", [len(values)], raw)], model="m", version=None
    )
    assert orjson.loads(body)["outputs"][0]["data"] == values


def test_binary_and_json_inputs_mix_and_keep_their_order() -> None:
    floats = np.arange(6, dtype="<f4").reshape(2, 3)
    header = {
        "id": "42",
        "parameters": {"unknown": 1, "binary_data_output": True},
        "inputs": [
            {
                "name": "a",
                "datatype": "FP32",
                "shape": [2, 3],
                "parameters": {"binary_data_size": 24},
            },
            {"name": "b", "datatype": "INT64", "shape": [2], "data": [[7], [8]]},
        ],
        "outputs": [{"name": "z", "parameters": {"binary_data": False}}, {"name": "y"}],
    }
    head = orjson.dumps(header)
    request = decode_rest(head + floats.tobytes(), len(head))
    worker_header, raw = canonical(request)
    assert raw == floats.tobytes() + np.array([7, 8], dtype="<i8").tobytes()
    assert worker_header["id"] == "42"
    assert worker_header["outputs"] == [{"name": "z"}, {"name": "y"}]
    assert request.id == "42"
    assert request.outputs == {"z": False, "y": None}
    assert request.binary_output is True
    assert request.fields == {OIP_FIELD: "v2"}


def test_render_rest_binary_and_json_outputs_as_asked() -> None:
    header = {
        "id": "7",
        "parameters": {"binary_data_output": True},
        "inputs": [{"name": "a", "datatype": "INT32", "shape": [1], "data": [1]}],
        "outputs": [{"name": "z", "parameters": {"binary_data": False}}, {"name": "y"}],
    }
    request = decode_rest(orjson.dumps(header), None)
    y = np.array([1.5, 2.5], dtype="<f8")
    outputs = [
        Tensor("y", "FP64", [2], y.tobytes()),
        Tensor("z", "INT8", [3], np.array([-1, 0, 1], dtype="i1").tobytes()),
        Tensor("unasked", "BOOL", [1], b"\x01"),
    ]
    body, header_length = render_rest(request, outputs, model="m", version="2.0")
    assert header_length is not None
    head = orjson.loads(body[:header_length])
    assert head == {
        "model_name": "m",
        "model_version": "2.0",
        "id": "7",
        "outputs": [
            {"name": "z", "datatype": "INT8", "shape": [3], "data": [-1, 0, 1]},
            {"name": "y", "datatype": "FP64", "shape": [2], "parameters": {"binary_data_size": 16}},
        ],
    }
    assert body[header_length:] == y.tobytes()


def test_unknown_output_asked_for_is_refused_naming_it() -> None:
    header = {
        "inputs": [{"name": "a", "datatype": "INT32", "shape": [1], "data": [1]}],
        "outputs": [{"name": "nope"}],
    }
    request = decode_rest(orjson.dumps(header), None)
    with pytest.raises(InvalidRequest, match="'nope'"):
        render_rest(request, [Tensor("y", "BOOL", [1], b"\x00")], model="m", version=None)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2]}, "'x'.*3 elements"),
        ({"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3]]}, "'x'"),
        ({"name": "x", "datatype": "INT8", "shape": [1], "data": [300]}, "'x'.*INT8"),
        ({"name": "x", "datatype": "INT32", "shape": [1], "data": [1.5]}, "'x'.*INT32"),
        ({"name": "x", "datatype": "UINT8", "shape": [1], "data": [-1]}, "'x'"),
        ({"name": "x", "datatype": "BOOL", "shape": [1], "data": [1]}, "'x'.*BOOL"),
        ({"name": "x", "datatype": "BYTES", "shape": [1], "data": [1]}, "'x'.*BYTES"),
        ({"name": "x", "datatype": "BF16", "shape": [1], "data": [1.0]}, "'x'.*binary"),
        ({"name": "x", "datatype": "FP99", "shape": [1], "data": [1]}, "'x'.*datatype"),
        ({"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}, "'x'.*shape"),
        ({"name": "x", "datatype": "FP32", "shape": "1", "data": [1]}, "'x'.*shape"),
        ({"name": "x", "datatype": "FP32", "shape": [True], "data": [1]}, "'x'.*shape"),
        ({"name": "x", "datatype": "FP32", "shape": [1.0], "data": [1]}, "'x'.*shape"),
        ({"name": "x", "datatype": "FP32", "shape": [1, "1"], "data": [1]}, "'x'.*shape"),
        ({"name": "x", "datatype": "FP32", "shape": [1, None], "data": [1]}, "'x'.*shape"),
        ({"name": "x", "datatype": "FP32", "shape": [1]}, "'x'.*no data"),
        ({"datatype": "FP32", "shape": [1], "data": [1]}, "name"),
        ({"name": "x", "datatype": "FP32", "shape": [1], "data": [[[[]]]] * 1}, "'x'"),
    ],
)
def test_bad_json_inputs_are_refused_naming_the_input(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        decode_rest(orjson.dumps({"inputs": [spec]}), None)


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [
        (b"not json", None, "not valid JSON"),
        (b"[]", None, "JSON object"),
        (b"{}", None, "inputs"),
        (b'{"inputs": []}', None, "inputs"),
        (b"{}", 10, "beyond the body"),
    ],
)
def test_bad_bodies_are_refused(body: bytes, header_length: int | None, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        decode_rest(body, header_length)


@pytest.mark.parametrize(
    ("size", "extra", "message"),
    [
        (8, b"", "'a'.*shape"),
        (16, b"", "'a'.*beyond"),
        (12, b"xx", "2 bytes of binary data"),
    ],
)
def test_binary_sizes_are_checked_against_shape_and_body(
    size: int, extra: bytes, message: str
) -> None:
    header = {
        "inputs": [
            {
                "name": "a",
                "datatype": "FP32",
                "shape": [3],
                "parameters": {"binary_data_size": size},
            }
        ]
    }
    head = orjson.dumps(header)
    with pytest.raises(InvalidRequest, match=message):
        decode_rest(head + bytes(12) + extra, len(head))


def test_bf16_goes_as_binary_and_renders_as_numbers() -> None:
    raw = np.array([1.0, -2.5], dtype="<f4").tobytes()
    bf16 = raw[2:4] + raw[6:8]  # the top halves
    header = {
        "inputs": [
            {"name": "h", "datatype": "BF16", "shape": [2], "parameters": {"binary_data_size": 4}}
        ]
    }
    head = orjson.dumps(header)
    request = decode_rest(head + bf16, len(head))
    assert canonical(request)[1] == bf16
    body, _ = render_rest(request, [Tensor("o", "BF16", [2], bf16)], model="m", version=None)
    assert orjson.loads(body)["outputs"][0]["data"] == [1.0, -2.5]


def test_split_form_round_trip_for_grpc() -> None:
    ints = np.array([[1, 2], [3, 4]], dtype="<i8")
    header = {
        "id": "g",
        "inputs": [{"name": "a", "datatype": "INT64", "shape": [2, 2]}],
        "outputs": [{"name": "o"}],
    }
    request = decode_split(header, [ints.tobytes()])
    assert canonical(request)[1] == ints.tobytes()
    typed = decode_split({"inputs": [{**header["inputs"][0], "data": [1, 2, 3, 4]}]}, [])
    assert canonical(typed)[1] == ints.tobytes()
    with pytest.raises(InvalidRequest, match="2 raw input contents for 1 inputs"):
        decode_split(header, [b"", b""])
    fields, raws = render_split(
        request, [Tensor("o", "INT64", [2, 2], ints.tobytes())], model="m", version="1"
    )
    assert fields == {
        "model_name": "m",
        "model_version": "1",
        "id": "g",
        "outputs": [{"name": "o", "datatype": "INT64", "shape": [2, 2]}],
    }
    assert raws == [ints.tobytes()]


def test_decode_reply_reads_canonical_and_oip_json_and_passes_anything_else() -> None:
    head = orjson.dumps(
        {
            "outputs": [
                {
                    "name": "o",
                    "datatype": "INT16",
                    "shape": [2],
                    "parameters": {"binary_data_size": 4},
                },
                {
                    "name": "p",
                    "datatype": "BOOL",
                    "shape": [1],
                    "parameters": {"binary_data_size": 1},
                },
            ]
        }
    )
    body = head + np.array([5, -6], dtype="<i2").tobytes() + b"\x01"
    tensors = decode_reply(body, f"{CANONICAL_TYPE}; header-length={len(head)}")
    assert tensors == [
        Tensor("o", "INT16", [2], np.array([5, -6], dtype="<i2").tobytes()),
        Tensor("p", "BOOL", [1], b"\x01"),
    ]
    oip_json = {
        "id": "x",
        "outputs": [{"name": "o", "datatype": "FP32", "shape": [1], "data": [0.5]}],
    }
    assert decode_reply(orjson.dumps(oip_json), "application/json") == [
        Tensor("o", "FP32", [1], np.array([0.5], dtype="<f4").tobytes())
    ]
    assert decode_reply(b'{"prediction": 1}', "application/json") is None
    assert decode_reply(b"plain text", "text/plain") is None


def test_non_utf8_bytes_output_must_be_asked_for_as_binary() -> None:
    request = decode_rest(
        orjson.dumps({"inputs": [{"name": "a", "datatype": "BOOL", "shape": [0], "data": []}]}),
        None,
    )
    raw = struct.pack("<I", 1) + b"\xff"
    with pytest.raises(InvalidRequest, match=r"'o'.*binary"):
        render_rest(request, [Tensor("o", "BYTES", [1], raw)], model="m", version=None)


def test_data_nested_past_the_recursion_limit_is_refused() -> None:
    deep = "[" * 1000 + "1.0" + "]" * 1000  # within orjson's limit, past Python's
    head = '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": '
    body = head + deep + "}]}"
    with pytest.raises(InvalidRequest, match="'x'"):
        decode_rest(body.encode(), None)


def test_a_handlers_oip_json_answer_with_bad_outputs_is_refused_naming_the_output() -> None:
    answer = {"outputs": [{"name": "o", "datatype": "INT8", "shape": [1], "data": [999]}]}
    with pytest.raises(InvalidRequest, match="output 'o'"):
        decode_reply(orjson.dumps(answer), "application/json")
