"""TorchServe's handler API: Context additions, metrics, BaseHandler, handler strings, ts.*."""

from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from handlers.base import BUILTIN_HANDLERS, PredictionException, load_handler, split_handler_spec
from handlers.context import Context
from handlers.labels import load_label_mapping, map_class_to_label
from handlers.metrics import Dimension, Metrics, MetricTypes, timed
from handlers.protocol import InferItem
from handlers.runtime import read_manifest, run_batch
from handlers.torch_handler import BaseHandler
from handlers.torchserve import ALIASES, install_torchserve_names
from supervisor import ModelConfig, open_supervisor
from tests.helpers import eventually

EAGER_MODEL_FILE = """
import torch


class Helper:  # not a module: does not count
    pass


class Regressor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(x)
"""


def traced(module: torch.nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` without its deprecation warning (an error under pytest)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.trace(module.eval(), example)


def seeded_linear() -> torch.nn.Linear:
    torch.manual_seed(7)
    return torch.nn.Linear(3, 2)


def write_manifest(directory: Path, **model: str) -> None:
    (directory / "MAR-INF").mkdir(parents=True, exist_ok=True)
    manifest = {"runtime": "python", "model": {"modelName": "m", "modelVersion": "1.0", **model}}
    (directory / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))


def torchscript_dir(directory: Path) -> torch.nn.Linear:
    """A model directory holding a traced Linear(3, 2); returns the eager original."""
    directory.mkdir(parents=True, exist_ok=True)
    model = seeded_linear()
    traced(model, torch.zeros(1, 3)).save(str(directory / "model.pt"))
    write_manifest(directory, serializedFile="model.pt", handler="base_handler")
    return model


def eager_dir(directory: Path, module: str) -> torch.nn.Linear:
    """A model directory with ``<module>.py`` and its state dict; returns the weights."""
    directory.mkdir(parents=True, exist_ok=True)
    model = seeded_linear()
    (directory / f"{module}.py").write_text(EAGER_MODEL_FILE)
    state = {"fc.weight": model.weight.detach(), "fc.bias": model.bias.detach()}
    torch.save(state, directory / "weights.pt")
    write_manifest(directory, serializedFile="weights.pt", modelFile=f"{module}.py")
    return model


@pytest.fixture
def imports(monkeypatch, tmp_path):
    """Undo what a test adds to sys.path, sys.meta_path and sys.modules."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        origin = str(getattr(sys.modules[name], "__file__", "") or "")
        if name == "ts" or name.startswith("ts.") or origin.startswith(str(tmp_path)):
            del sys.modules[name]


def context_for(directory: Path | str, gpu_id: int | None = None, **yaml: object) -> Context:
    manifest = read_manifest(str(directory))
    return Context("m", "1.0", str(directory), 4, gpu_id, dict(yaml), manifest=manifest)


def close(answer: object, expected: object) -> None:
    """The handler's JSON-able answer equals the tensor (or list) computed here."""
    torch.testing.assert_close(torch.tensor(answer), torch.as_tensor(expected).detach())


def run(handler: BaseHandler, context: Context, rows: list, **headers: str) -> list:
    context.start_batch([f"r{i}" for i in range(len(rows))], [dict(headers) for _ in rows])
    return handler.handle(rows, context)


def test_handler_modules_import_neither_torch_nor_pillow():
    code = (
        "import sys, handlers.torch_handler, handlers.torchserve, handlers.builtin.tensor_handler,"
        " handlers.builtin.image_classifier, handlers.builtin.text_classifier;"
        "bad = [m for m in ('torch', 'PIL', 'supervisor', 'trio') if m in sys.modules];"
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# Context


def test_context_metrics_sequence_ids_and_response_status():
    context = Context("m", "1.0", "", 2)
    assert (context.cl_socket, context.stopping_criteria) == (None, None)
    assert isinstance(context.metrics, Metrics)
    context.start_batch(["a", "b"], [{"ts_request_sequence_id": "seq-1"}, {}])
    assert context.metrics.request_ids == {0: "a", 1: "b"}
    assert context.get_sequence_id(0) == "seq-1"
    assert context.get_sequence_id(1) is None
    context.set_all_response_status(206, "Partial")
    assert context.get_response_status(1) == (206, "Partial")
    assert Context("m", "1.0", "", 1, manifest={"model": {"x": 1}}).manifest == {"model": {"x": 1}}


def test_read_manifest(tmp_path):
    assert read_manifest("") is None
    assert read_manifest(str(tmp_path)) is None
    write_manifest(tmp_path, serializedFile="model.pt")
    assert read_manifest(str(tmp_path))["model"]["serializedFile"] == "model.pt"
    (tmp_path / "MAR-INF" / "MANIFEST.json").write_text("[1]")
    with pytest.raises(ValueError, match="not a JSON object"):
        read_manifest(str(tmp_path))


# Metrics


def test_metrics_record_and_log_one_line_each(capsys):
    metrics = Metrics("m")
    metrics.set_request_ids({0: "a", 1: "b"})
    metrics.add_time("HandlerTime", 12.5, None, "ms")
    metrics.add_counter("Hits", 1, idx=1)
    metrics.add_counter("Hits", 2, idx=1)
    metrics.add_size("Blob", 3, unit="kB", dimensions=[Dimension("Kind", "png")])
    metrics.add_percent("Load", 50)
    metrics.add_error("Oops", 1)
    metrics.add_metric("Custom", 7, "things", metric_type=MetricTypes.HISTOGRAM)
    assert metrics.get_metric("HandlerTime", MetricTypes.GAUGE).value == 12.5
    assert metrics.get_metric("Hits").value == 3  # counters add up
    assert metrics.get_metric("Hits").updates == 2
    assert metrics.get_metric("Blob", MetricTypes.GAUGE).unit == "kB"
    assert metrics.get_metric("Custom", MetricTypes.HISTOGRAM).value == 7
    with pytest.raises(KeyError):
        metrics.get_metric("Hits", MetricTypes.GAUGE)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 7
    assert lines[0] == (
        "[METRICS]HandlerTime.ms:12.5|#ModelName:m,Level:Model|#type:gauge|#requestID:a,b"
    )
    assert lines[1].endswith("|#requestID:b")
    assert lines[3].startswith("[METRICS]Blob.kB:3|#Kind:png,ModelName:m,Level:Model|")


def test_metrics_reject_bad_units_and_values():
    metrics = Metrics("m", emit=lambda line: None)
    with pytest.raises(ValueError, match="time metric"):
        metrics.add_time("T", 1, unit="h")
    with pytest.raises(ValueError, match="size metric"):
        metrics.add_size("S", 1, unit="TB")
    with pytest.raises(TypeError, match="must be a number"):
        metrics.add_counter("C", "many")  # type: ignore[arg-type]
    metric = metrics.add_metric_to_cache("Queue", "count", ["ModelName"], MetricTypes.GAUGE)
    metric.update(4)
    assert metrics.get_metric("Queue", MetricTypes.GAUGE).value == 4


@pytest.mark.parametrize("profile", [True, False])
def test_timed_records_only_when_the_handler_settings_ask(profile):
    class Timed:
        def __init__(self, context):
            self.context = context

        @timed
        def preprocess(self, data):
            return data * 2

    lines: list[str] = []
    context = Context("m", "1.0", "", 1, model_yaml_config={"handler": {"profile": profile}})
    context.metrics = Metrics("m", emit=lines.append)
    assert Timed(context).preprocess(2) == 4
    assert any("ts_handler_preprocess.ms" in line for line in lines) is profile


# Labels


def test_label_mapping_formats(tmp_path):
    path = tmp_path / "index_to_name.json"
    assert load_label_mapping(str(path)) is None
    path.write_text(json.dumps({"0": ["n01440764", "tench"], "1": "goldfish"}))
    assert load_label_mapping(str(path)) == {"0": "tench", "1": "goldfish"}
    path.write_text(json.dumps({"object_type_names": ["cat", "dog"]}))
    assert load_label_mapping(str(path)) == {"0": "cat", "1": "dog"}
    path.write_text(json.dumps(["cat"]))
    with pytest.raises(ValueError, match="must map"):
        load_label_mapping(str(path))


def test_map_class_to_label():
    assert map_class_to_label([[0.1, 0.9]]) == [{"0": 0.1, "1": 0.9}]
    assert map_class_to_label([[0.9]], {"1": "dog"}, [[1]]) == [{"dog": 0.9}]


# Handler strings


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("handler.py", ("handler", "")),
        ("handler.py:predict", ("handler", "predict")),
        ("some/dir/handler.py:predict", ("handler", "predict")),
        ("module:Class", ("module", "Class")),
        ("handlers.builtin.iris", ("handlers.builtin.iris", "")),
        ("image_classifier", ("image_classifier", "")),
    ],
)
def test_split_handler_spec(spec, expected):
    assert split_handler_spec(spec) == expected


def test_a_handler_path_puts_its_directory_on_sys_path(imports, tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "pathy.py").write_text("def go(batch, context):\n    return ['p']\n")
    handle = load_handler(f"{tmp_path}/code/pathy.py:go", Context("m", "1", "", 1))
    assert handle([{}], Context("m", "1", "", 1)) == ["p"]
    assert str(tmp_path / "code") in sys.path


def test_builtin_names_fall_back_to_ours(imports, tmp_path):
    torchscript_dir(tmp_path)
    handle = load_handler("tensor_handler", context_for(tmp_path))
    assert type(handle.__self__).__module__ == "handlers.builtin.tensor_handler"
    handle = load_handler("base_handler", context_for(tmp_path))
    assert type(handle.__self__) is BaseHandler
    assert set(BUILTIN_HANDLERS) >= {"image_classifier", "text_classifier", "tensor_handler"}


def test_a_model_module_with_a_builtin_name_wins(imports, tmp_path):
    (tmp_path / "image_classifier.py").write_text(
        "class Mine:\n    def handle(self, batch, context):\n        return ['mine']\n"
    )
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    assert load_handler("image_classifier", Context("m", "1", "", 1))([{}], None) == ["mine"]


def test_a_missing_dependency_of_a_handler_is_not_hidden_by_the_fallback(imports, tmp_path):
    (tmp_path / "text_classifier.py").write_text("import surely_absent_dependency\n")
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    with pytest.raises(ModuleNotFoundError, match="surely_absent_dependency"):
        load_handler("text_classifier", Context("m", "1", "", 1))


# BaseHandler


def test_torchscript_model_is_loaded_and_run(imports, tmp_path):
    model = torchscript_dir(tmp_path)
    (tmp_path / "index_to_name.json").write_text(json.dumps({"0": "a", "1": "b"}))
    handler = BaseHandler()
    context = context_for(tmp_path)
    handler.initialize(context)
    assert handler.initialized
    assert handler.device == torch.device("cpu")
    assert handler.mapping == {"0": "a", "1": "b"}
    assert handler.manifest is context.manifest
    assert isinstance(handler.model, torch.jit.ScriptModule)
    rows = [[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]]
    answers = run(handler, context, [{"body": rows[0]}, {"data": json.dumps(rows[1])}])
    expected = model(torch.tensor(rows)).tolist()
    close(answers, expected)
    assert context.metrics.get_metric("HandlerTime", MetricTypes.GAUGE).updates == 1


def test_eager_model_file_and_state_dict(imports, tmp_path):
    model = eager_dir(tmp_path, "eager_regressor")
    sys.path.insert(0, str(tmp_path))
    handler = BaseHandler()
    context = context_for(tmp_path)
    handler.initialize(context)
    assert type(handler.model).__name__ == "Regressor"
    assert not handler.model.training
    assert handler.mapping is None
    answers = run(handler, context, [{"body": [1.0, 2.0, 3.0]}])
    close(answers, model(torch.tensor([[1.0, 2.0, 3.0]])))


def test_eager_model_without_weights_is_built_as_is(imports, tmp_path):
    eager_dir(tmp_path, "eager_unweighted")
    write_manifest(tmp_path, modelFile="eager_unweighted.py")
    sys.path.insert(0, str(tmp_path))
    handler = BaseHandler()
    handler.initialize(context_for(tmp_path))
    assert handler.model_pt_path is None
    assert handler.model.fc.in_features == 3


@pytest.mark.parametrize(
    ("model", "error", "match"),
    [
        ({}, RuntimeError, "no serializedFile"),
        ({"serializedFile": "model.onnx"}, RuntimeError, "ONNX models are not supported"),
        ({"modelFile": "absent.py"}, RuntimeError, "Missing the model file absent.py"),
        ({"modelFile": "two_nets.py"}, ValueError, r"exactly one torch.nn.Module class"),
    ],
)
def test_models_that_cannot_be_loaded(imports, tmp_path, model, error, match):
    (tmp_path / "two_nets.py").write_text(
        "import torch\nclass A(torch.nn.Module): pass\nclass B(torch.nn.Module): pass\n"
    )
    sys.path.insert(0, str(tmp_path))
    write_manifest(tmp_path, **model)
    with pytest.raises(error, match=match):
        BaseHandler().initialize(context_for(tmp_path))


def test_cpu_without_cuda_even_when_given_a_gpu(imports, tmp_path, monkeypatch):
    torchscript_dir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    handler = BaseHandler()
    handler.initialize(context_for(tmp_path, gpu_id=0))
    assert handler.get_device() == torch.device("cpu")
    assert handler.map_location == "cpu"


@pytest.mark.gpu
def test_the_model_runs_on_the_gpu_it_is_given(imports, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model = torchscript_dir(tmp_path)
    handler = BaseHandler()
    context = context_for(tmp_path, gpu_id=0)
    handler.initialize(context)
    assert handler.device == torch.device("cuda:0")
    assert next(handler.model.parameters()).device == torch.device("cuda:0")
    answers = run(handler, context, [{"body": [1.0, 2.0, 3.0]}])
    close(answers, model(torch.tensor([[1.0, 2.0, 3.0]])))


class Described(BaseHandler):
    def describe_handle(self):
        return {"inputs": 3}


def test_describe_and_explain_headers(imports, tmp_path):
    model = torchscript_dir(tmp_path)
    handler = Described()
    context = context_for(tmp_path)
    handler.initialize(context)
    assert run(handler, context, [{"body": b""}], describe="True") == [{"inputs": 3}]
    explained = run(handler, context, [{"body": [1.0, 2.0, 3.0], "target": 1}], explain="True")
    assert handler.explain
    close(explained, model(torch.tensor([[1.0, 2.0, 3.0]])))
    assert BaseHandler().describe_handle() is None


def test_explain_passes_the_first_request_and_its_target_to_get_insights(imports, tmp_path):
    torchscript_dir(tmp_path)
    seen = []

    class Insightful(BaseHandler):
        def get_insights(self, tensor_data, raw_input, target=0):
            seen.append((tuple(tensor_data.shape), raw_input, target))
            return ["insight"]

    handler = Insightful()
    context = context_for(tmp_path)
    handler.initialize(context)
    rows = [{"data": [1, 2, 3], "target": 1}, {"data": [4, 5, 6]}]
    assert run(handler, context, rows, explain="True") == ["insight"]
    assert seen == [((2, 3), [1, 2, 3], 1)]


def test_bad_input_is_a_400_for_the_batch(imports, tmp_path):
    torchscript_dir(tmp_path)
    handler = BaseHandler()
    context = context_for(tmp_path)
    handler.initialize(context)
    with pytest.raises(PredictionException) as caught:
        run(handler, context, [{"body": b"not json"}])
    assert caught.value.error_code == 400
    with pytest.raises(PredictionException):
        run(handler, context, [{"body": [1.0, 2.0, 3.0]}, {"body": [1.0]}])


# TorchServe's module names


def test_ts_names_are_ours(imports):
    assert install_torchserve_names()
    assert install_torchserve_names()  # idempotent
    from ts.context import Context as TsContext
    from ts.metrics.dimension import Dimension as TsDimension
    from ts.metrics.metric_type_enum import MetricTypes as TsMetricTypes
    from ts.torch_handler.base_handler import BaseHandler as TsBaseHandler
    from ts.torch_handler.image_classifier import ImageClassifier
    from ts.torch_handler.text_classifier import TextClassifier
    from ts.torch_handler.vision_handler import VisionHandler
    from ts.utils.util import PredictionException as TsPredictionException
    from ts.utils.util import map_class_to_label as ts_map

    assert TsBaseHandler is BaseHandler
    assert TsContext is Context
    assert TsPredictionException is PredictionException
    assert (TsDimension, TsMetricTypes, ts_map) == (Dimension, MetricTypes, map_class_to_label)
    assert issubclass(ImageClassifier, VisionHandler)
    assert issubclass(TextClassifier, BaseHandler)
    assert sys.modules["ts.torch_handler"].__path__ == []
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("ts.torch_handler.object_detector")
    for name in ALIASES:
        importlib.import_module(name)


def test_a_real_torchserve_wins(imports, tmp_path):
    (tmp_path / "ts").mkdir()
    (tmp_path / "ts" / "__init__.py").write_text("REAL = True\n")
    sys.path.insert(0, str(tmp_path))
    importlib.invalidate_caches()
    assert not install_torchserve_names()
    assert importlib.import_module("ts").REAL


TORCHSERVE_STYLE_HANDLER = """
import json
import logging
import logging

import torch
from ts.context import Context
from ts.torch_handler.base_handler import BaseHandler
from ts.utils.util import PredictionException

logger = logging.getLogger(__name__)


class DoublingHandler(BaseHandler):
    def initialize(self, context: Context):
        super().initialize(context)
        self.scale = context.model_yaml_config.get("handler", {}).get("scale", 2)

    def preprocess(self, data):
        rows = [row.get("data") or row.get("body") for row in data]
        if any(not isinstance(r, list) for r in rows):
            raise PredictionException("send a JSON list", 422)
        return torch.tensor(rows, dtype=torch.float32)

    def postprocess(self, data):
        self.context.metrics.add_counter("Doubled", len(data))
        return [
            {"y": row, "request": self.context.get_request_id(i)}
            for i, row in enumerate((data * self.scale).tolist())
        ]
"""


@pytest.mark.slow
async def test_a_torchserve_handler_runs_unchanged_in_a_worker(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="supervisor.worker")
    model = torchscript_dir(tmp_path)
    (tmp_path / "doubling_handler.py").write_text(textwrap.dedent(TORCHSERVE_STYLE_HANDLER))
    config = ModelConfig(
        name="ts_style",
        handler="doubling_handler.py",
        model_dir=str(tmp_path),
        handler_config={"handler": {"scale": 3}},
    )
    async with open_supervisor() as sup:
        await sup.load_model(config)
        reply = await sup.predict("ts_style", b"[1, 2, 3]", content_type="application/json")
        assert reply.ok, reply.message
        answer = json.loads(reply.body)
        close(answer["y"], model(torch.tensor([1.0, 2.0, 3.0])) * 3)
        assert answer["request"]
        reply = await sup.predict("ts_style", b'"text"', content_type="application/json")
        assert (reply.ok, reply.status, reply.message) == (False, 422, "send a JSON list")

        def logged(prefix: str) -> bool:
            # metric lines reach the supervisor's "supervisor.worker" log, not the log tail
            lines = [r.getMessage() for r in caplog.records if r.name == "supervisor.worker"]
            return any(prefix in line for line in lines)

        await eventually(lambda: logged("[METRICS]Doubled.count:1|"))
        await eventually(lambda: logged("[METRICS]HandlerTime.ms:"))


def test_run_batch_with_a_base_handler_subclass(imports, tmp_path):
    torchscript_dir(tmp_path)
    handler = Described()
    context = context_for(tmp_path)
    handler.initialize(context)
    items = [InferItem("a", {}, {"body": ("application/json", b"[1.0, 2.0, 3.0]")})]
    [reply] = run_batch(handler.handle, context, items)
    assert reply.ok
    assert len(json.loads(reply.body)) == 2
