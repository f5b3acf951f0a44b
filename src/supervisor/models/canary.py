"""Canary requests: what to send to a model version, and whether its answer passes.

A canary list is JSON: a list of objects, each one request and what its answer
must be::

    [
      {"name": "smoke", "body": {"x": [1, 2]}, "expect_status": 200,
       "expect_json": {"y": 3}},
      {"body": "hello", "content_type": "text/plain", "expect_contains": "hello"},
      {"body_file": "kitten.jpg", "content_type": "image/jpeg"}
    ]

``body`` is sent as UTF-8 text when it is a string (``text/plain`` unless
``content_type`` says otherwise) and as JSON otherwise (``application/json``);
``body_file`` names a file beside the canary file (``application/octet-stream``).
An answer passes when its status is ``expect_status`` (200 by default) and, if
given, its JSON equals ``expect_json`` and its text contains ``expect_contains``.

This module is pure: it parses and judges, and never talks to a worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import orjson

__all__ = [
    "ARCHIVE_FILE",
    "MAX_CANARIES",
    "Canary",
    "CanaryError",
    "CanaryResult",
    "judge",
    "parse_canaries",
    "read_canaries",
]

ARCHIVE_FILE = "canaries.json"
"""The canary list a model archive (or model directory) may carry at its root."""

MAX_CANARIES = 100
"""The most canaries one list may hold."""

BODY_EXCERPT = 1000
"""How many characters of a failed canary's answer an error report shows."""

_KEYS = frozenset(
    {"name", "body", "body_file", "content_type", "expect_status", "expect_json", "expect_contains"}
)


class CanaryError(ValueError):
    """A canary list that cannot be used (bad JSON, unknown keys, a missing file)."""


@attrs.frozen
class Canary:
    """One canary request and the answer it expects.

    Attributes:
        body: the request body.
        content_type: the request's ``Content-Type``.
        expect_status: the status the answer must have.
        expect_json: JSON text the answer, parsed as JSON, must equal (None: any).
        expect_contains: text the answer must contain (None: any).
        name: a label for reports (``canary N`` when the list gives none).
    """

    body: bytes
    content_type: str = "application/json"
    expect_status: int = 200
    expect_json: str | None = None
    expect_contains: str | None = None
    name: str = ""


@attrs.frozen
class CanaryResult:
    """How one canary fared.

    Attributes:
        index: its place in the list, from 1.
        canary: what was sent.
        status: the answer's HTTP status.
        body: the answer's body (an error's message when no worker answered).
        reason: why it failed; empty when it passed.
        latency: seconds from sending to the answer.
    """

    index: int
    canary: Canary
    status: int
    body: bytes
    reason: str = ""
    latency: float = 0.0

    @property
    def passed(self) -> bool:
        """Whether the answer was the expected one."""
        return not self.reason

    def to_json(self) -> dict[str, Any]:
        """A report of the result, with at most ``BODY_EXCERPT`` characters of the body."""
        return {
            "index": self.index,
            "name": self.canary.name,
            "passed": self.passed,
            "status": self.status,
            "body": self.body.decode("utf-8", "replace")[:BODY_EXCERPT],
            "reason": self.reason,
            "latencyMs": round(self.latency * 1000, 3),
        }


def judge(canary: Canary, status: int, body: bytes) -> str:
    """Why the answer ``status``/``body`` fails ``canary``, or "" if it passes."""
    if status != canary.expect_status:
        return f"status {status}, expected {canary.expect_status}"
    if canary.expect_json is not None:
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            return "the answer is not JSON"
        if answer != orjson.loads(canary.expect_json):
            return f"the answer differs from the expected JSON {canary.expect_json}"
    wanted = canary.expect_contains
    if wanted is not None and wanted not in body.decode("utf-8", "replace"):
        return f"the answer does not contain {wanted!r}"
    return ""


def read_canaries(path: str | Path) -> tuple[Canary, ...]:
    """Parse the canary file at ``path``: a JSON list, or JSON lines if it ends in ``.jsonl``.

    ``body_file`` entries are read beside it.

    Raises:
        CanaryError: the file is unreadable or not a valid canary list.
    """
    path = Path(path)
    try:
        text = path.read_bytes()
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        raise CanaryError(f"{path.name}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        if path.suffix == ".jsonl":  # JSON lines: one object per line
            data = [orjson.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise CanaryError(f"{path.name}: invalid JSON or JSON lines: {exc}") from None
    if not data:
        raise CanaryError(f"{path.name}: the canary file has no canaries")
    try:
        return parse_canaries(data, path.parent)
    except CanaryError as exc:
        raise CanaryError(f"{path.name}: {exc}") from None


def parse_canaries(data: Any, base: Path | None = None) -> tuple[Canary, ...]:
    """Build canaries from a parsed JSON list.

    Args:
        data: the list.
        base: the directory ``body_file`` names are read from (None refuses them).

    Raises:
        CanaryError: not a list of valid entries, or a ``body_file`` that is missing
            or outside ``base``.
    """
    if not isinstance(data, list):
        raise CanaryError("canaries must be a JSON list of objects")
    if len(data) > MAX_CANARIES:
        raise CanaryError(f"at most {MAX_CANARIES} canaries are allowed, got {len(data)}")
    return tuple(_entry(n, entry, base) for n, entry in enumerate(data, start=1))


def _entry(index: int, entry: Any, base: Path | None) -> Canary:
    where = f"canary {index}"
    if not isinstance(entry, dict):
        raise CanaryError(f"{where}: must be an object")
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise CanaryError(f"{where}: unknown key(s) {', '.join(unknown)}")
    body, content_type = _body(where, entry, base)
    return Canary(
        body=body,
        content_type=_text(where, entry, "content_type") or content_type,
        expect_status=_status(where, entry.get("expect_status", 200)),
        expect_json=_json(where, entry["expect_json"]).decode() if "expect_json" in entry else None,
        expect_contains=_text(where, entry, "expect_contains"),
        name=_text(where, entry, "name") or where,
    )


def _body(where: str, entry: Mapping[str, Any], base: Path | None) -> tuple[bytes, str]:
    """The body and its default content type: text, JSON, or a file's bytes."""
    if ("body" in entry) == ("body_file" in entry):
        raise CanaryError(f"{where}: give exactly one of body and body_file")
    if "body_file" in entry:
        name = _text(where, entry, "body_file") or ""
        return _file(where, name, base), "application/octet-stream"
    body = entry["body"]
    if isinstance(body, str):
        return body.encode(), "text/plain"
    return _json(where, body), "application/json"


def _json(where: str, value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:  # e.g. an integer beyond 64 bits
        raise CanaryError(f"{where}: {exc}") from None


def _file(where: str, name: str, base: Path | None) -> bytes:
    if base is None:
        raise CanaryError(f"{where}: body_file is not allowed here")
    path = Path(name)
    if not name or path.is_absolute() or ".." in path.parts:
        raise CanaryError(f"{where}: body_file must be a relative path without '..': {name!r}")
    try:
        return (base / path).read_bytes()
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name (found by fuzzing)
        why = getattr(exc, "strerror", None) or exc
        raise CanaryError(f"{where}: body_file {name}: {why}") from None


def _text(where: str, entry: Mapping[str, Any], key: str) -> str | None:
    value = entry.get(key)
    if value is not None and not isinstance(value, str):
        raise CanaryError(f"{where}: {key} must be a string")
    return value


def _status(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 599:
        raise CanaryError(f"{where}: expect_status must be an HTTP status (100-599)")
    return value
