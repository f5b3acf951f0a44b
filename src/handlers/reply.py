"""Turning a handler's results into the replies the supervisor gets.

Final answers (``handle``'s return value) and intermediate ones
(``send_intermediate_predict_response``) go through the same code, so a part of
a streamed answer is serialised exactly like a whole answer.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from handlers.protocol import ReplyItem

if TYPE_CHECKING:
    from handlers.context import Context

__all__ = ["STREAM_NEXT_HEADER", "failure", "make_reply", "serialise"]

STREAM_NEXT_HEADER = "ts_stream_next"
"""TorchServe's response header: ``true`` on the parts of a stream, ``false`` on its last."""


def make_reply(request_id: str, result: Any, context: Context, idx: int) -> ReplyItem:
    """The reply for request ``idx`` of the batch: its result, status and headers."""
    headers = {str(k): str(v) for k, v in context.get_response_headers(idx).items()}
    content_type = ""
    for key in [k for k in headers if k.lower() == "content-type"]:
        content_type = headers.pop(key)
    try:
        body, default_type = serialise(result)
    except (TypeError, ValueError) as exc:
        return failure(request_id, 503, f"Unsupported model output data type: {exc}")
    return ReplyItem(
        request_id,
        ok=True,
        status=context.response_status(idx),
        body=body,
        content_type=content_type or default_type,
        headers=headers,
    )


def failure(request_id: str, status: int, message: str) -> ReplyItem:
    """A failed reply: ``status`` and ``message``, no body."""
    return ReplyItem(request_id, ok=False, status=status, message=message)


def serialise(result: Any) -> tuple[bytes, str]:
    """Turn a handler result into bytes and a default content type."""
    if isinstance(result, bytes | bytearray | memoryview):
        return bytes(result), "application/octet-stream"
    if isinstance(result, str):
        return result.encode(), "text/plain; charset=utf-8"
    if hasattr(result, "tolist"):
        result = result.tolist()
    return json.dumps(result).encode(), "application/json"
