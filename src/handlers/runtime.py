"""The worker process: load a handler, then answer batches until told to stop.

The supervisor passes one end of a socketpair (``--fd``); stdout and stderr are
left free and become the worker's log. A reader thread owns the socket's
receiving side: it answers heartbeats at once (even while a batch is running),
hands everything else to the main thread, and ends the whole process group as
soon as the socket reaches EOF, which is how a worker notices that its
supervisor died.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import queue
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from functools import partial
from typing import Any

from handlers.base import HandlerFunction, PredictionException, decode_param, load_handler
from handlers.context import Context
from handlers.oip import is_tensor_request, run_tensor_batch
from handlers.protocol import (
    Decoder,
    InferItem,
    Kind,
    Message,
    ProtocolError,
    ReplyItem,
    decode_infer,
    encode,
    encode_part,
    encode_reply,
)
from handlers.reply import STREAM_NEXT_HEADER, failure, make_reply, serialise
from handlers.streaming import PartSender
from handlers.torchserve import install_torchserve_names

__all__ = ["LOG_LEVEL_ENV", "main", "read_manifest", "run_batch", "serialise"]

LOG_LEVEL_ENV = "SUPERVISOR_LOG_LEVEL"
"""The environment variable with the server's log level (``INFO`` when unset).

A handler's ``logging`` calls at this level and above reach the worker's output,
and so its log tail and the model log, as in TorchServe's model log.
"""
_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"  # the server adds the time


class Channel:
    """The worker's side of the socket: thread-safe sends, a reader thread."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._send_lock = threading.Lock()
        self.inbox: queue.Queue[Message | None] = queue.Queue()
        self.stopping = False

    def send(self, frame: bytes) -> None:
        """Send one frame; frames from different threads never interleave."""
        with self._send_lock:
            self._sock.sendall(frame)

    def read_forever(self) -> None:
        """Receive frames until EOF; answer pings; queue the rest."""
        decoder = Decoder()
        buffer = bytearray(1 << 20)  # reused: a fresh 1 MiB per recv costs an mmap
        view = memoryview(buffer)
        try:
            while received := self._sock.recv_into(buffer):
                for message in decoder.feed(bytes(view[:received])):
                    self._dispatch(message)
        except (OSError, ProtocolError) as exc:
            _say(f"worker: protocol socket failed: {exc!r}")
        else:
            if not self.stopping:
                _say("worker: the protocol socket was closed (supervisor gone, or shut down)")
        if not self.stopping:
            _die_with_group()

    def _dispatch(self, message: Message) -> None:
        if message.kind is Kind.PING:
            self.send(encode(Message(Kind.PONG, message.header)))
        elif message.kind is Kind.SHUTDOWN:
            self.stopping = True
            self.inbox.put(None)
        else:
            self.inbox.put(message)


def _say(line: str) -> None:
    """Log a line if we still can: stderr is a pipe that a dead supervisor no longer reads."""
    with contextlib.suppress(OSError):
        print(line, file=sys.stderr, flush=True)


def _die_with_group() -> None:
    """The supervisor is gone: take our process group (grandchildren too) with us."""
    with contextlib.suppress(OSError):  # never let a broken stderr stop the kill below
        sys.stderr.flush()
    if os.getpgrp() == os.getpid():
        os.killpg(0, signal.SIGKILL)
    os._exit(1)


def main(argv: list[str] | None = None) -> int:
    """Run the worker; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m handlers")
    parser.add_argument("--fd", type=int, required=True, help="protocol socket descriptor")
    args = parser.parse_args(argv)
    _configure_logging(os.environ.get(LOG_LEVEL_ENV, "INFO"))
    channel = Channel(socket.socket(fileno=args.fd))
    threading.Thread(target=channel.read_forever, name="protocol-reader", daemon=True).start()
    first = channel.inbox.get()
    if first is None:
        return 0
    if first.kind is not Kind.LOAD:
        print(f"worker: expected LOAD, got {first.kind.name}", file=sys.stderr, flush=True)
        return 2
    loaded = _load(first.header, channel)
    if loaded is None:
        return 1
    handle, context = loaded
    gc.collect()
    gc.freeze()  # the model's objects never become garbage: keep them out of every GC pass
    while (message := channel.inbox.get()) is not None:
        if message.kind is Kind.INFER:
            try:
                batch_id, items = decode_infer(message)
            except ProtocolError as exc:
                print(f"worker: malformed INFER from the supervisor: {exc}", file=sys.stderr)
                return 2
            replies = run_batch(handle, context, items, send_parts=_part_writer(channel, batch_id))
            channel.send(encode_reply(batch_id, replies))
    return 0


def _configure_logging(level: str) -> None:
    """Send the handler's log records at ``level`` and above to stderr (the worker's log)."""
    numeric = logging.getLevelName(level.strip().upper())
    logging.basicConfig(
        level=numeric if isinstance(numeric, int) else logging.INFO,
        format=_LOG_FORMAT,
        stream=sys.stderr,
    )


def _part_writer(channel: Channel, batch_id: int) -> Callable[[list[ReplyItem]], None]:
    def send(parts: list[ReplyItem]) -> None:
        channel.send(encode_part(batch_id, parts))

    return send


def _load(header: dict[str, Any], channel: Channel) -> tuple[HandlerFunction, Context] | None:
    model_dir = os.path.abspath(str(header["model_dir"])) if header.get("model_dir") else ""
    install_torchserve_names()
    try:
        if model_dir:
            os.chdir(model_dir)  # a missing directory fails the load with its path
            sys.path.insert(0, model_dir)
        context = Context(
            model_name=str(header["model_name"]),
            model_version=str(header["model_version"]),
            model_dir=model_dir,
            batch_size=int(header["batch_size"]),
            gpu_id=header.get("gpu_id"),
            model_yaml_config=dict(header.get("config") or {}),
            manifest=read_manifest(model_dir),
        )
        handle = load_handler(str(header["handler"]), context)
    except Exception as exc:
        traceback.print_exc()
        sys.stderr.flush()
        failure = {"message": f"{type(exc).__name__}: {exc}"}
        channel.send(encode(Message(Kind.LOAD_FAILED, failure)))
        return None
    print(f"worker: loaded {context.model_name} with {header['handler']}", flush=True)
    channel.send(encode(Message(Kind.READY, {"pid": os.getpid()})))
    return handle, context


def read_manifest(model_dir: str) -> dict[str, Any] | None:
    """``MAR-INF/MANIFEST.json`` of the model directory, or None if there is none.

    Raises:
        ValueError: the manifest is not a JSON object.
    """
    path = os.path.join(model_dir, "MAR-INF", "MANIFEST.json") if model_dir else ""
    if not (path and os.path.isfile(path)):
        return None
    with open(path, encoding="utf-8") as file:
        manifest = json.load(file)
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} is not a JSON object")
    return manifest


def run_batch(
    handle: HandlerFunction,
    context: Context,
    items: list[InferItem],
    *,
    send_parts: Callable[[list[ReplyItem]], None] | None = None,
) -> list[ReplyItem]:
    """Run one batch through the handler; one reply per item, never an exception.

    Args:
        handle: the loaded handler.
        context: the handler's context.
        items: the batch's requests.
        send_parts: writes intermediate answers while the batch runs (streaming);
            None refuses them.

    A batch with OIP tensor requests goes through ``handlers.oip.run_tensor_batch``.
    """
    if len(items) == 1 and items[0].headers.get("describe") == "True":
        return [_describe(handle, items[0])]
    if any(is_tensor_request(it) for it in items):
        plain = partial(_run_plain, handle, context, send_parts=send_parts)
        return run_tensor_batch(handle, context, items, plain)
    return _run_plain(handle, context, items, send_parts=send_parts)


def _run_plain(
    handle: HandlerFunction,
    context: Context,
    items: list[InferItem],
    decoded: list[dict[str, Any] | None] | None = None,
    *,
    send_parts: Callable[[list[ReplyItem]], None] | None,
) -> list[ReplyItem]:
    """Run a batch through ``handle``; ``decoded`` gives items' parameters already decoded."""
    if decoded is None:
        decoded = [None] * len(items)
    batch = [d if d is not None else _params(it) for d, it in zip(decoded, items, strict=True)]
    headers: list[dict[str, Any]] = [dict(it.headers) for it in items]
    sender = PartSender(send_parts) if send_parts is not None else None
    context.start_batch([it.request_id for it in items], headers, sender)
    try:
        return _answers(handle, batch, context, items)
    finally:
        if sender is not None:
            sender.close()  # no part may follow the final reply


def _params(item: InferItem) -> dict[str, Any]:
    """An item's parameters decoded as TorchServe hands them to handlers."""
    return {name: decode_param(ct, data) for name, (ct, data) in item.params.items()}


def _answers(
    handle: HandlerFunction, batch: list[dict[str, Any]], context: Context, items: list[InferItem]
) -> list[ReplyItem]:
    try:
        results = handle(batch, context)
    except PredictionException as exc:
        return _fail_all(items, exc.error_code, exc.message)
    except MemoryError:
        traceback.print_exc()
        return _fail_all(items, 507, "Out of resources")
    except Exception as exc:
        traceback.print_exc()
        sys.stderr.flush()
        return _fail_all(items, 503, f"Prediction failed: {type(exc).__name__}: {exc}")
    if not isinstance(results, list) or len(results) != len(items):
        return _fail_all(
            items, 503, "Invalid model predict output: expected one result per request"
        )
    return [
        _final(item, result, context, idx)
        for idx, (item, result) in enumerate(zip(items, results, strict=True))
    ]


def _describe(handle: HandlerFunction, item: InferItem) -> ReplyItem:
    """Answer a describe request with the handler's ``describe_handle()`` (or {})."""
    describe = getattr(getattr(handle, "__self__", None), "describe_handle", None)
    try:
        result = describe() if callable(describe) else {}
        body = result.encode() if isinstance(result, str) else json.dumps(result).encode()
    except Exception as exc:
        traceback.print_exc()
        return ReplyItem(item.request_id, ok=False, status=503, message=f"describe failed: {exc}")
    return ReplyItem(item.request_id, ok=True, body=body, content_type="application/json")


def _fail_all(items: list[InferItem], status: int, message: str) -> list[ReplyItem]:
    return [failure(it.request_id, status, message) for it in items]


def _final(item: InferItem, result: Any, context: Context, idx: int) -> ReplyItem:
    """The last answer for request ``idx``; after parts it says ``ts_stream_next: false``."""
    if context.get_response_headers(idx).get(STREAM_NEXT_HEADER) == "true":
        context.set_response_header(idx, STREAM_NEXT_HEADER, "false")
    return make_reply(
        item.request_id,
        result,
        status=context.response_status(idx),
        headers=context.get_response_headers(idx),
    )
