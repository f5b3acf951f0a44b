"""The API layer: routes and renderers over the supervision layer.

The prediction pipeline (``predict``: a request in, an outcome out, metrics
recorded once) and its two renderers: ``fastpath`` for the lean front end and
``inference`` + ``streaming`` for the Quart app. The other routes are Quart
apps (``management``, ``metrics``, ``describe``, ``openapi``), built together
by ``apps``; ``common`` holds what the Quart apps share.
"""

__all__: list[str] = []
