"""Trivial HTTP servers on 127.0.0.1: the ceilings that the real server is compared with.

Run: python bench/trivial.py asyncio|asgi|quart    # prints the port, serves until killed

Each answers every request with the same small JSON 200, after reading the body:

- asyncio: a bare ``asyncio.Protocol`` (the cheapest server we can write in
  Python; used to measure the load generator itself);
- asgi: a bare ASGI callable on Hypercorn's trio worker (the HTTP stack without
  a framework);
- quart: a one-route QuartTrio app on Hypercorn, as the supervisor serves its
  inference API (the HTTP stack with the framework).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from functools import partial
from typing import Any

KINDS = ("asyncio", "asgi", "quart")
BODY = b'{"y": [0.0, 0.0, 0.0, 0.0]}'


class _TrivialHTTP(asyncio.Protocol):
    """HTTP/1.1 keep-alive with Content-Length bodies, and nothing else."""

    RESPONSE = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(BODY)}\r\n\r\n".encode()
        + BODY
    )

    def connection_made(self, transport: Any) -> None:
        self.transport, self.buf = transport, bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = bytes(self.buf[:end]).lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15 :].split(b"\r\n")[0]) if at >= 0 else 0
            if len(self.buf) < end + 4 + length:
                return
            del self.buf[: end + 4 + length]
            self.transport.write(self.RESPONSE)


def _serve_asyncio() -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_TrivialHTTP, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    asyncio.run(main())


async def _asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


def _quart() -> Any:
    from quart import Response, request
    from quart_trio import QuartTrio

    app = QuartTrio("trivial")

    @app.route("/predictions/<model>", methods=["POST"])
    async def predict(model: str) -> Response:
        await request.get_data()
        return Response(BODY, content_type="application/json")

    return app


def _serve_hypercorn(app: Any) -> None:
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(serve, app, config))
            print(binds[0].rsplit(":", 1)[1], flush=True)

    trio.run(main)


def main() -> None:
    kind = sys.argv[1] if len(sys.argv) > 1 else ""
    if kind == "asyncio":
        _serve_asyncio()
    elif kind == "asgi":
        _serve_hypercorn(_asgi)
    elif kind == "quart":
        _serve_hypercorn(_quart())
    else:
        sys.exit(f"usage: python bench/trivial.py {{{'|'.join(KINDS)}}}")


if __name__ == "__main__":
    main()
