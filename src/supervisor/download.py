"""Fetching a remote model archive: allowed URLs only, bounded in size and time.

Redirects are followed by hand so that every hop is checked against
``allowed_urls``; the body is streamed to a temporary file and abandoned as soon
as it passes ``max_bytes``. ``file://`` URLs (when allowed) are copied.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import httpx
import trio

from supervisor.archive import check_url
from supervisor.errors import DownloadFailed, SupervisorError

__all__ = ["fetch"]

MAX_REDIRECTS = 5


async def fetch(
    url: str,
    target_dir: Path,
    *,
    allowed_urls: tuple[str, ...],
    max_bytes: int,
    time_limit: float,
) -> Path:
    """Download ``url`` into ``target_dir`` under its own file name.

    Raises:
        DownloadFailed: refused redirect, HTTP error, too big, too slow, or the
            file already exists in ``target_dir``.
    """
    name = Path(unquote(urlsplit(url).path)).name
    if not name or name.startswith("."):
        raise DownloadFailed(f"Failed to download archive from: {url} (no file name)")
    target = target_dir / name
    if os.path.exists(target):  # noqa: ASYNC240 - one stat of a local directory
        raise DownloadFailed(f"Model file already exists {name}")
    try:
        with trio.fail_after(time_limit):
            if urlsplit(url).scheme == "file":
                await trio.to_thread.run_sync(_copy_file, url, target, max_bytes)
            else:
                await _download(url, target, allowed_urls, max_bytes)
    except trio.TooSlowError:
        why = f"over {time_limit:g} s"
        raise DownloadFailed(f"Failed to download archive from: {url} ({why})") from None
    except httpx.HTTPError as exc:
        raise DownloadFailed(f"Failed to download archive from: {url} ({exc})") from None
    return target


def _copy_file(url: str, target: Path, max_bytes: int) -> None:
    source = Path(unquote(urlsplit(url).path))
    if not source.is_file():
        raise DownloadFailed(f"Failed to download archive from: {url} (no such file)")
    if source.stat().st_size > max_bytes:
        raise DownloadFailed(f"Failed to download archive from: {url} (over {max_bytes} bytes)")
    shutil.copyfile(source, target)


async def _download(url: str, target: Path, allowed: tuple[str, ...], max_bytes: int) -> None:
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
                await _save(response, url, target, max_bytes)
                return
    raise DownloadFailed(f"Failed to download archive from: {url} (too many redirects)")


def _next_hop(url: str, response: httpx.Response, allowed: tuple[str, ...]) -> str:
    location: str = urljoin(url, str(response.headers.get("Location", "")))
    try:
        check_url(location, allowed)
    except SupervisorError:
        raise DownloadFailed(
            f"Failed to download archive from: {url} (redirect to a URL that is not allowed)"
        ) from None
    return location


async def _save(response: httpx.Response, url: str, target: Path, max_bytes: int) -> None:
    fd, temporary = tempfile.mkstemp(prefix=".download.", dir=target.parent)
    size = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise DownloadFailed(
                        f"Failed to download archive from: {url} (over {max_bytes} bytes)"
                    )
                handle.write(chunk)
        os.replace(temporary, target)
    except BaseException:
        os.unlink(temporary)
        raise
