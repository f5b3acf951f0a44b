"""The prediction routes of the lean front end: a renderer of ``Predictor`` outcomes.

The work (token, deadline, job, metrics, request id) is ``supervisor.api.predict``'s,
shared with the Quart route. Here an ``Answer`` is returned to the lean server as
it is, and a ``Stream`` is written as a chunked body. The router leaves to the
Quart app what it would not parse the same way cheaply (form bodies,
percent-encoded or odd paths, other methods), so each unusual case has one
implementation. Nothing here imports Quart or Werkzeug.

Other protocols' hot routes are routed here too, each with one prefix test once
the ``/predictions`` match has failed (so that route costs nothing more): OIP
v2's ``POST /v2/models/{name}[/versions/{version}]/infer``
(``supervisor.api.oiprest``) and KServe v1's ``:predict`` and ``:explain``
(``supervisor.api.kservev1``).
"""

from __future__ import annotations

import re
from functools import partial

from supervisor.api.kservev1 import PREFIX as V1_PREFIX
from supervisor.api.kservev1 import KServeV1, split_target
from supervisor.api.oiprest import PREFIX as V2_PREFIX
from supervisor.api.oiprest import OipRest
from supervisor.api.oiprest import split_target as split_v2_target
from supervisor.api.predict import (
    FORM_TYPES,
    Predictor,
    Route,
    Stream,
    StreamAborted,
)
from supervisor.http.exchange import CloseConnection, Exchange, FastHandler
from supervisor.http.framing import RequestHead
from supervisor.http.replies import Answer

__all__ = ["FastRoutes"]

_PATH = re.compile(r"/(predictions|explanations)/([^/%]+)(?:/([^/%]+)(?:/([^/%][^%]*))?)?")
_FORM_TYPES = tuple(t.encode() for t in FORM_TYPES)


class FastRoutes:
    """``POST``/``PUT`` on ``/predictions/...`` and ``/explanations/...``.

    Args:
        predictor: the prediction pipeline (shared with the Quart route).
    """

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.kserve = KServeV1(predictor)
        self.oip = OipRest(predictor)

    def route(self, head: RequestHead) -> FastHandler | None:
        """The handler for ``head``, or None to leave it to the Quart app."""
        if head.method not in ("POST", "PUT") or "//" in head.path:
            return None
        match = _PATH.fullmatch(head.path)
        if match is None:
            if head.path.startswith(V2_PREFIX):
                return self._v2(head)
            return self._v1(head) if head.path.startswith(V1_PREFIX) else None
        content_type = head.header(b"content-type") or b""
        if content_type.split(b";", 1)[0].strip().lower() in _FORM_TYPES:
            return None
        route: Route = match.groups()  # type: ignore[assignment]
        return partial(self.handle, route)

    async def handle(self, route: Route, exchange: Exchange) -> Answer | None:
        """Answer one request (``route``: the path's parts, as matched)."""
        outcome = await self.predictor.predict(
            route, exchange.head.headers, exchange.body, exchange.peer[0], gone=exchange.client_gone
        )
        if isinstance(outcome, Stream):
            await _send_stream(exchange, outcome)
            return None
        return outcome

    def _v1(self, head: RequestHead) -> FastHandler | None:
        """KServe v1's ``POST /v1/models/{name}:predict`` and ``:explain``."""
        target = split_target(head.path)
        if target is None or head.method != "POST":
            return None
        return partial(self.handle_v1, target)

    async def handle_v1(self, target: tuple[str, str], exchange: Exchange) -> Answer:
        """Answer one KServe v1 request (``target``: the model and the verb)."""
        return await self.kserve.answer(
            target, exchange.head.headers, exchange.body, exchange.peer[0], exchange.client_gone
        )

    def _v2(self, head: RequestHead) -> FastHandler | None:
        """OIP v2's ``POST /v2/models/{name}[/versions/{version}]/infer``."""
        target = split_v2_target(head.path)
        if target is None or head.method != "POST":
            return None
        return partial(self.handle_v2, target)

    async def handle_v2(self, target: tuple[str, str | None], exchange: Exchange) -> Answer:
        """Answer one OIP v2 inference request (``target``: the model and version)."""
        return await self.oip.answer(
            target, exchange.head.headers, exchange.body, exchange.peer[0], exchange.client_gone
        )


async def _send_stream(exchange: Exchange, stream: Stream) -> None:
    """Send a streamed answer as a chunked body, one chunk per part.

    A stream that breaks off ends the connection without the last chunk, so the
    client sees an incomplete body rather than a short success.
    """
    try:
        await exchange.send_head(stream.status, stream.headers)
        while (chunk := await stream.next_chunk()) is not None:
            await exchange.send_chunk(chunk)
        await exchange.end_chunks()
    except StreamAborted as exc:
        raise CloseConnection(str(exc)) from None
    finally:
        stream.close()
