"""Bearer-token authorization, on by default (as TorchServe since 0.11.1).

At start-up the server makes three random keys: one for the inference API, one
for the management API, and an API key that may rotate the other two
(``GET /token?type=...`` on the management port). They are written to a key
file with mode 0600 (TorchServe's layout, so existing scripts can read it) and
the file is removed at shutdown. Clients send ``Authorization: Bearer <key>``;
keys are compared in constant time. Keys do not expire.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import re
import secrets
import tempfile
from pathlib import Path

import attrs
import orjson

__all__ = ["Tokens", "bearer_matches", "remove_key_file", "write_key_file"]

_BEARER = re.compile(r"^Bearer\s+(\S+)$")

KINDS = ("inference", "management")
"""The keys a client may present; the API key only rotates these."""


def _new_key() -> str:
    return secrets.token_urlsafe(24)


@attrs.define
class Tokens:
    """The current keys. ``rotate`` replaces one of them."""

    inference: str = attrs.field(factory=_new_key)
    management: str = attrs.field(factory=_new_key)
    api: str = attrs.field(factory=_new_key)

    def key(self, kind: str) -> str:
        """The key for ``kind`` (``inference``, ``management`` or ``api``)."""
        value: str = getattr(self, kind)
        return value

    def rotate(self, kind: str) -> str:
        """Replace the ``kind`` key (inference or management) and return the new one."""
        if kind not in KINDS:
            raise ValueError(f"unknown token type {kind!r}; expected one of {', '.join(KINDS)}")
        key = _new_key()
        setattr(self, kind, key)
        return key

    def to_json(self) -> bytes:
        """The key file's contents, in TorchServe's layout."""
        body = {
            "management": {"key": self.management, "expiration time": None},
            "inference": {"key": self.inference, "expiration time": None},
            "API": {"key": self.api},
        }
        return orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n"


def bearer_matches(header: str | None, key: str) -> bool:
    """Whether an ``Authorization`` header carries ``key`` (constant-time compare)."""
    match = _BEARER.match(header or "")
    presented = match.group(1) if match else ""
    return hmac.compare_digest(presented.encode(), key.encode()) and bool(match)


def write_key_file(path: str | Path, tokens: Tokens) -> Path:
    """Write the keys to ``path`` with mode 0600, atomically; returns the absolute path."""
    target = Path(path).resolve()
    fd, temporary = tempfile.mkstemp(prefix=".key_file.", dir=target.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(tokens.to_json())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return target


def remove_key_file(path: str | Path) -> None:
    """Delete the key file (no error if it is already gone)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
