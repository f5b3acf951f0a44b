"""Fetching a remote model archive: allowed URLs only, bounded in size and time.

The URL is matched against ``allowed_urls`` in its normal form (see
``supervisor.models.urlpolicy``), and that form is what is fetched. Redirects are
followed by hand so that every hop is normalised and checked the same way. A
``file://`` URL (when allowed) names no host, and the file it leads to after its
links are resolved must be allowed too.

The body goes to a ``.download.*`` file in the target directory, abandoned as
soon as it passes ``max_bytes``, and is renamed to its own name once complete.
With a ``journal`` (see ``supervisor.models.sweep``) both files are recorded before they
are used, so that a server killed mid-download has its leftovers swept at the
next start. A file already under that name is refused, unless it is the
leftover of a server that is gone (then it is swept and fetched again).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, unquote, urljoin, urlsplit

import httpx
import trio

from supervisor.atomicfile import renamed_over
from supervisor.errors import DownloadFailed, SupervisorError
from supervisor.models.sweep import record_file, sweep_leftovers
from supervisor.models.urlpolicy import allowed_url, archive_name

__all__ = ["fetch"]

MAX_REDIRECTS = 5
_CHUNK = 1 << 20


async def fetch(
    url: str,
    target_dir: Path,
    *,
    allowed_urls: tuple[str, ...],
    max_bytes: int,
    time_limit: float,
    journal: Path | None = None,
) -> Path:
    """Download ``url`` into ``target_dir`` under its own file name.

    Args:
        url: an http(s) or file URL.
        target_dir: where the archive is stored (the model store).
        allowed_urls: the patterns the URL (and each redirect) must match in full.
        max_bytes: the largest archive accepted.
        time_limit: seconds the whole download may take.
        journal: where to record the files written (a scratch directory's journal).

    Raises:
        InvalidRequest: a malformed URL.
        ModelNotFound: a URL that is not allowed.
        DownloadFailed: refused redirect, HTTP error, too big, too slow, a name that
            cannot be a file name, or a file of that name already in ``target_dir``.
    """
    url = allowed_url(url, allowed_urls)
    target = target_dir / archive_name(url)
    if not await trio.to_thread.run_sync(_make_room, target):
        raise DownloadFailed(f"Model file already exists {target.name}")
    fd, temporary = await trio.to_thread.run_sync(_open_temporary, target, journal)
    with renamed_over(temporary, target):
        with os.fdopen(fd, "wb") as out:
            await _fill(out, url, allowed_urls, max_bytes, time_limit)
        if journal is not None:
            record_file(journal, target, os.lstat(temporary), finished=True)
    return target


def _make_room(target: Path) -> bool:
    """Whether ``target`` is free, once the leftovers of servers that are gone are swept."""
    if not os.path.lexists(target):
        return True
    sweep_leftovers()
    return not os.path.lexists(target)


def _open_temporary(target: Path, journal: Path | None) -> tuple[int, str]:
    """A new ``.download.*`` file next to ``target``, recorded in ``journal`` first."""
    fd, temporary = tempfile.mkstemp(prefix=".download.", dir=target.parent)
    try:
        if journal is not None:
            record_file(journal, Path(temporary), os.fstat(fd))
    except BaseException:
        os.close(fd)
        os.unlink(temporary)
        raise
    return fd, temporary


async def _fill(
    out: BinaryIO, url: str, allowed: tuple[str, ...], max_bytes: int, time_limit: float
) -> None:
    """Write the body of ``url`` to ``out`` within ``time_limit`` seconds."""
    try:
        with trio.fail_after(time_limit):
            if urlsplit(url).scheme == "file":
                await trio.to_thread.run_sync(_copy_file, url, out, allowed, max_bytes)
            else:
                await _download(url, out, allowed, max_bytes)
    except trio.TooSlowError:
        why = f"over {time_limit:g} s"
        raise DownloadFailed(f"Failed to download archive from: {url} ({why})") from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise DownloadFailed(f"Failed to download archive from: {url} ({exc})") from None


def _copy_file(url: str, out: BinaryIO, allowed: tuple[str, ...], max_bytes: int) -> None:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise DownloadFailed(f"Failed to download archive from: {url} (a file URL names no host)")
    try:
        source = _real_source(url, unquote(parts.path), allowed)
        if not source.is_file():  # a directory, a FIFO or a device is no archive
            raise FileNotFoundError(2, "no such file")
        with source.open("rb") as handle:
            _copy_bounded(handle, out, url, max_bytes)
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise DownloadFailed(f"Failed to download archive from: {url} ({why})") from None


def _real_source(url: str, path: str, allowed: tuple[str, ...]) -> Path:
    """``path`` with its links resolved; that too must be an allowed URL."""
    real = os.path.realpath(path, strict=True)
    if real != path:
        try:
            allowed_url("file://" + quote(real), allowed)
        except SupervisorError:
            raise DownloadFailed(
                f"Failed to download archive from: {url} (a link leads outside the allowed URLs)"
            ) from None
    return Path(real)


def _copy_bounded(source: BinaryIO, out: BinaryIO, url: str, max_bytes: int) -> None:
    size = 0
    while chunk := source.read(_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise DownloadFailed(f"Failed to download archive from: {url} (over {max_bytes} bytes)")
        out.write(chunk)


async def _download(url: str, out: BinaryIO, allowed: tuple[str, ...], max_bytes: int) -> None:
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            async with client.stream("GET", url) as response:
                if response.is_redirect:
                    url = _next_hop(url, response, allowed)
                    continue
                if response.status_code != 200:
                    raise DownloadFailed(
                        f"Failed to download archive from: {url} (HTTP {response.status_code})"
                    )
                await _save(response, url, out, max_bytes)
                return
    raise DownloadFailed(f"Failed to download archive from: {url} (too many redirects)")


def _next_hop(url: str, response: httpx.Response, allowed: tuple[str, ...]) -> str:
    """The redirect's target in normal form, if it is allowed (what is fetched next)."""
    location: str = urljoin(url, str(response.headers.get("Location", "")))
    try:
        return allowed_url(location, allowed)
    except SupervisorError:
        raise DownloadFailed(
            f"Failed to download archive from: {url} (redirect to a URL that is not allowed)"
        ) from None


async def _save(response: httpx.Response, url: str, out: BinaryIO, max_bytes: int) -> None:
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise DownloadFailed(f"Failed to download archive from: {url} (over {max_bytes} bytes)")
        out.write(chunk)
