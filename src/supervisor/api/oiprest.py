"""Open Inference Protocol v2 inference over REST: a renderer over the one pipeline.

::

    POST /v2/models/{name}[/versions/{version}]/infer

The body is an OIP inference request, as JSON or with the binary tensor
extension (``Inference-Header-Content-Length`` gives the JSON header's length;
raw tensor bytes follow it). ``supervisor.api.oipcodec`` decodes it, once the
token is checked, into the worker's canonical form; the answer is rendered
as JSON, or with binary outputs (``binary_data``, ``binary_data_output``) and
the response header ``Inference-Header-Content-Length``. A handler that
answers with something other than tensors (a TorchServe handler's JSON that is
no OIP response) has its answer passed on as it is, as TorchServe does.

Errors are OIP's shape, ``{"error": "<message>"}`` with the status: 400 for
bad input (naming the tensor), 401 without the inference key (with
``www-authenticate``, and also the ``code``, ``type`` and ``message`` that every
401 of the port has), 404 for an unknown model or version, 503 with
``retry-after`` for a full queue, 504 past a deadline, 500 (507) with the
worker, its incarnation and log tail when a worker died. The route is on the
lean front end (``supervisor.api.fastpath``) and in the Quart app
(``supervisor.api.oip``); both answer with ``OipRest.answer``. Nothing here
imports a web framework.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import orjson

from supervisor.api.oipcodec import OIP_FIELD, Request, decode_reply, decode_rest, render_rest
from supervisor.api.predict import Call, Outcome, Params, Predictor, settled, worker_fields
from supervisor.errors import InvalidRequest, SupervisorError
from supervisor.http.replies import Answer, error_field_answer

__all__ = ["HEADER_LENGTH", "PREFIX", "PROTOCOL", "OipRest", "split_target"]

PROTOCOL = "oip-rest"
PREFIX = "/v2/models/"
HEADER_LENGTH = b"inference-header-content-length"
"""The binary extension's header (request and response): the JSON header's length."""

_HEADER_LENGTH_FIELD = HEADER_LENGTH.decode().title()
_JSON = b"application/json"
_BINARY = b"application/octet-stream"


def split_target(path: str) -> tuple[str, str | None] | None:
    """``/v2/models/{name}[/versions/{version}]/infer`` -> ``(name, version)``, else None."""
    if not path.startswith(PREFIX) or not path.endswith("/infer") or "%" in path:
        return None
    parts = path[len(PREFIX) : -len("/infer")].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
        return parts[0], parts[2]
    return None


class OipRest:
    """``POST /v2/models/{name}[/versions/{version}]/infer`` over the prediction pipeline.

    Args:
        predictor: the one prediction pipeline.
    """

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    async def answer(
        self,
        target: tuple[str, str | None],
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes,
        client: str,
        gone: Callable[[], bool] | None = None,
    ) -> Answer:
        """Answer one inference request.

        Args:
            target: the model's name and version (``split_target``).
            headers: the request headers (lower-case bytes names).
            body: the request body.
            client: the client's address.
            gone: says whether the client has left (its queued job is dropped).
        """
        model, version = target
        fields = worker_fields(headers, client)
        fields[OIP_FIELD] = "v2"
        decoded: list[Request] = []

        def params() -> Params:
            request = decode_rest(body, _header_length(fields))
            decoded.append(request)
            return request.params

        call = Call(model, version, fields, params, protocol=PROTOCOL, gone=gone)
        outcome = await self.predictor.infer(call)
        if outcome.stream is not None:
            outcome = await settled(outcome)
        return self._render(outcome, decoded[0] if decoded else None, model, version)

    def _render(
        self, outcome: Outcome, request: Request | None, model: str, version: str | None
    ) -> Answer:
        """The answer to a settled outcome (no stream)."""
        rid = outcome.request_id
        body, content_type = b"", ""
        if outcome.reply is not None and outcome.reply.ok:
            body, content_type = outcome.reply.body, outcome.reply.content_type
        refused = outcome.reply is not None and not outcome.reply.ok
        if outcome.error is not None or refused or request is None:
            return _error(outcome.status, outcome.message, rid, outcome.error)
        if outcome.status >= 400:  # the handler answered with an error status of its own
            return _error(outcome.status, _said(body), rid, None)
        try:
            tensors = decode_reply(body, content_type)
            if tensors is None:  # no tensors: passed on as it is, as TorchServe does
                headers = _headers(content_type.encode() or _JSON, rid)
                return Answer(outcome.status, headers, body)
            served = self._version(model, version)
            rendered, header_length = render_rest(request, tensors, model=model, version=served)
        except InvalidRequest as exc:
            return _error(exc.status, exc.message, rid, exc)
        if header_length is None:
            return Answer(200, _headers(_JSON, rid), rendered)
        headers = _headers(_BINARY, rid)
        headers.append((HEADER_LENGTH, str(header_length).encode()))
        return Answer(200, headers, rendered)

    def _version(self, model: str, version: str | None) -> str | None:
        """The version that served the request (the default one's, if none was named)."""
        try:
            return self.predictor.sup.pool(model, version).config.version or None
        except SupervisorError:
            return version


def _header_length(fields: dict[str, str]) -> int | None:
    """``Inference-Header-Content-Length``, if the request has it (its last value).

    Args:
        fields: the request's headers as the worker sees them (``worker_fields``).

    Raises:
        InvalidRequest: its value is not a byte count.
    """
    raw = fields.get(_HEADER_LENGTH_FIELD)
    if raw is None:
        return None
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit()):
        raise InvalidRequest("Inference-Header-Content-Length must be a byte count")
    return int(raw)


def _said(body: bytes) -> str:
    """What a handler's error answer says: its JSON ``message`` (or ``error``), else its text."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace")
    if isinstance(parsed, dict):
        for key in ("message", "error"):
            if isinstance(parsed.get(key), str):
                return str(parsed[key])
    return body.decode("utf-8", "replace")


def _headers(content_type: bytes, rid: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", content_type), (b"x-request-id", rid)]


def _error(status: int, message: str, rid: bytes, error: SupervisorError | None) -> Answer:
    """``{"error": message}`` with the status, ``www-authenticate`` and ``retry-after``."""
    return error_field_answer(
        status,
        message or f"the request failed with status {status}",
        rid,
        retry_after=getattr(error, "retry_after", None),
        authenticate=status == 401,
        # the port's 401 shape too, as every route has it
        extra=error.to_json() if status == 401 and error is not None else None,
    )
