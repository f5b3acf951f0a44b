"""Handlers that ship with trio-supervisor.

``iris`` (the default model), and TorchServe's default handlers on
``handlers.torch_handler.BaseHandler``: ``tensor_handler``, ``vision_handler``,
``image_classifier`` and ``text_classifier``. A model archive names them by
these bare names, as it would name TorchServe's.
"""

__all__: list[str] = []
