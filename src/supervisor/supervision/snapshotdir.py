"""The config snapshot directory: each snapshot made durable, the newest good one found.

A snapshot is written beside its final name, flushed to disk (``fsync``), renamed
into place and the directory flushed too, so a crash at any moment leaves the
snapshots that were there, or those and the new one whole: never half of one.
Names are kept strictly increasing, even when two changes fall in the same
millisecond or the clock steps back, and only the newest ``KEEP`` snapshots are
kept. At start-up a snapshot that cannot be read or parsed is logged and skipped,
and the one before it is used. The format is ``supervisor.supervision.snapshot``'s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import trio

from supervisor.atomicfile import replacing
from supervisor.config import ConfigError, ServerConfig
from supervisor.supervision.snapshot import (
    Restored,
    newest_first,
    render,
    restore,
    snapshot_name,
    stamp_of,
)
from supervisor.supervision.stats import ModelStats

__all__ = ["KEEP", "SnapshotDir"]

log = logging.getLogger("supervisor.snapshot")

KEEP = 20
"""How many snapshots are kept; older ones are removed after each write."""

_TEMPORARY = ".snapshot-"
_MAX_BYTES = 16 * 1024 * 1024  # a snapshot bigger than this is not ours


class SnapshotDir:
    """Writes snapshots to ``path`` one at a time, and finds the newest good one.

    Args:
        path: the snapshot directory (made by the first write).
        server: the settings written beside the models.
    """

    def __init__(self, path: Path, server: ServerConfig) -> None:
        self.path = path
        self._server = server
        self._lock = trio.Lock()
        self._last = 0

    def open(self) -> None:
        """Remove temporary files a crash left, and learn the newest stamp.

        A relative path is made absolute here, against the working directory, so
        that the log names each file in full. The directory is made by the first
        write, so a server that changes nothing leaves nothing behind. Blocking:
        run it in a thread.

        Raises:
            OSError: the directory exists but cannot be listed.
        """
        self.path = self.path.absolute()
        names = self._names()
        for name in names:
            if name.startswith(_TEMPORARY):
                with contextlib.suppress(FileNotFoundError):
                    (self.path / name).unlink()
        stamps = [stamp for name in names if (stamp := stamp_of(name)) is not None]
        self._last = max(stamps, default=0)

    def newest(self, defaults: Mapping[str, Any]) -> Restored | None:
        """The newest snapshot that reads and parses; a bad one is logged and skipped.

        Blocking: run it in a thread.
        """
        for name in newest_first(self._names()):
            path = self.path / name
            try:
                with path.open("rb") as file:
                    text = file.read(_MAX_BYTES).decode("utf-8")
                return restore(text, str(path), defaults)
            except (OSError, UnicodeDecodeError, ConfigError) as exc:
                log.warning("skipping config snapshot %s: %s", path, exc)
        return None

    async def write(self, state: Callable[[], Sequence[ModelStats]]) -> None:
        """Write a snapshot of ``state()``, taken once the writes before it are done.

        A failure to write is logged (the next change tries again), never raised:
        the change it records has been made already.
        """
        async with self._lock:
            self._last = max(self._last + 1, int(time.time() * 1000))
            name = snapshot_name(self._last)
            text = render(self._server, state(), name, self._last)
            try:
                await trio.to_thread.run_sync(self._store, name, text.encode())
            except OSError as exc:
                log.error("cannot write the config snapshot %s: %s", self.path / name, exc)

    def _names(self) -> list[str]:
        try:
            return os.listdir(self.path)
        except FileNotFoundError:
            return []

    def _store(self, name: str, data: bytes) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with (
            replacing(self.path / name, prefix=_TEMPORARY) as (fd, _),
            os.fdopen(fd, "wb") as file,
        ):
            file.write(data)
            file.flush()
            os.fsync(file.fileno())  # on disk before the rename makes it the newest
        _sync_directory(self.path)
        for old in newest_first(os.listdir(self.path))[KEEP:]:
            with contextlib.suppress(FileNotFoundError):
                (self.path / old).unlink()


def _sync_directory(path: Path) -> None:
    """Flush a directory's entries (a rename in it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
