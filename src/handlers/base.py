"""The handler contract, in TorchServe's shape.

A handler is either a class with ``initialize(context)`` and
``handle(batch, context)``, or a module-level function ``handle(batch, context)``
(called once with ``batch=None`` to initialise). ``batch`` is a list with one dict
per request: one key per request parameter (``body`` for a raw body), the value
decoded as TorchServe does (JSON parsed, text as ``str``, anything else bytes).
``handle`` returns a list with one result per request.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["Context", "HandlerFunction", "PredictionException", "load_handler"]

HandlerFunction = Callable[[list[dict[str, Any]], "Context"], list[Any]]
"""What a loaded handler is called as: ``handle(batch, context) -> results``."""


class PredictionException(Exception):  # TorchServe's name, kept for compatibility
    """Raised by a handler to fail the batch with a chosen HTTP status.

    Args:
        message: the error message returned to the client.
        error_code: the HTTP status of the answer.
    """

    def __init__(self, message: str, error_code: int = 500) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code


class Context:
    """What a handler knows about its model and the current batch.

    Args:
        model_name: the model's name.
        model_version: the model's version.
        model_dir: the directory holding the model's files ("" if none).
        batch_size: the largest batch the handler will be given.
        gpu_id: the GPU to use, or None on CPU.
        model_yaml_config: the model's own configuration.
    """

    def __init__(
        self,
        model_name: str,
        model_version: str,
        model_dir: str,
        batch_size: int,
        gpu_id: int | None = None,
        model_yaml_config: dict[str, Any] | None = None,
    ) -> None:
        self.model_name = model_name
        self.model_version = model_version
        self.manifest: dict[str, Any] = {"model": {"modelName": model_name}}
        self.model_yaml_config = model_yaml_config or {}
        self.system_properties: dict[str, Any] = {
            "model_dir": model_dir,
            "gpu_id": gpu_id,
            "batch_size": batch_size,
            "server_name": "trio-supervisor",
        }
        self.request_ids: dict[int, str] = {}
        self._headers: list[dict[str, Any]] = []
        self._responses: list[dict[str, Any]] = []

    def start_batch(self, request_ids: list[str], headers: list[dict[str, Any]]) -> None:
        """Reset the per-request state for a new batch (called by the runtime)."""
        self.request_ids = dict(enumerate(request_ids))
        self._headers = headers
        self._responses = [{"status": 200, "phrase": "", "headers": {}} for _ in request_ids]

    def get_request_id(self, idx: int = 0) -> str | None:
        """The id of request ``idx`` of the batch."""
        return self.request_ids.get(idx)

    def get_request_header(self, idx: int, key: str) -> Any:
        """A header of request ``idx``, or None; names match regardless of case."""
        headers = self._headers[idx]
        if key in headers:
            return headers[key]
        wanted = key.lower()
        return next((v for k, v in headers.items() if k.lower() == wanted), None)

    def get_all_request_header(self, idx: int) -> dict[str, Any]:
        """Every header of request ``idx``."""
        return self._headers[idx]

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        """Set the HTTP status (and reason phrase) of request ``idx``'s answer."""
        self._responses[idx]["status"] = code
        self._responses[idx]["phrase"] = phrase

    def set_all_response_status(self, code: int = 200, phrase: str = "") -> None:
        """Set the HTTP status of every answer of the batch."""
        for idx in range(len(self._responses)):
            self.set_response_status(code, phrase, idx)

    def set_response_content_type(self, idx: int, value: str) -> None:
        """Set the content type of request ``idx``'s answer."""
        self._responses[idx]["headers"]["Content-Type"] = value

    def get_response_content_type(self, idx: int) -> str | None:
        """The content type set for request ``idx``'s answer, if any."""
        value: str | None = self._responses[idx]["headers"].get("Content-Type")
        return value

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        """Add a header to request ``idx``'s answer."""
        self._responses[idx]["headers"][key] = value

    def get_response_headers(self, idx: int) -> dict[str, str]:
        """The headers set for request ``idx``'s answer."""
        headers: dict[str, str] = self._responses[idx]["headers"]
        return headers

    def response_status(self, idx: int) -> int:
        """The HTTP status set for request ``idx``'s answer."""
        status: int = self._responses[idx]["status"]
        return status


def load_handler(spec: str, context: Context) -> HandlerFunction:
    """Import and initialise the handler named by ``spec``.

    Args:
        spec: ``module``, ``module:Class`` or ``module:function``. A bare module must
            define a ``handle`` function or exactly one handler class.
        context: passed to ``initialize`` (or to ``handle(None, context)``).

    Returns:
        The callable to run each batch with.
    """
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    target = getattr(module, attr) if attr else _default_entry(module)
    if inspect.isclass(target):
        instance: Any = target()
        if hasattr(instance, "initialize"):
            instance.initialize(context)
        handle: HandlerFunction = instance.handle
        return handle
    if not callable(target):
        raise TypeError(f"handler {spec!r} is neither a class nor a function")
    target(None, context)
    function: HandlerFunction = target
    return function


def _default_entry(module: ModuleType) -> Any:
    function = getattr(module, "handle", None)
    if inspect.isfunction(function):
        return function
    classes = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj) and obj.__module__ == module.__name__ and hasattr(obj, "handle")
    ]
    if len(classes) != 1:
        raise TypeError(
            f"module {module.__name__!r} must define a handle() function or exactly one "
            f"handler class, found {len(classes)} classes"
        )
    return classes[0]


def decode_param(content_type: str, data: bytes) -> Any:
    """Decode a request parameter the way TorchServe hands it to handlers."""
    mime = content_type.split(";", 1)[0].strip().lower()
    try:
        if mime == "application/json":
            return json.loads(data)
        if mime.startswith("text/"):
            return data.decode()
    except (ValueError, RecursionError):  # deeply nested JSON recurses
        return data
    return data
