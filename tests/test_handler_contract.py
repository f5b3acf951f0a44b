"""The model author's API: parameter decoding, handler loading, Context, run_batch."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

import handlers
from handlers.base import Context, PredictionException, decode_param, load_handler
from handlers.protocol import InferItem, ReplyItem
from handlers.runtime import run_batch, serialise


def test_public_surface():
    assert handlers.__all__ == [
        "Context",
        "PredictionException",
        "send_intermediate_predict_response",
    ]
    assert handlers.Context is Context
    assert handlers.PredictionException is PredictionException


# decode_param


@pytest.mark.parametrize(
    ("content_type", "data", "expected"),
    [
        ("application/json", b'{"a": [1, 2]}', {"a": [1, 2]}),
        ("application/json; charset=utf-8", b"[1.5]", [1.5]),
        (" Application/JSON ", b'"s"', "s"),
        ("text/plain", "héllo".encode(), "héllo"),
        ("text/csv; charset=utf-8", b"a,b", "a,b"),
        ("TEXT/PLAIN", b"x", "x"),
        ("application/octet-stream", b"\x00\x01", b"\x00\x01"),
        ("image/png", b"\x89PNG", b"\x89PNG"),
        ("", b'{"a": 1}', b'{"a": 1}'),
        ("application/json", b"{not json", b"{not json"),
        ("application/json", b"\xff\xfe\xfd", b"\xff\xfe\xfd"),
        ("application/json", b"", b""),
        ("text/plain", b"\xff", b"\xff"),
    ],
)
def test_decode_param(content_type, data, expected):
    result = decode_param(content_type, data)
    assert result == expected
    assert type(result) is type(expected)


def test_decode_param_deeply_nested_json_falls_back_to_bytes():
    data = b"[" * 100_000 + b"]" * 100_000
    assert decode_param("application/json", data) == data


# load_handler


@pytest.fixture
def module(tmp_path, monkeypatch, request):
    """Write a module into a fresh sys.path entry; returns its (unique) name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    counter = iter(range(100))

    def write(source: str) -> str:
        name = f"hc_{request.node.name.split('[')[0]}_{next(counter)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.delitem(sys.modules, name, raising=False)  # dropped again after the test
        return name

    return write


def make_context(batch_size: int = 4) -> Context:
    return Context("m", "1.0", "/models/m", batch_size, gpu_id=None, model_yaml_config={"k": 1})


FUNCTION_HANDLER = """
    CALLS = []

    def handle(batch, context):
        CALLS.append((batch, context.model_name))
        if batch is None:
            return None
        return [item["x"] * 2 for item in batch]
"""


def test_module_with_a_handle_function(module):
    name = module(FUNCTION_HANDLER)
    context = make_context()
    handle = load_handler(name, context)
    loaded = sys.modules[name]
    assert handle is loaded.handle
    assert loaded.CALLS == [(None, "m")]  # called once to initialise
    assert handle([{"x": 1}, {"x": 2}], context) == [2, 4]


CLASS_HANDLER = """
    class Doubler:
        def __init__(self):
            self.context = None

        def initialize(self, context):
            self.context = context

        def handle(self, batch, context):
            return [self.context.model_name] * len(batch)
"""


def test_module_with_one_class(module):
    name = module(CLASS_HANDLER)
    context = make_context()
    handle = load_handler(name, context)
    assert type(handle.__self__).__name__ == "Doubler"
    assert handle.__self__.context is context
    assert handle([{}, {}], context) == ["m", "m"]


def test_class_without_initialize(module):
    name = module("""
        class Plain:
            def handle(self, batch, context):
                return ["plain"] * len(batch)
    """)
    assert load_handler(name, make_context())([{}], make_context()) == ["plain"]


def test_classes_imported_from_elsewhere_do_not_count(module):
    other = module(CLASS_HANDLER)
    name = module(f"""
        from {other} import Doubler

        class Local:
            def handle(self, batch, context):
                return ["local"] * len(batch)

        class Helper:  # not a handler: no handle()
            pass
    """)
    assert load_handler(name, make_context())([{}], make_context()) == ["local"]


def test_two_classes_are_an_error(module):
    name = module("""
        class A:
            def handle(self, batch, context):
                return []

        class B:
            def handle(self, batch, context):
                return []
    """)
    with pytest.raises(TypeError, match="found 2 classes"):
        load_handler(name, make_context())


def test_no_handler_is_an_error(module):
    name = module("VALUE = 1\n")
    with pytest.raises(TypeError, match="found 0 classes"):
        load_handler(name, make_context())


def test_module_colon_class_picks_the_named_class(module):
    name = module("""
        class A:
            def handle(self, batch, context):
                return ["a"] * len(batch)

        class B:
            def initialize(self, context):
                self.size = context.system_properties["batch_size"]

            def handle(self, batch, context):
                return [self.size] * len(batch)
    """)
    assert load_handler(f"{name}:B", make_context(8))([{}], make_context()) == [8]
    assert load_handler(f"{name}:A", make_context())([{}], make_context()) == ["a"]


def test_module_colon_function(module):
    name = module("""
        SEEN = []

        def predict(batch, context):
            SEEN.append(batch)
            return [] if batch is None else ["p"] * len(batch)

        def handle(batch, context):
            raise AssertionError("not this one")
    """)
    handle = load_handler(f"{name}:predict", make_context())
    assert sys.modules[name].SEEN == [None]
    assert handle([{}], make_context()) == ["p"]


def test_module_colon_non_callable_is_an_error(module):
    name = module("LIMIT = 3\n")
    with pytest.raises(TypeError, match="neither a class nor a function"):
        load_handler(f"{name}:LIMIT", make_context())


def test_missing_module_and_attribute(module):
    name = module("def handle(batch, context):\n    return []\n")
    with pytest.raises(ModuleNotFoundError):
        load_handler("hc_surely_absent_module", make_context())
    with pytest.raises(AttributeError):
        load_handler(f"{name}:absent", make_context())


def test_initialize_errors_propagate(module):
    name = module("""
        class Broken:
            def initialize(self, context):
                raise RuntimeError("no weights")

            def handle(self, batch, context):
                return []
    """)
    with pytest.raises(RuntimeError, match="no weights"):
        load_handler(name, make_context())


# Context


def test_context_describes_the_model():
    context = Context("m", "2.0", "/d", 8, gpu_id=1, model_yaml_config={"a": 1})
    assert (context.model_name, context.model_version) == ("m", "2.0")
    assert context.manifest == {"model": {"modelName": "m"}}
    assert context.model_yaml_config == {"a": 1}
    assert context.system_properties == {
        "model_dir": "/d",
        "gpu_id": 1,
        "batch_size": 8,
        "server_name": "trio-supervisor",
    }
    assert Context("m", "1", "", 1).model_yaml_config == {}


def test_context_batch_state():
    context = make_context()
    context.start_batch(["r1", "r2"], [{"X-A": "1"}, {}])
    assert context.get_request_id() == "r1"
    assert context.get_request_id(1) == "r2"
    assert context.get_request_id(2) is None
    assert context.get_request_header(0, "X-A") == "1"
    assert context.get_request_header(0, "x-a") == "1"  # names match regardless of case
    assert context.get_request_header(1, "X-A") is None
    assert context.get_all_request_header(0) == {"X-A": "1"}
    assert [context.response_status(i) for i in (0, 1)] == [200, 200]
    assert context.get_response_content_type(0) is None
    assert context.get_response_headers(1) == {}


def test_context_response_status_headers_and_content_type():
    context = make_context()
    context.start_batch(["r1", "r2", "r3"], [{}, {}, {}])
    context.set_response_status(404, "Not Found", idx=1)
    assert [context.response_status(i) for i in range(3)] == [200, 404, 200]
    context.set_all_response_status(202)
    assert [context.response_status(i) for i in range(3)] == [202, 202, 202]
    context.set_response_status(201)
    assert context.response_status(0) == 201
    context.set_response_content_type(2, "image/png")
    context.set_response_header(2, "X-Trace", "abc")
    assert context.get_response_content_type(2) == "image/png"
    assert context.get_response_headers(2) == {"Content-Type": "image/png", "X-Trace": "abc"}
    assert context.get_response_headers(0) == {}


def test_start_batch_resets_the_previous_batch():
    context = make_context()
    context.start_batch(["a"], [{}])
    context.set_response_status(500)
    context.set_response_header(0, "X", "1")
    context.start_batch(["b"], [{}])
    assert context.get_request_id() == "b"
    assert context.response_status(0) == 200
    assert context.get_response_headers(0) == {}


def test_prediction_exception():
    exc = PredictionException("bad input", 422)
    assert (exc.message, exc.error_code, str(exc)) == ("bad input", 422, "bad input")
    assert PredictionException("x").error_code == 500


# run_batch and serialise


def item(request_id: str, value: object = None, **headers: str) -> InferItem:
    body = json.dumps(value).encode()
    return InferItem(request_id, headers, {"body": ("application/json", body)})


def test_results_of_each_type_are_serialised():
    def handle(batch, context):
        return [b"\x00raw", "text", {"n": batch[2]["body"]}]

    replies = run_batch(handle, make_context(), [item("a"), item("b"), item("c", 5)])
    assert replies == [
        ReplyItem("a", ok=True, body=b"\x00raw", content_type="application/octet-stream"),
        ReplyItem("b", ok=True, body=b"text", content_type="text/plain; charset=utf-8"),
        ReplyItem("c", ok=True, body=b'{"n": 5}', content_type="application/json"),
    ]


def test_the_handler_sees_decoded_params_ids_and_headers():
    seen = {}

    def handle(batch, context):
        seen["batch"] = batch
        seen["ids"] = [context.get_request_id(i) for i in range(len(batch))]
        seen["header"] = context.get_request_header(1, "X-Tag")
        return [None] * len(batch)

    items = [
        item("a", {"x": 1}),
        InferItem("b", {"X-Tag": "t"}, {"name": ("text/plain", b"bob"), "raw": ("", b"\x01")}),
    ]
    replies = run_batch(handle, make_context(), items)
    assert seen == {
        "batch": [{"body": {"x": 1}}, {"name": "bob", "raw": b"\x01"}],
        "ids": ["a", "b"],
        "header": "t",
    }
    assert [r.body for r in replies] == [b"null", b"null"]


def test_prediction_exception_fails_every_item_with_its_status():
    def handle(batch, context):
        raise PredictionException("I'm a teapot", 418)

    replies = run_batch(handle, make_context(), [item("a"), item("b")])
    assert replies == [
        ReplyItem("a", ok=False, status=418, message="I'm a teapot"),
        ReplyItem("b", ok=False, status=418, message="I'm a teapot"),
    ]


def test_a_generic_exception_gives_503(capsys):
    def handle(batch, context):
        raise KeyError("weights")

    replies = run_batch(handle, make_context(), [item("a"), item("b")])
    assert [(r.request_id, r.ok, r.status) for r in replies] == [
        ("a", False, 503),
        ("b", False, 503),
    ]
    assert replies[0].message == "Prediction failed: KeyError: 'weights'"
    assert "KeyError" in capsys.readouterr().err  # the traceback goes to the worker's log


def test_memory_error_gives_507(capsys):
    def handle(batch, context):
        raise MemoryError

    replies = run_batch(handle, make_context(), [item("a")])
    assert replies == [ReplyItem("a", ok=False, status=507, message="Out of resources")]
    assert "MemoryError" in capsys.readouterr().err


@pytest.mark.parametrize("results", [[], ["one"], ["1", "2", "3"], ("1", "2"), None, "ab"])
def test_wrong_shaped_results_give_503(results):
    replies = run_batch(lambda batch, context: results, make_context(), [item("a"), item("b")])
    assert [(r.ok, r.status) for r in replies] == [(False, 503), (False, 503)]
    assert all("one result per request" in r.message for r in replies)


def test_per_item_status_and_headers_from_the_context():
    def handle(batch, context):
        context.set_response_status(201, idx=0)
        context.set_response_status(404, "Not Found", idx=1)
        context.set_response_content_type(1, "application/problem+json")
        context.set_response_header(1, "X-Reason", "absent")
        return [{"ok": 1}, {"error": "absent"}]

    replies = run_batch(handle, make_context(), [item("a"), item("b")])
    assert replies == [
        ReplyItem("a", ok=True, status=201, body=b'{"ok": 1}', content_type="application/json"),
        ReplyItem(
            "b",
            ok=True,
            status=404,
            body=b'{"error": "absent"}',
            content_type="application/problem+json",
            headers={"X-Reason": "absent"},
        ),
    ]


def test_status_does_not_leak_into_the_next_batch():
    context = make_context()

    def teapot(batch, context):
        context.set_all_response_status(418)
        return ["x"] * len(batch)

    assert run_batch(teapot, context, [item("a")])[0].status == 418
    assert run_batch(lambda b, c: ["y"], context, [item("b")])[0].status == 200


def test_an_unserialisable_result_fails_only_its_item():
    replies = run_batch(lambda b, c: ["fine", object()], make_context(), [item("a"), item("b")])
    assert replies[0] == ReplyItem(
        "a", ok=True, body=b"fine", content_type="text/plain; charset=utf-8"
    )
    assert (replies[1].ok, replies[1].status) == (False, 503)
    assert replies[1].message.startswith("Unsupported model output data type")


def test_a_deeply_nested_json_param_does_not_break_the_batch():
    deep = b"[" * 100_000 + b"]" * 100_000
    items = [InferItem("a", {}, {"body": ("application/json", deep)})]
    replies = run_batch(lambda batch, c: [len(batch[0]["body"])], make_context(), items)
    assert replies == [ReplyItem("a", ok=True, body=b"200000", content_type="application/json")]


def test_empty_batch():
    assert run_batch(lambda batch, context: [], make_context(), []) == []


class FakeArray:
    def tolist(self):
        return [[1, 2], [3]]


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (b"ab", (b"ab", "application/octet-stream")),
        (bytearray(b"ab"), (b"ab", "application/octet-stream")),
        (memoryview(b"ab"), (b"ab", "application/octet-stream")),
        ("é", ("é".encode(), "text/plain; charset=utf-8")),
        ({"a": [1, None]}, (b'{"a": [1, null]}', "application/json")),
        (3, (b"3", "application/json")),
        (FakeArray(), (b"[[1, 2], [3]]", "application/json")),
    ],
)
def test_serialise(result, expected):
    body, content_type = serialise(result)
    assert (body, content_type) == expected
    assert type(body) is bytes


def test_serialise_rejects_what_json_cannot_hold():
    with pytest.raises(TypeError):
        serialise({1, 2})
