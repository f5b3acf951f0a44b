"""One normal form for remote URLs, so that ``allowed_urls`` sees what is fetched.

A pattern such as ``file:///srv/published/.*`` must not be escaped with dot
segments (``/published/../outside``, ``/published/%2e%2e/outside``) that the
client or the remote server resolves after the match. So a URL is first put in
its normal form (RFC 3986 section 6.2.2): scheme and host in lower case,
percent-escapes of unreserved characters decoded and the others in upper case,
dot segments removed (section 5.2.4), the fragment dropped. The patterns are
matched against that form, and that form is what is fetched.

Refused outright (``InvalidRequest``): an escape that is no escape, a control
character (``%00`` included) anywhere in the path, an encoded ``/`` or ``\\``
or a literal ``\\`` in it (a server may decode them and resolve dot segments
again), and a port that is no port. ``archive_name`` refuses a last segment that
cannot be a file name in the model store (empty, hidden, too long).

Pure: no I/O and no trio.
"""

from __future__ import annotations

import re
import string
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

from supervisor.errors import DownloadFailed, InvalidRequest, ModelNotFound

__all__ = [
    "MAX_NAME_BYTES",
    "allowed_url",
    "archive_name",
    "normalize_url",
    "remove_dot_segments",
    "url_scheme",
]

MAX_NAME_BYTES = 255
"""The longest archive file name, in UTF-8 bytes (NAME_MAX on Linux)."""

_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_RAW_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]|%[01][0-9A-F]|%7F")
_SEPARATOR = re.compile(r"\\|%2F|%5C")


def url_scheme(url: str) -> str:
    """The scheme of ``url`` in lower case ('' for none or an unparsable URL)."""
    try:
        return urlsplit(url).scheme
    except ValueError:
        return ""


def allowed_url(url: str, patterns: tuple[str, ...]) -> str:
    """``url`` in its normal form, if that form matches one of ``patterns`` in full.

    Raises:
        InvalidRequest: the URL is malformed (see the module docstring).
        ModelNotFound: its normal form matches no pattern.
    """
    normal = normalize_url(url)
    if not any(re.fullmatch(pattern, normal) for pattern in patterns):
        raise ModelNotFound(f"Given URL {url} does not match any allowed URL(s)")
    return normal


def normalize_url(url: str) -> str:
    """``url`` in the normal form described in the module docstring.

    Raises:
        InvalidRequest: the URL is malformed.
    """
    if _RAW_CONTROL.search(url):
        raise InvalidRequest(f"URL holds a control character: {url!r}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsed only to refuse a port that is no port
    except ValueError as exc:
        raise InvalidRequest(f"Malformed URL {url!r}: {exc}") from None
    path = _normalize_escapes(parts.path, url)
    if _CONTROL.search(path):
        raise InvalidRequest(f"URL path holds a control character: {url!r}")
    if _SEPARATOR.search(path):
        raise InvalidRequest(f"URL path holds an encoded '/' or a '\\': {url!r}")
    query = _normalize_escapes(parts.query, url)
    netloc = _lower_host(parts.netloc)
    return urlunsplit(SplitResult(parts.scheme, netloc, remove_dot_segments(path), query, ""))


def _normalize_escapes(text: str, url: str) -> str:
    """Decode escapes of unreserved characters; write the others in upper case."""
    if _BAD_ESCAPE.search(text):
        raise InvalidRequest(f"URL holds a '%' that starts no escape: {url!r}")

    def normal(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else "%" + match.group(1).upper()

    return _ESCAPE.sub(normal, text)


def _lower_host(netloc: str) -> str:
    """``netloc`` with its host (and port) in lower case; the user information as it is."""
    userinfo, at, host = netloc.rpartition("@")
    return f"{userinfo}{at}{host.lower()}"


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4: resolve ``.`` and ``..`` segments of ``path``."""
    output: list[str] = []
    rest = path
    while rest:
        if rest.startswith(("../", "./")):
            rest = rest[rest.index("/") + 1 :]
        elif rest.startswith("/./") or rest == "/.":
            rest = "/" + rest[3:]
        elif rest.startswith("/../") or rest == "/..":
            rest = "/" + rest[4:]
            if output:
                output.pop()
        elif rest in (".", ".."):
            rest = ""
        else:
            end = rest.find("/", 1)
            end = len(rest) if end < 0 else end
            output.append(rest[:end])
            rest = rest[end:]
    return "".join(output)


def archive_name(url: str) -> str:
    """The file name a download of ``url`` (in normal form) is stored under.

    Raises:
        DownloadFailed: the URL's last segment is empty, hidden, or too long for
            a file name.
    """
    name = unquote(urlsplit(url).path.rpartition("/")[2], errors="surrogateescape")
    if not name or name.startswith("."):
        raise DownloadFailed(f"Failed to download archive from: {url} (no file name)")
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > MAX_NAME_BYTES:
        raise DownloadFailed(
            f"Failed to download archive from: {url} "
            f"(file name too long: {size} bytes, at most {MAX_NAME_BYTES})"
        )
    return name
