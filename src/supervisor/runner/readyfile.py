"""The ready file: how ``serve --ready-file PATH`` says that start-up is over.

Once every listener is bound and every start-up model has settled (its workers
are ready, or it failed for good), the server writes one JSON document to
``PATH``. It writes a temporary file next to it and renames it over ``PATH``, so
a reader sees the whole document or nothing; the file is removed when the
server stops (and a stale one when it starts)::

    {"pid": 4242,
     "inference": "http://127.0.0.1:40215",
     "management": "http://127.0.0.1:32981",
     "metrics": "http://127.0.0.1:39015",
     "models": [
       {"name": "echo", "version": "1.0", "state": "READY"},
       {"name": "broken", "version": "1.0", "state": "FAILED",
        "reason": "...", "logTail": ["...", "..."]}]}

A model that could not even be registered (a missing archive, a bad manifest)
is listed with the name it was configured under and ``"version": null``.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import attrs

from supervisor.atomicfile import write_replacing

__all__ = [
    "FAILED",
    "READY",
    "ModelOutcome",
    "ReadyReport",
    "remove_ready_file",
    "write_ready_file",
]

READY = "READY"
FAILED = "FAILED"


@attrs.frozen
class ModelOutcome:
    """How one start-up model settled.

    Attributes:
        name: the model's name.
        version: its version; None when it was never registered.
        state: ``READY`` or ``FAILED``.
        reason: why it failed (None when ready).
        log_tail: the last log lines of its failed worker, if any.
    """

    name: str
    version: str | None
    state: str
    reason: str | None = None
    log_tail: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The model's entry in the ready file."""
        entry: dict[str, Any] = {"name": self.name, "version": self.version, "state": self.state}
        if self.state != READY:
            entry["reason"] = self.reason
            entry["logTail"] = list(self.log_tail)
        return entry


@attrs.frozen
class ReadyReport:
    """The ready file's contents: where the server listens and how its models settled."""

    pid: int
    inference: str
    management: str
    metrics: str
    models: tuple[ModelOutcome, ...]

    def failed(self) -> tuple[ModelOutcome, ...]:
        """The models that did not become ready."""
        return tuple(m for m in self.models if m.state != READY)

    def to_json(self) -> bytes:
        """The document, as written to the file."""
        body = attrs.asdict(self, recurse=False)
        body["models"] = [m.to_json() for m in self.models]
        return json.dumps(body, indent=2).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> ReadyReport:
        """Parse a ready file.

        Raises:
            ValueError: the document is not a ready file.
        """
        try:
            body = json.loads(data)
            models = tuple(
                ModelOutcome(
                    name=str(m["name"]),
                    version=None if m["version"] is None else str(m["version"]),
                    state=str(m["state"]),
                    reason=m.get("reason"),
                    log_tail=tuple(str(line) for line in m.get("logTail", ())),
                )
                for m in body["models"]
            )
            urls = [str(body[key]) for key in ("inference", "management", "metrics")]
            return cls(int(body["pid"]), urls[0], urls[1], urls[2], models)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a ready file: {exc!r}") from None


def write_ready_file(path: str | Path, report: ReadyReport) -> None:
    """Write ``report`` to ``path`` atomically (readers never see half a file)."""
    target = Path(path).resolve()
    write_replacing(target, report.to_json(), prefix=".ready.")


def remove_ready_file(path: str | Path) -> None:
    """Delete the ready file (no error if it is not there)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
