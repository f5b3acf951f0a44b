"""Helpers for tests that run real worker processes (real clock only)."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import psutil
import trio

from supervisor.policy import RestartPolicy

# A policy that restarts quickly, so crash-loop tests take seconds, not minutes.
FAST_RESTARTS = RestartPolicy(max_restarts=2, window=60.0, backoff_initial=0.05, backoff_max=0.2)

ECHO_HANDLER = """
import os, sys, time

class Echo:
    def initialize(self, context):
        print("echo handler ready", flush=True)

    def handle(self, batch, context):
        out = []
        for item in batch:
            body = item.get("body")
            if isinstance(body, (bytes, bytearray)):
                body = body.decode()
            if body == "hang":
                print("hanging on purpose", flush=True)
                time.sleep(3600)
            if body == "crash":
                print("crashing on purpose", flush=True)
                os._exit(3)
            if body == "raise":
                raise ValueError("bad input on purpose")
            if body.startswith("sleep "):
                time.sleep(float(body.split()[1]))
            out.append({"echo": body, "pid": os.getpid(), "batch": len(batch)})
        return out
"""

CRASH_AT_LOAD_HANDLER = """
class Broken:
    def initialize(self, context):
        print("loading the broken model", flush=True)
        raise RuntimeError("weights file is corrupt (on purpose)")

    def handle(self, batch, context):
        return batch
"""


async def eventually(predicate: Callable[[], bool], within: float = 15.0) -> None:
    """Wait until ``predicate()`` holds, under a hard deadline.

    Polling is deliberate: the states watched here live in other processes (a
    worker's pid, its log, a server's output), where there is no event to await.
    """
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.02)


def gone(pid: int) -> bool:
    """True once ``pid`` is no longer a live process (a zombie counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def make_mar(
    store: Path,
    name: str,
    handler_source: str | None,
    *,
    version: str = "1.0",
    module: str = "model_handler",
    extra: Mapping[str, str | bytes] | None = None,
    manifest_model: Mapping[str, str] | None = None,
) -> Path:
    """Write ``<name>.mar`` into ``store``: a manifest, a handler module, extra files.

    ``handler_source`` None writes no handler module (for a built-in handler named
    in ``manifest_model``); ``extra`` files may be text or bytes (weights, images);
    ``manifest_model`` adds to (or overrides) the manifest's ``model`` section, e.g.
    ``{"serializedFile": "model.pt", "handler": "image_classifier"}``.
    """
    store.mkdir(parents=True, exist_ok=True)
    manifest = {
        "createdOn": "21/11/2026 12:00:00",
        "runtime": "python",
        "model": {
            "modelName": name,
            "modelVersion": version,
            "handler": f"{module}.py",
            **(manifest_model or {}),
        },
        "archiverVersion": "0.12.0",
    }
    path = store / f"{name}.mar"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        if handler_source is not None:
            archive.writestr(f"{module}.py", handler_source)
        for file_name, content in (extra or {}).items():
            archive.writestr(file_name, content)
    return path
