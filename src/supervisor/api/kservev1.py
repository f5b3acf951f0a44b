"""KServe v1 over REST: ``:predict`` and ``:explain``, a renderer over the one pipeline.

::

    GET  /                           {"status": "alive"}  (liveness, no token)
    GET  /v1/models                  {"models": [names]}
    GET  /v1/models/{name}           {"name": ..., "ready": bool}  (503 not ready, 404 unknown)
    POST /v1/models/{name}:predict   {"instances": [...]} -> {"predictions": [...]}
    POST /v1/models/{name}:explain   {"instances": [...]} -> {"explanations": [...]}

How a request reaches the handler: each instance (of ``instances``, or of
``inputs`` given as a list) is one request of the batch, its body the instance
as JSON (``application/json``), so a handler sees what it sees when the same
JSON is posted to ``/predictions/{name}`` (``explain: True`` for ``:explain``).
Instances go through the pipeline together: batching may merge them, and each
is one inference request in the metrics (``protocol="kserve-v1"``) and the
access log. The answers come back in the instances' order, each parsed as JSON
when it is JSON, else as text, else as ``{"b64": ...}`` (TensorFlow Serving's
form for bytes); a streamed answer's parts are joined first (``settled``).

When an instance fails, the request fails with the first failure in order: its
status and ``{"error": "<message>"}`` (KServe's error shape), ``retry-after``
for a full queue; a token failure is answered as on every route of the port. A
body that is not a JSON object with a list of 1 to ``MAX_INSTANCES`` instances
is a 400, given once the token is checked.

The GET routes are the Quart app's (``supervisor.api.inference``); the predict
routes are also on the lean front end (``supervisor.api.fastpath``). Nothing
here imports a web framework.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import orjson
import trio

from supervisor.api.predict import Call, Outcome, Params, Predictor, settled, worker_fields
from supervisor.errors import InvalidRequest, Unauthorized
from supervisor.http.replies import Answer, error_answer, error_field_answer
from supervisor.supervision.stats import ModelStats

__all__ = [
    "MAX_INSTANCES",
    "PREFIX",
    "PROTOCOL",
    "VERBS",
    "KServeV1",
    "model_list",
    "parse_instances",
    "render",
    "split_target",
]

PROTOCOL = "kserve-v1"
PREFIX = "/v1/models/"
VERBS = ("predict", "explain")
MAX_INSTANCES = 1024
"""Instances one request may carry (each is a job in the model's queue)."""

_JSON = b"application/json"
_KEYS = {"predict": "predictions", "explain": "explanations"}
_KINDS = {dict: "an object", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


def split_target(path: str) -> tuple[str, str] | None:
    """``/v1/models/{name}:{verb}`` -> ``(name, verb)``, or None for any other path."""
    if not path.startswith(PREFIX):
        return None
    name, colon, verb = path[len(PREFIX) :].rpartition(":")
    if not colon or not name or verb not in VERBS or "/" in name or "%" in name:
        return None
    return name, verb


def model_list(stats: Sequence[ModelStats]) -> dict[str, Any]:
    """``GET /v1/models``: every registered model's name, once, sorted."""
    return {"models": sorted({s.config.name for s in stats})}


def parse_instances(body: bytes) -> list[Any]:
    """The instances of a v1 request body.

    Raises:
        InvalidRequest: the body is not a JSON object whose ``instances`` (or
            ``inputs``) is a list of 1 to ``MAX_INSTANCES`` items.
    """
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"KServe v1: the body is not JSON ({exc})") from None
    if not isinstance(request, dict):
        raise InvalidRequest('KServe v1: the body must be a JSON object with "instances"')
    key = "instances" if "instances" in request else "inputs"
    rows = request.get(key)
    if not isinstance(rows, list):
        found = _KINDS.get(type(rows), "nothing")  # never the value: it may be large
        raise InvalidRequest(f'KServe v1: "instances" (or "inputs") must be a list, got {found}')
    if not 1 <= len(rows) <= MAX_INSTANCES:
        raise InvalidRequest(
            f'KServe v1: "{key}" must hold 1 to {MAX_INSTANCES} items, not {len(rows)}'
        )
    return rows


def render(outcomes: Sequence[Outcome], verb: str) -> Answer:
    """The answer to a v1 request from its instances' outcomes, in order.

    Args:
        outcomes: each instance's outcome (a streamed answer read to its end:
            ``supervisor.api.predict.settled``).
        verb: ``predict`` or ``explain``.
    """
    rid = outcomes[0].request_id
    for outcome in outcomes:
        if outcome.status >= 400 or (outcome.reply is not None and not outcome.reply.ok):
            return _error(outcome, rid)
    answers = [_parsed(_body(outcome)) for outcome in outcomes]
    headers = [(b"content-type", _JSON), (b"x-request-id", rid)]
    return Answer(200, headers, orjson.dumps({_KEYS[verb]: answers}))


def _body(outcome: Outcome) -> bytes:
    return outcome.reply.body if outcome.reply is not None else b""


def _error(outcome: Outcome, rid: bytes) -> Answer:
    """``{"error": message}`` with the failure's status and headers.

    A token failure is answered as on every other route of the port (TorchServe's
    shape, with ``www-authenticate``), so a client sees one 401 for the whole API.
    """
    if isinstance(outcome.error, Unauthorized):
        return error_answer(outcome.error, rid)
    said = _said(_body(outcome))
    message = outcome.message or said or f"the request failed with status {outcome.status}"
    retry_after = getattr(outcome.error, "retry_after", None)
    return error_field_answer(outcome.status, message, rid, retry_after=retry_after)


def _said(body: bytes) -> str:
    """What a handler's own error answer says (its ``message``, or its text)."""
    parsed = _parsed(body)
    message = parsed.get("message") if isinstance(parsed, dict) else parsed
    return message if isinstance(message, str) else body.decode("utf-8", "replace")


def _parsed(body: bytes) -> Any:
    """One instance's answer as a JSON value: parsed JSON, text, or ``{"b64": ...}``."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(body).decode("ascii")}


class KServeV1:
    """``POST /v1/models/{name}:predict`` and ``:explain`` over the prediction pipeline.

    Args:
        predictor: the one prediction pipeline.
    """

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    async def answer(
        self,
        target: tuple[str, str],
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes,
        client: str,
        gone: Callable[[], bool] | None = None,
    ) -> Answer:
        """Answer one v1 request.

        Args:
            target: the model's name and the verb (``split_target``).
            headers: the request headers (lower-case bytes names).
            body: the request body.
            client: the client's address.
            gone: says whether the client has left (its queued instances are dropped).
        """
        model, verb = target
        fields = worker_fields(headers, client, explain=verb == "explain")
        fields.pop("Content-Length", None)
        fields["Content-Type"] = "application/json"
        try:
            rows = parse_instances(body)
        except InvalidRequest as exc:
            # through the pipeline all the same: the token is checked first, the 400 counted
            call = Call(model, None, fields, _refusal(exc), protocol=PROTOCOL, gone=gone)
            return render([await self.predictor.infer(call)], verb)
        instance = partial(self._instance, model, fields, gone=gone)
        if len(rows) == 1:  # no nursery for the common case
            return render([await instance(rows[0])], verb)
        results: list[Outcome | None] = [None] * len(rows)

        async def one(index: int, row: Any) -> None:
            results[index] = await instance(row)

        async with trio.open_nursery() as nursery:
            for index, row in enumerate(rows):
                nursery.start_soon(one, index, row)
        return render([r for r in results if r is not None], verb)

    async def _instance(
        self, model: str, fields: dict[str, str], row: Any, *, gone: Callable[[], bool] | None
    ) -> Outcome:
        """One instance through the pipeline (a streamed answer read to its end)."""
        params: Params = {"body": ("application/json", orjson.dumps(row))}
        call = Call(model, None, fields, params, protocol=PROTOCOL, gone=gone)
        return await settled(await self.predictor.infer(call))


def _refusal(error: InvalidRequest) -> Callable[[], Params]:
    def refuse() -> Params:
        raise error

    return refuse
