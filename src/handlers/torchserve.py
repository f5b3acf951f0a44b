"""TorchServe's module names (``ts.*``), served by ours when TorchServe is not installed.

A handler written for TorchServe starts with imports such as::

    from ts.torch_handler.base_handler import BaseHandler
    from ts.context import Context
    from ts.utils.util import PredictionException

``install_torchserve_names`` (called by the worker before it loads a handler)
adds an import hook that answers these names with modules holding our
classes, so such a handler runs unchanged. The classes are the same objects:
``ts.utils.util.PredictionException is handlers.PredictionException``. When a
real ``ts`` package is importable nothing is installed, and it wins.

Names provided: ``ts.context``, ``ts.torch_handler.base_handler``,
``ts.torch_handler.vision_handler``, ``ts.torch_handler.image_classifier``,
``ts.torch_handler.text_classifier``, ``ts.utils.util``,
``ts.metrics.dimension``, ``ts.metrics.metric_type_enum``,
``ts.handler_utils.timer``, and ``send_intermediate_predict_response`` from
``ts.handler_utils.utils`` and (its old home) ``ts.protocol.otf_message_handler``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType

__all__ = ["ALIASES", "install_torchserve_names"]

ALIASES: dict[str, tuple[str, ...]] = {
    "ts": (),
    "ts.context": ("handlers.context",),
    "ts.torch_handler": (),
    "ts.torch_handler.base_handler": ("handlers.torch_handler",),
    "ts.torch_handler.vision_handler": ("handlers.builtin.vision_handler",),
    "ts.torch_handler.image_classifier": ("handlers.builtin.image_classifier",),
    "ts.torch_handler.text_classifier": ("handlers.builtin.text_classifier",),
    "ts.utils": (),
    "ts.utils.util": ("handlers.base", "handlers.labels"),
    "ts.metrics": (),
    "ts.metrics.dimension": ("handlers.metrics",),
    "ts.metrics.metric_type_enum": ("handlers.metrics",),
    "ts.handler_utils": (),
    "ts.handler_utils.timer": ("handlers.metrics",),
    "ts.handler_utils.utils": ("handlers.streaming",),
    "ts.protocol": (),
    "ts.protocol.otf_message_handler": ("handlers.streaming",),
}
"""Each ``ts`` module and the modules of ours whose public names it holds."""


class _TorchServeNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds and builds the ``ts.*`` modules of ``ALIASES``."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in ALIASES:
            return None
        package = any(name.startswith(fullname + ".") for name in ALIASES)
        return importlib.util.spec_from_loader(fullname, self, is_package=package)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        for source in ALIASES[module.__name__]:
            real = importlib.import_module(source)
            module.__dict__.update({name: getattr(real, name) for name in real.__all__})


def install_torchserve_names() -> bool:
    """Make ``import ts...`` find our modules, unless TorchServe is importable.

    Returns:
        True when our names answer ``ts`` imports (now or already), False when a
        real ``ts`` package is there.
    """
    if any(isinstance(finder, _TorchServeNames) for finder in sys.meta_path):
        return True
    if importlib.util.find_spec("ts") is not None:
        return False
    sys.meta_path.append(_TorchServeNames())
    return True
