"""Canary requests: the sample requests ``validate`` sends to a freshly loaded model.

A canary file is JSON: a list of objects, or one object per line (JSON lines;
blank lines are skipped). Each object is one request:

=================  ============================================================
``name``           a label for the report (default ``canary N``)
``body``           the body: a string is sent as UTF-8 text (``text/plain``),
                   any other JSON value as JSON (``application/json``)
``body_file``      instead of ``body``: a file whose bytes are the body
                   (``application/octet-stream``); a relative path is relative
                   to the canary file
``content_type``   the ``Content-Type`` to send instead of the default
``expect_status``  the status that counts as success (default 200)
=================  ============================================================

Unknown keys are errors, so that a typo cannot turn a canary into a different one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

__all__ = ["Canary", "CanaryError", "parse_canaries", "read_canaries"]

_KEYS = frozenset({"name", "body", "body_file", "content_type", "expect_status"})


class CanaryError(ValueError):
    """The canary file is unreadable or malformed."""


@attrs.frozen
class Canary:
    """One canary request.

    Attributes:
        name: its label in the report.
        body: the request body.
        content_type: the ``Content-Type`` header.
        expect_status: the status that counts as success.
    """

    name: str
    body: bytes
    content_type: str
    expect_status: int = 200


def read_canaries(path: str | Path) -> list[Canary]:
    """Read a canary file (``body_file`` paths are relative to it).

    Raises:
        CanaryError: the file or a body file cannot be read, or it is malformed.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CanaryError(f"cannot read the canary file {path}: {exc}") from None
    return parse_canaries(text, base=path.parent)


def parse_canaries(
    text: str, *, base: Path, read: Callable[[Path], bytes] = Path.read_bytes
) -> list[Canary]:
    """Parse a canary file's text.

    Args:
        text: a JSON list of objects, or JSON lines.
        base: the directory relative ``body_file`` paths start from.
        read: reads a body file (injectable for tests).

    Raises:
        CanaryError: malformed, empty, or a body file cannot be read.
    """
    entries = _entries(text)
    if not entries:
        raise CanaryError("the canary file has no canaries")
    return [_canary(entry, number, base, read) for number, entry in enumerate(entries, 1)]


def _entries(text: str) -> list[Any]:
    try:
        if text.lstrip().startswith("["):
            entries = json.loads(text)
            return list(entries)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise CanaryError(f"the canary file is not JSON or JSON lines: {exc}") from None


def _canary(entry: Any, number: int, base: Path, read: Callable[[Path], bytes]) -> Canary:
    where = f"canary {number}"
    if not isinstance(entry, Mapping):
        raise CanaryError(f"{where}: expected an object, got {entry!r}")
    if unknown := sorted(set(entry) - _KEYS):
        raise CanaryError(f"{where}: unknown key(s) {', '.join(unknown)}")
    if ("body" in entry) == ("body_file" in entry):
        raise CanaryError(f"{where}: give exactly one of body and body_file")
    body, default_type = _body(entry, base, read, where)
    content_type = entry.get("content_type", default_type)
    status = entry.get("expect_status", 200)
    if not isinstance(content_type, str) or not isinstance(status, int) or isinstance(status, bool):
        raise CanaryError(f"{where}: content_type must be a string, expect_status an integer")
    return Canary(str(entry.get("name", where)), body, content_type, status)


def _body(
    entry: Mapping[str, Any], base: Path, read: Callable[[Path], bytes], where: str
) -> tuple[bytes, str]:
    if "body_file" in entry:
        try:
            return read(base / str(entry["body_file"])), "application/octet-stream"
        except OSError as exc:
            raise CanaryError(f"{where}: cannot read body_file: {exc}") from None
    body = entry["body"]
    if isinstance(body, str):
        return body.encode(), "text/plain"
    return json.dumps(body).encode(), "application/json"
