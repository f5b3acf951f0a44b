"""What a handler knows about its model and the batch it is given (TorchServe's Context)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from handlers.metrics import Metrics
from handlers.streaming import PartSender, send_intermediate_predict_response

__all__ = ["SEQUENCE_ID_HEADER", "Context"]

SEQUENCE_ID_HEADER = "ts_request_sequence_id"
"""The request header that carries a sequence id (TorchServe's default name)."""


class Context:
    """What a handler knows about its model and the current batch.

    Attributes:
        manifest: ``MAR-INF/MANIFEST.json`` of the model's archive, as a dict.
        model_yaml_config: the model's own configuration (model-config.yaml).
        system_properties: ``model_dir``, ``gpu_id``, ``batch_size``, ``server_name``.
        metrics: record handler metrics (``add_time``, ``add_counter``...).
        request_ids: ``{index in the batch: request id}``.
        cl_socket: always None (TorchServe's socket; stream with ``send_intermediate``).
        part_sender: sends the running batch's intermediate answers (set by the runtime).
        stopping_criteria: TorchServe's hook for continuous batching; unused here.

    Args:
        model_name: the model's name.
        model_version: the model's version.
        model_dir: the directory holding the model's files ("" if none).
        batch_size: the largest batch the handler will be given.
        gpu_id: the GPU to use, or None on CPU.
        model_yaml_config: the model's own configuration.
        manifest: the archive's manifest (default: one naming the model only).
    """

    def __init__(
        self,
        model_name: str,
        model_version: str,
        model_dir: str,
        batch_size: int,
        gpu_id: int | None = None,
        model_yaml_config: dict[str, Any] | None = None,
        manifest: dict[str, Any] | None = None,
    ) -> None:
        self.model_name = model_name
        self.model_version = model_version
        self.manifest: dict[str, Any] = manifest or {"model": {"modelName": model_name}}
        self.model_yaml_config = model_yaml_config or {}
        self.system_properties: dict[str, Any] = {
            "model_dir": model_dir,
            "gpu_id": gpu_id,
            "batch_size": batch_size,
            "server_name": "trio-supervisor",
        }
        self.metrics = Metrics(model_name)
        self.request_ids: dict[int, str] = {}
        self.cl_socket: Any = None
        self.part_sender: PartSender | None = None
        self.stopping_criteria: Any = None
        self._headers: list[dict[str, Any]] = []
        self._responses: list[dict[str, Any]] = []

    def start_batch(
        self,
        request_ids: list[str],
        headers: list[dict[str, Any]],
        part_sender: PartSender | None = None,
    ) -> None:
        """Reset the per-request state for a new batch (called by the runtime)."""
        self.part_sender = part_sender
        self.request_ids = dict(enumerate(request_ids))
        self.metrics.set_request_ids(self.request_ids)
        self._headers = headers
        self._responses = [{"status": 200, "phrase": "", "headers": {}} for _ in request_ids]

    def send_intermediate(self, results: Sequence[Any]) -> None:
        """Send the next part of every answer of the batch: one result per request.

        The results are serialised like ``handle``'s (bytes, str, JSON, tensors);
        ``handle``'s own return value is the last part. See ``handlers.streaming``.

        Raises:
            RuntimeError: no batch is running (called from ``initialize``, or after
                ``handle`` returned).
            ValueError: ``results`` does not hold one result per request.
        """
        if len(results) != len(self.request_ids):
            raise ValueError(
                f"send_intermediate needs one result per request: got {len(results)} "
                f"for a batch of {len(self.request_ids)}"
            )
        send_intermediate_predict_response(results, self.request_ids, "", 200, self)

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

    def get_sequence_id(self, idx: int = 0) -> str | None:
        """The sequence id request ``idx`` carries (header ``ts_request_sequence_id``)."""
        value = self.get_request_header(idx, SEQUENCE_ID_HEADER)
        return None if value is None else str(value)

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        """Set the HTTP status (and reason phrase) of request ``idx``'s answer."""
        self._responses[idx]["status"] = code
        self._responses[idx]["phrase"] = phrase

    def set_all_response_status(self, code: int = 200, phrase: str = "") -> None:
        """Set the HTTP status of every answer of the batch."""
        for idx in range(len(self._responses)):
            self.set_response_status(code, phrase, idx)

    def get_response_status(self, idx: int = 0) -> tuple[int, str]:
        """The status code and reason phrase set for request ``idx``'s answer."""
        response = self._responses[idx]
        return response["status"], response["phrase"]

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
