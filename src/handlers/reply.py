"""Turning a handler's results into the replies the supervisor gets.

Final answers (``handle``'s return value) and intermediate ones
(``send_intermediate_predict_response``) go through the same code, so a part of
a streamed answer is serialised exactly like a whole answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from handlers.protocol import ReplyItem

__all__ = ["STREAM_NEXT_HEADER", "failure", "make_reply", "serialise"]

STREAM_NEXT_HEADER = "ts_stream_next"
"""TorchServe's response header: ``true`` on the parts of a stream, ``false`` on its last."""


def make_reply(
    request_id: str, result: Any, *, status: int, headers: Mapping[str, str]
) -> ReplyItem:
    """The reply to one request: its result, with the status and headers the handler set.

    Args:
        request_id: the request answered.
        result: the handler's result for it (bytes, text, or anything JSON can hold).
        status: the HTTP status the handler set (200 by default).
        headers: the response headers the handler set; a ``Content-Type`` among them
            overrides the type the result's kind gives.
    """
    headers = {str(k): str(v) for k, v in headers.items()}
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
        status=status,
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
