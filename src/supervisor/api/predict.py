"""The prediction route, once for both front ends: a request in, an outcome out.

``Predictor.predict`` takes what every HTTP front end has (the path's parts, the
headers as ``(lower-case name, value)`` bytes pairs, the body, the client's
address) and returns the outcome::

    Answer   a complete response (a result, a worker's failure or an error)
    Stream   a streamed answer: its head now, its parts' bodies as they come

It checks the token, reads the deadline, builds the ``InferItem``, submits the
job, waits, and records the metrics, all in one place: an ``Answer`` when it is
made, a ``Stream`` when it ends. The lean server (``supervisor.api.fastpath``)
and the Quart route (``supervisor.api.inference``) only render outcomes.
Nothing here imports a web framework.

Every other protocol (Open Inference Protocol v2 over REST and gRPC, KServe
v1, TorchServe's gRPC API) goes through the same ``Predictor.infer``: it states
the request as a ``Call`` (model, version, the fields and parameters the worker
sees, its protocol) and renders the ``Outcome`` (the worker's reply, or the
error that stopped the request, or a stream) in its own shape. Batching,
deadlines, backpressure, failure messages and metrics are the same for all.

Every outcome carries ``x-request-id``: the client's own ``X-Request-Id`` if it
sent a usable one (``supervisor.http.replies.request_id``), else the request id
the worker sees. A stream that breaks off midway is recorded with the failure's
status and ends by raising ``StreamAborted``, which each front end turns into a
connection closed without the last chunk.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import uuid
from collections.abc import Callable, Iterable
from functools import partial

import attrs
import trio

from handlers.protocol import InferItem, ReplyItem
from supervisor.auth import Tokens, bearer_matches
from supervisor.errors import (
    DeadlineExceeded,
    InvalidRequest,
    ModelNotFound,
    ModelVersionNotFound,
    StreamFailed,
    SupervisorError,
    Unauthorized,
)
from supervisor.http import access
from supervisor.http.replies import TOKEN_FAILED, Answer, error_answer, json_answer, request_id
from supervisor.supervision.batching import Job
from supervisor.supervision.core import Supervisor

__all__ = [
    "DEADLINE_HEADER",
    "FIELD_TYPE",
    "FORM_TYPES",
    "RESERVED_HEADERS",
    "Call",
    "Form",
    "Outcome",
    "Params",
    "Predictor",
    "RequestObserver",
    "Route",
    "Stream",
    "StreamAborted",
    "parse_deadline",
    "settled",
    "worker_fields",
]

log = logging.getLogger("supervisor.http")

DEADLINE_HEADER = "X-Client-Timeout-Ms"
"""A request header: milliseconds the client will wait for the answer."""
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
"""Bodies whose fields become parameters of their own."""
FIELD_TYPE = ""
"""A form field's content type: none, as TorchServe sends it, so the handler gets bytes."""
RESERVED_HEADERS = frozenset({"url_path", "explain", "describe", "oip"})
"""Header names the server sets for the worker, never taken from clients (lower case)."""

RequestObserver = Callable[[str, str, int, float, float | None, str], None]
"""Called once per answered request: model, version, status, latency s, queue s, protocol."""
Route = tuple[str, str, str | None, str | None]
"""The path's parts: ``predictions`` or ``explanations``, model, version, the rest."""
Form = dict[str, tuple[str, bytes]]
"""A form body's fields: name -> (content type, bytes); a field's type is ``FIELD_TYPE``."""
Params = dict[str, tuple[str, bytes]]
"""What the handler gets as one request: name -> (content type, bytes); a body is ``body``."""


@attrs.frozen
class Call:
    """One prediction request in the pipeline's terms, whatever protocol brought it.

    Attributes:
        model: the model's name.
        version: the version asked for (None: the default one).
        fields: the request's headers as the worker sees them (``worker_fields``);
            ``Authorization`` is checked against the inference key, ``X-Request-Id``
            names the answer, ``X-Client-Timeout-Ms`` sets a deadline.
        params: the parameters, or a function that makes them (called only once
            the token is checked, so a protocol's decoding can refuse bad input
            with ``InvalidRequest`` and be counted like any other outcome).
        protocol: the metrics' ``protocol`` label (``rest``, ``oip-rest``, ...).
        deadline: an absolute ``trio.current_time()`` deadline set by the
            protocol (a gRPC deadline); the earlier of it and the header's wins.
        gone: says whether the client has left; its job is then dropped before
            it reaches a worker.
    """

    model: str
    version: str | None
    fields: dict[str, str]
    params: Params | Callable[[], Params]
    protocol: str = "rest"
    deadline: float = math.inf
    gone: Callable[[], bool] | None = None


@attrs.frozen
class Outcome:
    """What became of a request: the worker's reply, an error, or a stream.

    Exactly one of ``reply``, ``error`` and ``stream`` is set.

    Attributes:
        request_id: the answer's ``x-request-id`` (bytes, as headers carry it).
        reply: the worker's answer, a result (``reply.ok``) or its failure.
        error: why the request got no worker answer (refused, not found, deadline,
            the worker died).
        stream: a streamed answer (its first part came with status ``stream.status``).
    """

    request_id: bytes
    reply: ReplyItem | None = None
    error: SupervisorError | None = None
    stream: Stream | None = None

    @property
    def status(self) -> int:
        """The HTTP status of the outcome (a stream's first part's)."""
        if self.reply is not None:
            return self.reply.status
        if self.error is not None:
            return self.error.status
        assert self.stream is not None
        return self.stream.status

    @property
    def message(self) -> str:
        """The failure's message; empty for a result or a stream."""
        if self.error is not None:
            return self.error.message
        if self.reply is not None and not self.reply.ok:
            return self.reply.message
        return ""


_DEFAULT_TYPE = b"text/html; charset=utf-8"  # what Quart gives a body without a type
_UNOBSERVED = (ModelNotFound, ModelVersionNotFound, Unauthorized)  # no series for these


class StreamAborted(Exception):
    """A streamed answer broke off midway: end the connection without the last chunk."""


class Predictor:
    """Turns prediction requests into outcomes, and records them in the metrics.

    Args:
        sup: the supervisor.
        tokens: the keys, if authorization is on.
        observe: called once per answered request for a model that exists.
        on_response: called with every outcome's status (``Requests2XX`` and kin).
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

    async def predict(
        self,
        route: Route,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes,
        client: str,
        *,
        form: Form | None = None,
        gone: Callable[[], bool] | None = None,
    ) -> Answer | Stream:
        """Answer one request.

        Args:
            route: the path's parts.
            headers: the request headers, names in lower case (as HTTP/1.1 parsers
                and ASGI servers give them).
            body: the request body (ignored with ``form``).
            client: the client's address (the worker sees it as ``Remote-Addr``).
            form: a form body's fields, parsed by the front end.
            gone: says whether the client has left; its job is then dropped before
                it reaches a worker.
        """
        fields = worker_fields(headers, client, route[3] or "", explain=route[0] == "explanations")
        params = form if form is not None else {"body": (fields.get("Content-Type", ""), body)}
        outcome = await self.infer(Call(route[1], route[2], fields, params, gone=gone))
        if outcome.stream is not None:
            return outcome.stream
        if outcome.error is not None:
            return error_answer(outcome.error, outcome.request_id)
        assert outcome.reply is not None
        return _answer(outcome.reply, outcome.request_id)

    async def infer(self, call: Call) -> Outcome:
        """Run one request through the pipeline; every protocol's renderers call this.

        The token is checked first, then the deadline, then the parameters are
        made; the job is submitted and awaited, and the metrics and access line
        are recorded once: now for a reply or an error, when it ends for a stream.
        """
        started = trio.current_time()
        own = str(uuid.uuid4())
        rid = request_id(call.fields.get("X-Request-Id"), own).encode()
        job: Job | None = None
        try:
            self._authorize(call.fields)
            deadline = min(call.deadline, parse_deadline(call.fields.get(DEADLINE_HEADER), started))
            params = call.params() if callable(call.params) else call.params
            item = InferItem(own, call.fields, params)
            job = self.sup.submit(item, call.model, call.version, deadline)
            job.gone = call.gone
            reply = await job.wait()
        except _UNOBSERVED as exc:
            self._counted(call.model, exc.status)
            return Outcome(rid, error=exc)
        except SupervisorError as exc:
            outcome = Outcome(rid, error=exc)
        else:
            if job.streamed:
                end = partial(self._record, call, started=started, job=job)
                return Outcome(rid, stream=Stream(reply, _headers(reply, rid), job, end))
            outcome = Outcome(rid, reply=reply)
        self._record(call, outcome.status, started=started, job=job)
        return outcome

    def _authorize(self, fields: dict[str, str]) -> None:
        if self.tokens is None:
            return
        if not bearer_matches(fields.get("Authorization"), self.tokens.key("inference")):
            raise Unauthorized(TOKEN_FAILED)

    def _counted(self, model: str, status: int) -> None:
        """The access line and the status count, for every outcome."""
        access.record(status, model)
        if self.on_response is not None:
            self.on_response(status)

    def _record(self, call: Call, status: int, *, started: float, job: Job | None) -> None:
        """The one place a prediction's metrics (and its access line) are recorded."""
        self._counted(call.model, status)
        if self.observe is None:
            return
        version = _job_version(self.sup, call.model, call.version)
        latency = trio.current_time() - started
        self.observe(call.model, version, status, latency, _queued(job), call.protocol)


class Stream:
    """A streamed answer: the first part's status and headers, then each part's body.

    A front end sends the head, then ``next_chunk()`` until it gives None (the
    answer is complete) or raises ``StreamAborted`` (it broke off), and calls
    ``close()`` in the end, whatever happened. The metrics are recorded when the
    stream ends: the first part's status if it completed, the failure's if it
    broke off, nothing if the client left first.

    Attributes:
        status: the response status (the first part's).
        headers: the response headers (lower-case bytes names).
        first: the first part as the worker sent it.
    """

    def __init__(
        self,
        first: ReplyItem,
        headers: list[tuple[bytes, bytes]],
        job: Job,
        end: Callable[[int], None],
    ) -> None:
        self.status = first.status
        self.headers = headers
        self.first = first
        self._job = job
        self._next: ReplyItem | None = first
        self._end = end
        self._done = False

    async def next_chunk(self) -> bytes | None:
        """The next part's body (never empty), or None once the answer is complete.

        Raises:
            StreamAborted: the answer broke off (the worker died or timed out, the
                handler failed, or this reader fell behind).
        """
        while not self._done:
            part, self._next = self._next, None
            if part is None:
                part = await self._following()
            if part is None:
                self._finish(self.status)
            elif part.body:  # an empty chunk would end the body
                return part.body
        return None

    def close(self) -> None:
        """Give up the rest of the answer (nothing happens if it is complete).

        A client that left mid-answer is not in the metrics; its access line
        has the status it was sent.
        """
        if not self._done:
            access.record(self.status, None)
        self._done = True
        self._job.fail(DeadlineExceeded("the client went away during the streamed answer"))

    async def _following(self) -> ReplyItem | None:
        try:
            return await self._job.next_part()
        except SupervisorError as exc:
            rid = self._job.item.request_id
            log.warning("streamed answer to request %s broke off: %s", rid, exc.message)
            self._finish(exc.status)
            raise StreamAborted(exc.message) from None

    def _finish(self, status: int) -> None:
        self._done = True
        self._end(status)


async def settled(outcome: Outcome) -> Outcome:
    """The outcome with a streamed answer read to its end, for protocols that answer once.

    A stream becomes a reply: its first part with the bodies of all parts
    joined. A stream that breaks off becomes a ``StreamFailed`` error. Any other
    outcome comes back as it is.
    """
    stream = outcome.stream
    if stream is None:
        return outcome
    parts = []
    try:
        while (chunk := await stream.next_chunk()) is not None:
            parts.append(chunk)
    except StreamAborted as exc:
        return Outcome(outcome.request_id, error=StreamFailed(str(exc)))
    finally:
        stream.close()
    joined = dataclasses.replace(stream.first, body=b"".join(parts))
    return Outcome(outcome.request_id, reply=joined)


def parse_deadline(raw: str | None, started: float) -> float:
    """The deadline a ``X-Client-Timeout-Ms`` value sets (``math.inf`` without one).

    Raises:
        InvalidRequest: the value is not a positive number of milliseconds.
    """
    if raw is None:
        return math.inf
    try:
        millis = float(raw)
    except ValueError:
        millis = -1.0
    if not millis > 0:
        raise InvalidRequest(f"{DEADLINE_HEADER} must be a positive number of milliseconds")
    return started + millis / 1000


def worker_fields(
    headers: Iterable[tuple[bytes, bytes]],
    client: str,
    url_path: str = "",
    *,
    explain: bool = False,
) -> dict[str, str]:
    """The headers as the worker sees them: title-cased, as Quart shows them, plus extras.

    Args:
        headers: the request headers (lower-case names, as bytes).
        client: the client's address (``Remote-Addr``).
        url_path: the path past the model and version (``url_path``).
        explain: an explanation is asked for (``explain: True``).
    """
    fields = {"Remote-Addr": client}
    for name, value in headers:
        key = name.decode("latin-1")
        if key not in RESERVED_HEADERS:
            fields[key.title()] = value.decode("latin-1")
    fields["url_path"] = url_path
    if explain:
        fields["explain"] = "True"
    return fields


def _answer(reply: ReplyItem, rid: bytes) -> Answer:
    if not reply.ok:
        body = {"code": reply.status, "type": "InternalServerException", "message": reply.message}
        return json_answer(body, reply.status, rid)
    return Answer(reply.status, _headers(reply, rid), reply.body)


def _headers(reply: ReplyItem, rid: bytes) -> list[tuple[bytes, bytes]]:
    """The headers of a result (or of a stream's first part)."""
    content_type = reply.content_type.encode("latin-1") if reply.content_type else _DEFAULT_TYPE
    headers = [(b"content-type", content_type), (b"x-request-id", rid)]
    for key, value in reply.headers.items():
        headers.append((key.encode("latin-1"), value.encode("latin-1")))
    return headers


def _queued(job: Job | None) -> float | None:
    """Seconds the job waited before a worker took it (None if none did)."""
    if job is None or job.dispatched_at is None:
        return None
    return job.dispatched_at - job.enqueued_at


def _job_version(sup: Supervisor, model: str, version: str | None) -> str:
    """The version that served (or would serve) a request, for metric labels."""
    try:
        return sup.pool(model, version).config.version
    except SupervisorError:
        return version or ""
