"""TorchServe's ``BaseHandler``: load a TorchScript or eager model, tensors in, lists out.

The model comes from the archive's manifest, as in TorchServe:

* ``serializedFile`` alone is a TorchScript archive (``torch.jit.load``);
* ``modelFile`` names a Python file defining exactly one ``torch.nn.Module``
  class; it is built with no arguments and, when there is a ``serializedFile``,
  given that state dict (``torch.load(..., weights_only=True)``).

``index_to_name.json`` beside them, if present, becomes ``self.mapping``.
``handle`` runs ``preprocess`` -> ``inference`` -> ``postprocess``, or answers a
describe or an explain request, and records ``HandlerTime``. Subclasses override
the three steps. torch is imported when a handler is initialised, not before.

Left out from TorchServe's: the profiler (``ENABLE_TORCH_PROFILER``), ONNX,
AOTInductor ``.so`` and ``pt2``/``torch.compile`` options, IPEX, XLA, XPU and MPS.
"""

from __future__ import annotations

import importlib
import json
import os
import time
import warnings
from typing import Any

from handlers.base import PredictionException
from handlers.context import Context
from handlers.labels import list_classes_from_module, load_label_mapping
from handlers.metrics import timed
from handlers.modelfile import model_file

__all__ = ["BaseHandler", "request_payload"]

_UNSUPPORTED = {".onnx": "ONNX", ".so": "AOTInductor", ".pt2": "torch.export"}


class BaseHandler:
    """Serve a TorchScript or eager PyTorch model (TorchServe's default handler).

    Attributes:
        model: the loaded ``torch.nn.Module`` (or TorchScript module).
        device: the ``torch.device`` it runs on.
        context: the worker's Context (set by ``initialize`` and each ``handle``).
        manifest: the archive's manifest.
        mapping: ``index_to_name.json`` as ``{"index": "label"}``, or None.
        initialized: True once ``initialize`` has finished.
    """

    def __init__(self) -> None:
        self.model: Any = None
        self.mapping: dict[str, str] | None = None
        self.device: Any = None
        self.initialized = False
        self.context: Context | None = None
        self.manifest: dict[str, Any] | None = None
        self.model_pt_path: str | None = None
        self.map_location: str | None = None
        self.model_yaml_config: dict[str, Any] = {}
        self.explain = False
        self.target = 0

    def initialize(self, context: Context) -> None:
        """Pick the device, load the model and the label mapping.

        Raises:
            RuntimeError: no model file, or one of a kind this handler cannot load.
            ValueError: the model file does not define exactly one module class, or
                a file the manifest names leads out of the model directory.
        """
        self.context = context
        self.model_yaml_config = context.model_yaml_config
        properties = context.system_properties
        self.device = self._pick_device(properties.get("gpu_id"))
        self.manifest = context.manifest
        model_dir = str(properties.get("model_dir") or "")
        model = self.manifest.get("model", {})
        serialized = model.get("serializedFile")
        self.model_pt_path = (
            model_file(model_dir, serialized, "serializedFile") if serialized else None
        )
        if model.get("modelFile"):
            model_file(model_dir, model["modelFile"], "modelFile")
            self.model = self._load_pickled_model(model_dir, model["modelFile"], self.model_pt_path)
        elif self.model_pt_path:
            self.model = self._load_torchscript_model(self.model_pt_path)
        else:
            raise RuntimeError(
                "No model weights could be loaded: the manifest names no serializedFile"
            )
        self.model.to(self.device)
        self.model.eval()
        labels = model_file(model_dir, "index_to_name.json", "index_to_name.json")
        self.mapping = load_label_mapping(labels)
        self.initialized = True

    def _pick_device(self, gpu_id: Any) -> Any:
        import torch

        if gpu_id is not None and torch.cuda.is_available():
            self.map_location = "cuda"
            return torch.device(f"cuda:{gpu_id}")
        self.map_location = "cpu"
        return torch.device("cpu")

    def _load_torchscript_model(self, model_pt_path: str) -> Any:
        import torch

        kind = _UNSUPPORTED.get(os.path.splitext(model_pt_path)[1])
        if kind:
            raise RuntimeError(f"{kind} models are not supported: {model_pt_path}")
        with warnings.catch_warnings():
            # torch.jit is deprecated in favour of torch.export; loading TorchScript
            # archives is still what this handler is for.
            warnings.simplefilter("ignore", DeprecationWarning)
            load: Any = torch.jit.load  # untyped in torch's annotations
            return load(model_pt_path, map_location=self.device)

    def _load_pickled_model(
        self, model_dir: str, model_file: str, model_pt_path: str | None
    ) -> Any:
        import torch

        if not os.path.isfile(os.path.join(model_dir, model_file)):
            raise RuntimeError(f"Missing the model file {model_file}")
        module = importlib.import_module(os.path.basename(model_file).removesuffix(".py"))
        classes = list_classes_from_module(module, torch.nn.Module)
        if len(classes) != 1:
            names = [cls.__name__ for cls in classes]
            raise ValueError(
                f"{model_file} must define exactly one torch.nn.Module class, found {names}"
            )
        model = classes[0]()
        if model_pt_path:
            state = torch.load(model_pt_path, map_location=self.device, weights_only=True)
            model.load_state_dict(state)
        return model

    @timed
    def preprocess(self, data: list[dict[str, Any]]) -> Any:
        """One tensor: each request's ``data`` (or ``body``) as a tensor, stacked.

        Raises:
            PredictionException: (400) a request that is not a number or nested list.
        """
        import torch

        try:
            rows = [torch.as_tensor(request_payload(row, parse_json=True)) for row in data]
            return torch.stack(rows).to(self.device)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise PredictionException(f"invalid input: {exc}", 400) from None

    @timed
    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        """Run the model on ``data`` (moved to the device) under inference mode."""
        import torch

        with torch.inference_mode():
            return self.model(data.to(self.device), *args, **kwargs)

    @timed
    def postprocess(self, data: Any) -> list[Any]:
        """The model's output as one (nested) list per request."""
        rows: list[Any] = data.tolist()
        return rows

    def handle(self, data: list[dict[str, Any]], context: Context) -> list[Any]:
        """Describe, explain or predict for one batch; records ``HandlerTime``."""
        start = time.time()
        self.context = context
        if self._is_describe():
            output = [self.describe_handle()]
        else:
            data_preprocess = self.preprocess(data)
            if self._is_explain():
                output = self.explain_handle(data_preprocess, data)
            else:
                output = self.postprocess(self.inference(data_preprocess))
        elapsed = round((time.time() - start) * 1000, 2)
        context.metrics.add_time("HandlerTime", elapsed, None, "ms")
        return output

    def explain_handle(self, data_preprocess: Any, raw_data: list[dict[str, Any]]) -> Any:
        """Answer an explanation request with ``get_insights`` of the first request.

        Args:
            data_preprocess: what ``preprocess`` made of the batch.
            raw_data: the batch as received; the first request's ``target`` is passed on.
        """
        row = raw_data[0] if raw_data and isinstance(raw_data[0], dict) else {}
        inputs = row.get("data") or row.get("body")
        return self.get_insights(data_preprocess, inputs, row.get("target") or 0)

    def get_insights(self, tensor_data: Any, raw_input: Any, target: Any = 0) -> Any:
        """The explanation; by default the prediction itself (override with Captum etc.)."""
        return self.postprocess(self.inference(tensor_data))

    def describe_handle(self) -> Any:
        """What ``GET /models/{name}?customized=true`` shows; None unless overridden."""
        return None

    def get_device(self) -> Any:
        """The device the model runs on."""
        return self.device

    def _is_explain(self) -> bool:
        if self._first_header("explain") == "True":
            self.explain = True
            return True
        return False

    def _is_describe(self) -> bool:
        return bool(self._first_header("describe") == "True")

    def _first_header(self, name: str) -> Any:
        if self.context is None or not self.context.request_ids:
            return None
        return self.context.get_request_header(0, name)


def request_payload(row: Any, *, parse_json: bool = False) -> Any:
    """A request's input: its ``data`` field, else its ``body``.

    Args:
        row: one item of the batch.
        parse_json: parse bytes or text as JSON (ValueError if they are not JSON).
    """
    value = row.get("data", row.get("body")) if isinstance(row, dict) else row
    if parse_json and isinstance(value, bytes | bytearray | str):
        return json.loads(value)
    return value
