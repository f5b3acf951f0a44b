"""Streamed answers over HTTP: one chunk per part, and no clean end after a failure.

The response head (status, content type, headers) is the first part's; each
part's body goes out as one chunk of a ``Transfer-Encoding: chunked`` body, with
nothing added between parts. A stream that breaks off midway must not look
complete, so the body's generator raises ``StreamAborted``: Quart passes it on
to Hypercorn, which closes the connection without the final zero-length chunk,
and the client sees a truncated body (httpx raises ``RemoteProtocolError``, curl
reports "transfer closed with outstanding read data remaining"). The reason is
logged here, once, as a warning; Hypercorn's own record of the exception (an
error with a traceback, as for a bug) is filtered out for this one exception.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

from quart import Response

from handlers.protocol import ReplyItem
from supervisor.batching import Job
from supervisor.errors import DeadlineExceeded, SupervisorError

__all__ = ["StreamAborted", "quiet_aborted_streams", "streamed_response"]

log = logging.getLogger("supervisor.http")


class StreamAborted(Exception):
    """Raised by a streamed body to end the connection without the final chunk."""


def streamed_response(job: Job, first: ReplyItem, record: Callable[[int], None]) -> Response:
    """The chunked response for a streamed answer whose first part is ``first``.

    Args:
        job: the request's job; its next parts are read as the body is sent.
        first: the part ``job.wait()`` returned.
        record: called once with the status when the stream ends (metrics): the
            first part's status, or the failure's if it broke off. Not called when
            the client leaves first.
    """
    content_type = first.content_type or None
    response = Response(_chunks(job, first, record), status=first.status, content_type=content_type)
    for key, value in first.headers.items():
        response.headers[key] = value
    # Quart cuts a response that takes longer than RESPONSE_TIMEOUT (60 s) to send;
    # a stream may run for longer: each part is bounded by response_timeout instead.
    response.timeout = None
    return response


async def _chunks(
    job: Job, first: ReplyItem, record: Callable[[int], None]
) -> AsyncIterator[bytes]:
    part: ReplyItem | None = first
    try:
        while part is not None:
            if part.body:  # an empty chunk would end the body
                yield part.body
            part = await job.next_part()
    except SupervisorError as exc:
        log.warning("streamed answer to request %s broke off: %s", job.item.request_id, exc.message)
        record(exc.status)
        raise StreamAborted(exc.message) from None
    finally:
        job.fail(DeadlineExceeded("the client went away during the streamed answer"))
    record(first.status)


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
