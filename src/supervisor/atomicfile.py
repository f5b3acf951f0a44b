"""Files replaced whole: written beside their target, then renamed over it.

A reader sees the old file or the new one, never half of one; a failure leaves
the target as it was and removes the temporary file. Renaming over a path
replaces a symbolic link standing there instead of following it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["renamed_over", "replacing", "write_replacing"]


@contextlib.contextmanager
def renamed_over(temporary: str | Path, target: str | Path) -> Iterator[None]:
    """Rename ``temporary`` over ``target`` if the block succeeds; else remove ``temporary``."""
    try:
        yield
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


@contextlib.contextmanager
def replacing(target: Path, *, prefix: str) -> Iterator[tuple[int, Path]]:
    """A new temporary file beside ``target`` (its descriptor and path), renamed over it after.

    The file is created with mode 0600; the block owns the descriptor (and
    closes it) and may change the mode before the rename.
    """
    fd, temporary = tempfile.mkstemp(prefix=prefix, dir=target.parent)
    with renamed_over(temporary, target):
        yield fd, Path(temporary)


def write_replacing(target: Path, data: bytes, *, prefix: str, mode: int = 0o600) -> None:
    """Replace ``target`` with a file holding ``data`` (created with ``mode``)."""
    with replacing(target, prefix=prefix) as (fd, _), os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(data)
