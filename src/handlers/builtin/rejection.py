"""Built-in handlers answer a request with bad input on its own, with a 400.

TorchServe's built-ins fail the whole batch when one request cannot be
decoded. Ours decode request by request: a bad one is set aside with its
reason, the others go through the model together, and the answers are put
back in request order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from handlers.context import Context
from handlers.torch_handler import BaseHandler

__all__ = ["BadInput", "RejectingHandler"]


class BadInput(ValueError):
    """One request's input cannot be used; that request alone gets a 400."""


class _NothingAccepted(Exception):
    """Every request of the batch was rejected; there is nothing to run."""


class RejectingHandler(BaseHandler):
    """A BaseHandler whose ``preprocess`` may reject requests one by one.

    Subclasses decode requests with ``decode_rows``; ``handle`` answers the
    rejected ones with ``{"code": 400, "type": "BadRequest", "message": ...}``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.rejected: dict[int, str] = {}

    def decode_rows(self, data: list[dict[str, Any]], decode: Callable[[Any], Any]) -> list[Any]:
        """``decode`` each request; those raising BadInput are set aside.

        Returns:
            What ``decode`` made of the accepted requests, in order.
        """
        decoded = []
        for idx, row in enumerate(data):
            try:
                decoded.append(decode(row))
            except BadInput as exc:
                self.rejected[idx] = str(exc)
        if not decoded:
            raise _NothingAccepted
        return decoded

    def handle(self, data: list[dict[str, Any]], context: Context) -> list[Any]:
        """Run the accepted requests; answer the rejected ones with 400."""
        self.rejected = {}
        try:
            results = super().handle(data, context)
        except _NothingAccepted:
            results = []
        if not self.rejected:
            return results
        accepted = len(data) - len(self.rejected)
        if len(results) != accepted:
            raise RuntimeError(f"{len(results)} results for {accepted} accepted requests")
        answers = iter(results)
        merged = []
        for idx in range(len(data)):
            if idx in self.rejected:
                context.set_response_status(400, "Bad Request", idx)
                merged.append({"code": 400, "type": "BadRequest", "message": self.rejected[idx]})
            else:
                merged.append(next(answers))
        return merged
