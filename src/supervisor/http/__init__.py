"""The HTTP layer: bytes on sockets, below any route.

Sans-IO HTTP/1.1 framing (``framing``), the inference port's lean server
(``lean``) and its bridge to an ASGI app (``asgi``), the guard in front of the
Hypercorn ports (``guard``), and HTTP answers as plain values (``replies``).
It knows nothing of models; ``supervisor.api`` renders predictions onto it.
"""

__all__: list[str] = []
