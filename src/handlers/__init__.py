"""The worker side of trio-supervisor: the model author's API.

Handlers follow TorchServe's contract: a class with ``initialize(context)`` and
``handle(batch, context)``, or a module-level ``handle(batch, context)``. This
package never imports the supervisor, trio, Quart or Hypercorn.
"""

from __future__ import annotations

from handlers.base import Context, PredictionException

__all__ = ["Context", "PredictionException"]
