"""Bearer-token authorization, on by default (as TorchServe since 0.11.1).

At start-up the server makes three random keys: one for the inference API, one
for the management API, and an API key that may rotate the other two
(``GET /token?type=...`` on the management port). They are written to a key
file with mode 0600 (TorchServe's layout, so existing scripts can read it) and
the file is removed at shutdown, if it still holds this server's keys. A link
at the key file's path is replaced by the file, never followed. Clients send
``Authorization: Bearer <key>``; keys are compared in constant time. Keys do not expire.

Keys may instead come from a key file made beforehand (``read_key_file``; e.g. a
Kubernetes Secret mounted read-only, the same keys for every replica): it is
only read, never written or removed, and its keys cannot be rotated over HTTP.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import re
import secrets
import stat
from pathlib import Path

import attrs
import orjson

from supervisor.atomicfile import write_replacing

__all__ = ["Tokens", "bearer_matches", "read_key_file", "remove_key_file", "write_key_file"]

_BEARER = re.compile(r"^Bearer\s+(\S+)$", re.IGNORECASE)  # a scheme is case-insensitive

KINDS = ("inference", "management")
"""The keys a client may present; the API key only rotates these."""


def _new_key() -> str:
    return secrets.token_urlsafe(24)


@attrs.define
class Tokens:
    """The current keys. ``rotate`` replaces one of them, unless they are ``fixed``."""

    inference: str = attrs.field(factory=_new_key)
    management: str = attrs.field(factory=_new_key)
    api: str = attrs.field(factory=_new_key)
    fixed: bool = attrs.field(default=False, kw_only=True)
    """The keys came from a provided key file: rotating them is refused."""

    def key(self, kind: str) -> str:
        """The key for ``kind`` (``inference``, ``management`` or ``api``)."""
        value: str = getattr(self, kind)
        return value

    def rotate(self, kind: str) -> str:
        """Replace the ``kind`` key (inference or management) and return the new one."""
        if kind not in KINDS:
            raise ValueError(f"unknown token type {kind!r}; expected one of {', '.join(KINDS)}")
        if self.fixed:
            raise ValueError(
                "the keys come from a provided key file (keys_from): change them there "
                "and restart the server"
            )
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


def read_key_file(path: str | Path) -> Tokens:
    """The keys of a key file in TorchServe's layout, to use as they are (``fixed``).

    The inference and management keys are required; without an ``API`` key a
    random one is made (it is unused: fixed keys are not rotated).

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not such a key file (the message says what is wrong).
    """
    data = Path(path).read_bytes()[: 1 << 16]
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ValueError("not JSON: expected a key file in TorchServe's layout") from None
    keys = {kind: _key_in(body, kind) for kind in KINDS}
    api = _key_in(body, "API", required=False) or _new_key()
    return Tokens(keys["inference"], keys["management"], api, fixed=True)


def _key_in(body: object, kind: str, *, required: bool = True) -> str:
    """``body[kind]["key"]``: a non-empty string of printable characters without spaces."""
    entry = body.get(kind) if isinstance(body, dict) else None
    key = entry.get("key") if isinstance(entry, dict) else None
    if key is None and not required:
        return ""
    if not (isinstance(key, str) and key.isprintable() and key and not re.search(r"\s", key)):
        raise ValueError(f"expected a non-empty key without spaces at {kind}.key")
    return key


def bearer_matches(header: str | None, key: str) -> bool:
    """Whether an ``Authorization`` header carries ``key`` (constant-time compare).

    The scheme is matched case-insensitively (``bearer``, ``BEARER``: RFC 9110
    section 11.1); the key itself exactly.
    """
    match = _BEARER.match(header or "")
    presented = match.group(1) if match else ""
    return hmac.compare_digest(presented.encode(), key.encode()) and bool(match)


def write_key_file(path: str | Path, tokens: Tokens) -> Path:
    """Write the keys to ``path`` with mode 0600, atomically; returns the absolute path.

    The keys go to a new file next to ``path`` that is then renamed over it, so
    a symbolic link at ``path`` is replaced, never followed: whatever it points
    to is left as it was.
    """
    given = Path(path)
    target = given.parent.resolve() / given.name  # the link itself, not where it leads
    write_replacing(target, tokens.to_json(), prefix=".key_file.", mode=0o600)
    return target


def remove_key_file(path: str | Path, tokens: Tokens) -> bool:
    """Delete the key file if it is still the one these ``tokens`` were written to.

    Only a regular file (not a link) that holds ``tokens.api`` is deleted: the
    API key never rotates, so it marks this server's file across rotations, and
    a file someone else put in its place is left alone.

    Returns:
        False when a file that is not ours is there (True if deleted or gone).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return True
    except OSError:
        return False  # a link (ELOOP) or unreadable: not ours to delete
    with os.fdopen(fd, "rb") as handle:
        ours = stat.S_ISREG(os.fstat(fd).st_mode) and _holds_api_key(handle.read(1 << 16), tokens)
    if ours:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return ours


def _holds_api_key(data: bytes, tokens: Tokens) -> bool:
    try:
        key = orjson.loads(data)["API"]["key"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(key, str) and hmac.compare_digest(key.encode(), tokens.api.encode())
