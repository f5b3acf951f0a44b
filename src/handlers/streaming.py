"""Streamed answers: a handler sends parts of an answer before ``handle`` returns.

TorchServe's contract, unchanged::

    from ts.handler_utils.utils import send_intermediate_predict_response

    def handle(self, batch, context):
        for token in generate(batch):
            send_intermediate_predict_response(
                [token], context.request_ids, "Intermediate", 200, context
            )
        return ["<end>"]

Each call sends one ``PART`` frame to the supervisor at once, from whichever
thread makes it; the list ``handle`` returns holds the last part of each
request's answer. Parts are serialised like final results (``handlers.reply``)
and carry the response header ``ts_stream_next: true``; the last part carries
``ts_stream_next: false``. Once the batch's answer is sent no part can follow
it: a late call raises instead of confusing the next batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from handlers.protocol import ReplyItem
from handlers.reply import STREAM_NEXT_HEADER, failure, make_reply

__all__ = ["BatchContext", "PartSender", "send_intermediate_predict_response"]


class BatchContext(Protocol):
    """What sending an intermediate answer needs of a handler's context.

    ``handlers.context.Context`` is one; naming the needs here keeps this module
    below ``context`` (which imports it), without an import cycle.
    """

    @property
    def part_sender(self) -> PartSender | None:
        """The running batch's sender of parts, or None outside a batch."""

    @property
    def request_ids(self) -> dict[int, str]:
        """``{index in the batch: request id}``."""

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        """Set a response header of request ``idx``."""

    def get_response_headers(self, idx: int) -> dict[str, str]:
        """The response headers of request ``idx``."""

    def response_status(self, idx: int) -> int:
        """The response status of request ``idx``."""


class PartSender:
    """Sends the parts of the running batch until it is closed; thread-safe.

    Args:
        send: frames and writes a list of parts (the runtime's socket writer).
    """

    def __init__(self, send: Callable[[list[ReplyItem]], None]) -> None:
        self._send = send
        self._lock = threading.Lock()
        self._open = True

    def send(self, parts: list[ReplyItem]) -> None:
        """Send ``parts`` now.

        Raises:
            RuntimeError: the batch is over (``close`` was called).
        """
        with self._lock:  # a part is either wholly before the final reply or refused
            if not self._open:
                raise RuntimeError("the batch is over: no part can follow its final answer")
            self._send(parts)

    def close(self) -> None:
        """Refuse every later part (called before the batch's final reply is sent)."""
        with self._lock:
            self._open = False


def send_intermediate_predict_response(
    ret: Sequence[Any] | Mapping[int, Any] | None,
    req_id_map: Mapping[int, str],
    message: str,
    code: int,
    context: BatchContext,
) -> None:
    """Send an intermediate answer for requests of the running batch (TorchServe's function).

    Args:
        ret: the results, indexed like the batch: ``ret[idx]`` for each ``idx`` of
            ``req_id_map``. None fails those requests with ``code`` and ``message``.
        req_id_map: ``{idx: request id}`` of the requests answered, usually
            ``context.request_ids``.
        message: the failure message when ``ret`` is None (otherwise unused).
        code: the failure status when ``ret`` is None (otherwise each request's
            status is the one set on the context, 200 by default).
        context: the handler's context.

    Raises:
        RuntimeError: no batch is running in a worker (called from ``initialize``,
            or after ``handle`` returned).
        ValueError: a request id is not the running batch's request at that index,
            or ``ret`` has no result for it.
    """
    sender = context.part_sender
    if sender is None:
        raise RuntimeError("intermediate answers can be sent only while handle() runs in a worker")
    parts = []
    for idx, request_id in req_id_map.items():
        if context.request_ids.get(idx) != request_id:
            raise ValueError(f"request {request_id!r} is not request {idx} of the running batch")
        if ret is None:
            parts.append(failure(request_id, code if code >= 400 else 500, message or "error"))
            continue
        try:
            result = ret[idx]
        except (IndexError, KeyError):
            raise ValueError(f"no result for request {idx} of the batch") from None
        context.set_response_header(idx, STREAM_NEXT_HEADER, "true")
        status, headers = context.response_status(idx), context.get_response_headers(idx)
        parts.append(make_reply(request_id, result, status=status, headers=headers))
    sender.send(parts)
