"""Streamed answers in Quart: one chunk per part, and no clean end after a failure.

This renders a ``supervisor.api.predict.Stream``: the response head (status,
content type, headers) is the first part's; each part's body goes out as one
chunk of a ``Transfer-Encoding: chunked`` body, with nothing added between parts.
A stream that breaks off midway must not look complete, so the stream raises
``StreamAborted``: Quart passes it on to Hypercorn, which closes the connection
without the final zero-length chunk, and the client sees a truncated body (httpx
raises ``RemoteProtocolError``, curl reports "transfer closed with outstanding
read data remaining"). The reason is logged once, as a warning, by the stream;
Hypercorn's own record of the exception (an error with a traceback, as for a
bug) is filtered out for this one exception.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from quart import Response

from supervisor.api.common import RecordedResponse, quart_headers
from supervisor.api.predict import Stream, StreamAborted

__all__ = ["quiet_aborted_streams", "streamed_response"]


def streamed_response(stream: Stream) -> Response:
    """The chunked response for a streamed answer (its metrics are the stream's to record)."""
    response = RecordedResponse(_chunks(stream), stream.status, quart_headers(stream.headers))
    # Quart cuts a response that takes longer than RESPONSE_TIMEOUT (60 s) to send;
    # a stream may run for longer: each part is bounded by response_timeout instead.
    response.timeout = None
    return response


async def _chunks(stream: Stream) -> AsyncIterator[bytes]:
    try:
        while (chunk := await stream.next_chunk()) is not None:
            yield chunk
    finally:
        stream.close()


class _AbortedStreamFilter(logging.Filter):
    """Drops Hypercorn's record of a ``StreamAborted`` (already logged, with its reason)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, BaseExceptionGroup):
            aborted, rest = error.split(StreamAborted)
            return aborted is None or rest is not None
        return not isinstance(error, StreamAborted)


def quiet_aborted_streams(logger: logging.Logger | None = None) -> None:
    """Filter ``StreamAborted`` out of Hypercorn's error log (once per logger).

    Args:
        logger: Hypercorn's error logger (default ``hypercorn.error``).
    """
    logger = logger or logging.getLogger("hypercorn.error")
    if not any(isinstance(f, _AbortedStreamFilter) for f in logger.filters):
        logger.addFilter(_AbortedStreamFilter())
