"""The prediction routes of the lean front end: request -> job -> response, nothing else.

They answer exactly what the Quart routes in ``supervisor.api.inference`` answer
for the same request. Whatever they would not answer the same way cheaply (form
bodies, a missing or wrong token, percent-encoded or odd paths, other methods)
the router leaves to the Quart app, so there is one implementation of each
unusual case.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from functools import partial

import trio

from handlers.protocol import InferItem, ReplyItem
from supervisor.api.common import error_headers, json_bytes
from supervisor.api.inference import (
    DEADLINE_HEADER,
    FORM_TYPES,
    RESERVED_HEADERS,
    RequestObserver,
    failed_reply_body,
    job_version,
    parse_deadline,
    queue_time,
)
from supervisor.api.lean import Answer, CloseConnection, Exchange, FastHandler
from supervisor.auth import Tokens, bearer_matches
from supervisor.batching import Job
from supervisor.core import Supervisor
from supervisor.errors import (
    DeadlineExceeded,
    ModelNotFound,
    ModelVersionNotFound,
    SupervisorError,
)
from supervisor.http1 import RequestHead

__all__ = ["FastRoutes"]

log = logging.getLogger("supervisor.http")

_PATH = re.compile(r"/(predictions|explanations)/([^/%]+)(?:/([^/%]+)(?:/([^/%][^%]*))?)?")
_FORM_TYPES = tuple(t.encode() for t in FORM_TYPES)
_DEADLINE = DEADLINE_HEADER.lower().encode()
_JSON = b"application/json"
_DEFAULT_TYPE = b"text/html; charset=utf-8"  # what Quart gives a body without a type


class FastRoutes:
    """``POST``/``PUT`` on ``/predictions/...`` and ``/explanations/...``.

    Args:
        sup: the supervisor.
        tokens: the keys, if authorization is on.
        observe: called once per answered request (model, version, status, latency, queue).
        on_response: called with every response's status.
    """

    def __init__(
        self,
        sup: Supervisor,
        tokens: Tokens | None,
        observe: RequestObserver | None,
        on_response: Callable[[int], None] | None,
    ) -> None:
        self.sup = sup
        self.tokens = tokens
        self.observe = observe
        self.on_response = on_response

    def route(self, head: RequestHead) -> FastHandler | None:
        """The handler for ``head``, or None to leave it to the Quart app."""
        if head.method not in ("POST", "PUT") or "//" in head.path:
            return None
        match = _PATH.fullmatch(head.path)
        if match is None:
            return None
        content_type = head.header(b"content-type") or b""
        if content_type.split(b";", 1)[0].strip().lower() in _FORM_TYPES:
            return None
        if self.tokens is not None:
            presented = head.header(b"authorization")
            header = presented.decode("latin-1") if presented is not None else None
            if not bearer_matches(header, self.tokens.key("inference")):
                return None
        prefix, model, version, extra = match.groups()
        return partial(self.handle, (prefix, model, version, extra))

    async def handle(
        self, route: tuple[str, str, str | None, str | None], exchange: Exchange
    ) -> Answer | None:
        """Run one request through its model (``route``: the path's parts, as matched)."""
        head = exchange.head
        prefix, model, version, extra = route
        started = trio.current_time()
        request_id = uuid.uuid4()
        job: Job | None = None
        try:
            raw = head.header(_DEADLINE)
            deadline = parse_deadline(None if raw is None else raw.decode("latin-1"), started)
            item = _item(exchange, request_id.hex, extra or "", prefix == "explanations")
            job = self.sup.submit(item, model, version, deadline)
            job.gone = exchange.client_gone  # dropped before dispatch if the client left
            reply = await job.wait()
            if job.streamed:
                status = await _stream(exchange, job, reply, request_id)
                self._record(model, version, status, started, job)
                return None
            answer = _answer(reply)
        except (ModelNotFound, ModelVersionNotFound) as exc:
            return self._finish(_error(exc), request_id)  # no metric series for made-up names
        except SupervisorError as exc:
            answer = _error(exc)
        self._record(model, version, answer.status, started, job)
        return self._finish(answer, request_id)

    def _record(
        self, model: str, version: str | None, status: int, started: float, job: Job | None
    ) -> None:
        if self.on_response is not None and job is not None and job.streamed:
            self.on_response(status)
        if self.observe is None:
            return
        latency = trio.current_time() - started
        queue = queue_time(job)
        self.observe(model, job_version(self.sup, model, version), status, latency, queue)

    def _finish(self, answer: Answer, request_id: uuid.UUID) -> Answer:
        answer.headers.append((b"x-request-id", str(request_id).encode()))
        if self.on_response is not None:
            self.on_response(answer.status)
        return answer


async def _stream(exchange: Exchange, job: Job, first: ReplyItem, request_id: uuid.UUID) -> int:
    """Send a streamed answer as a chunked body, one chunk per part; returns the status.

    A stream that breaks off ends the connection without the last chunk, so the
    client sees an incomplete body rather than a short success.
    """
    headers = _answer(first).headers
    headers.append((b"x-request-id", str(request_id).encode()))
    try:
        await exchange.send_head(first.status, headers)
        part: ReplyItem | None = first
        while part is not None:
            await exchange.send_chunk(part.body)
            part = await job.next_part()
        await exchange.end_chunks()
    except SupervisorError as exc:
        log.warning("streamed answer to request %s broke off: %s", job.item.request_id, exc.message)
        raise CloseConnection(exc.message) from None
    finally:
        job.fail(DeadlineExceeded("the client went away during the streamed answer"))
    return first.status


def _item(exchange: Exchange, request_id: str, extra: str, explain: bool) -> InferItem:
    """The request as the worker sees it (the same headers Quart would show it)."""
    headers = {"Remote-Addr": exchange.peer[0]}
    for name, value in exchange.head.headers:
        key = name.decode("latin-1").title()
        if key.lower() not in RESERVED_HEADERS:
            headers[key] = value.decode("latin-1")
    headers["url_path"] = extra
    if explain:
        headers["explain"] = "True"
    content_type = headers.get("Content-Type", "")
    return InferItem(request_id, headers, {"body": (content_type, exchange.body)})


def _answer(reply: ReplyItem) -> Answer:
    if not reply.ok:
        return _json(failed_reply_body(reply), reply.status)
    content_type = reply.content_type.encode("latin-1") if reply.content_type else _DEFAULT_TYPE
    headers = [(b"content-type", content_type)]
    for key, value in reply.headers.items():
        headers.append((key.encode("latin-1"), value.encode("latin-1")))
    return Answer(reply.status, headers, reply.body)


def _error(error: SupervisorError) -> Answer:
    answer = _json(error.to_json(), error.status)
    for name, value in error_headers(error):
        answer.headers.append((name.lower().encode(), value.encode("latin-1")))
    return answer


def _json(body: object, status: int) -> Answer:
    return Answer(status, [(b"content-type", _JSON)], json_bytes(body))
