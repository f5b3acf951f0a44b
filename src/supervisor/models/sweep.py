"""What a server leaves on disk, and sweeping up after one that was killed.

A server keeps its scratch files (unpacked archives) in a directory of its own
under the temporary directory, ``trio-supervisor-XXXXXXXX``, whose ``owner.json``
names the server process: host, pid and start time. A clean stop removes the
directory; a SIGKILL cannot. Downloads into the model store are written to the
store's ``.download.XXXXXXXX`` files first, and each one is recorded, before it
is used, in the journal ``downloads.jsonl`` of the scratch directory: the path
with its device and inode (and, for a finished archive, its size and mtime).

At start-up, ``sweep_leftovers`` removes the scratch directory of every server
that is gone (its pid no longer runs, or runs another program started at
another time), and each store file its journal recorded that is still that very
file. A directory without a valid ``owner.json`` (another program's, or one
being made right now), another user's, or a live server's is left alone, and so
is any store file whose identity differs: a name is never enough.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import orjson
import psutil

__all__ = [
    "DOWNLOAD_JOURNAL",
    "OWNER_FILE",
    "SCRATCH_PREFIX",
    "Owner",
    "open_scratch",
    "read_owner",
    "record_file",
    "sweep_leftovers",
]

log = logging.getLogger("supervisor.sweep")

SCRATCH_PREFIX = "trio-supervisor-"
OWNER_FILE = "owner.json"
DOWNLOAD_JOURNAL = "downloads.jsonl"
_KIND = "trio-supervisor scratch"
_MAX_MARKER = 4096


@attrs.frozen
class Owner:
    """The server process that made a scratch directory.

    Attributes:
        host: the host name (a directory shared between hosts is never swept).
        pid: the process id.
        started: the process's start time (seconds since the epoch), so that a
            reused pid is told apart.
    """

    host: str
    pid: int
    started: float

    @classmethod
    def this_process(cls) -> Owner:
        """The current process."""
        pid = os.getpid()
        return cls(socket.gethostname(), pid, psutil.Process(pid).create_time())

    def is_alive(self) -> bool:
        """Whether the owner may still run (True when it cannot be told)."""
        if self.host != socket.gethostname():
            return True
        try:
            process = psutil.Process(self.pid)
            same = abs(process.create_time() - self.started) < 0.01
            return same and bool(process.status() != psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return False
        except psutil.Error:
            return True


@contextlib.contextmanager
def open_scratch(parent: str | Path | None = None) -> Iterator[Path]:
    """A fresh scratch directory with this process's ``owner.json``; removed on exit."""
    with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, dir=parent) as directory:
        owner = Owner.this_process()
        marker = {"kind": _KIND, **attrs.asdict(owner)}
        (Path(directory) / OWNER_FILE).write_bytes(orjson.dumps(marker))
        yield Path(directory)


def record_file(journal: Path, path: Path, info: os.stat_result, *, finished: bool = False) -> None:
    """Append to the download journal that ``path`` is (or will be) the file ``info`` describes.

    Record a file before it is used (an archive before it is renamed into the
    model store). ``finished`` adds its size and mtime: a sweep removes a
    finished archive only if it is unchanged.
    """
    entry: dict[str, Any] = {"path": str(path), "dev": info.st_dev, "ino": info.st_ino}
    if finished:
        entry |= {"size": info.st_size, "mtime_ns": info.st_mtime_ns}
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, orjson.dumps(entry) + b"\n")
    finally:
        os.close(fd)


def sweep_leftovers(parent: str | Path | None = None) -> list[Path]:
    """Remove what servers that are gone left behind; returns their scratch directories.

    Args:
        parent: where scratch directories are made (the temporary directory).
    """
    removed = []
    for directory in Path(parent or tempfile.gettempdir()).glob(SCRATCH_PREFIX + "*"):
        owner = read_owner(directory)
        if owner is None or owner.is_alive():
            continue
        files = _remove_recorded(directory / DOWNLOAD_JOURNAL)
        shutil.rmtree(directory, ignore_errors=True)
        log.info(
            "removed the leftovers of server pid %d: %s and %d download(s)",
            owner.pid,
            directory,
            files,
        )
        removed.append(directory)
    return removed


def read_owner(directory: Path) -> Owner | None:
    """The owner named by ``directory``'s marker; None if it is not a scratch directory of ours."""
    try:
        info = os.lstat(directory)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            return None
        data = orjson.loads(_read_small(directory / OWNER_FILE))
        if not isinstance(data, dict) or data.get("kind") != _KIND:
            return None
        return Owner(str(data["host"]), int(data["pid"]), float(data["started"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _read_small(path: Path) -> bytes:
    """A small regular file's bytes, never following a link."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path} is not a regular file")
        return os.read(fd, _MAX_MARKER)
    finally:
        os.close(fd)


def _remove_recorded(journal: Path) -> int:
    """Remove each file the journal recorded that is still that file; how many."""
    try:
        lines = _read_lines(journal)
    except OSError:
        return 0
    removed = 0
    for line in lines:
        try:
            entry = orjson.loads(line)
            path = Path(entry["path"])
            if _is_recorded(path, entry):
                path.unlink()
                removed += 1
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return removed


def _read_lines(journal: Path) -> list[bytes]:
    fd = os.open(journal, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as handle:
        return handle.read().splitlines()


def _is_recorded(path: Path, entry: dict[str, Any]) -> bool:
    """Whether ``path`` is still the regular file ``entry`` recorded."""
    info = os.lstat(path)
    same = stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) == (entry["dev"], entry["ino"])
    if "size" in entry:
        same = same and (info.st_size, info.st_mtime_ns) == (entry["size"], entry["mtime_ns"])
    return same
