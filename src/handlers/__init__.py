"""The worker side of trio-supervisor: the model author's API.

Handlers follow TorchServe's contract: a class with ``initialize(context)`` and
``handle(batch, context)``, or a module-level ``handle(batch, context)``.
``handlers.torch_handler.BaseHandler`` is TorchServe's default handler, the
built-ins (``handlers.builtin``) stand in for TorchServe's by name, and a handler
written for TorchServe (``from ts.torch_handler.base_handler import ...``) runs
unchanged (``handlers.torchserve``). A handler streams its answer with
``context.send_intermediate(results)`` or TorchServe's
``send_intermediate_predict_response`` (``handlers.streaming``). This package
never imports the supervisor, trio, Quart or Hypercorn, and imports torch only
when a handler is initialised.
"""

from __future__ import annotations

from handlers.base import Context, PredictionException
from handlers.streaming import send_intermediate_predict_response

__all__ = ["Context", "PredictionException", "send_intermediate_predict_response"]
