"""A bounded ring of a worker's last log lines (pure, no I/O).

Bytes arrive in arbitrary chunks; complete lines enter the ring, and the ring
keeps at most ``max_lines`` lines and ``max_bytes`` bytes, dropping the oldest.
A single line longer than ``max_line_bytes`` is cut, so one giant write can
never hold the whole budget or grow the pending buffer without bound.
"""

from __future__ import annotations

from collections import deque

__all__ = ["LogTail"]


class LogTail:
    """The last lines of a byte stream, within fixed bounds.

    Args:
        max_lines: the most lines kept.
        max_bytes: the most bytes kept, over all kept lines.
        max_line_bytes: longer lines are cut to this length (and marked).
        ignore: lines starting with one of these are returned but not kept
            (routine output, such as a handler's metric lines, must not push
            the lines that explain a failure out of the tail).
    """

    def __init__(
        self,
        max_lines: int = 200,
        max_bytes: int = 64 * 1024,
        max_line_bytes: int = 4096,
        ignore: tuple[str, ...] = (),
    ) -> None:
        self._ignore = ignore
        self._lines: deque[str] = deque()
        self._size = 0
        self._partial = bytearray()
        self._cut = False  # a cut line was emitted; drop its rest up to the next newline
        self._max_lines = max_lines
        self._max_bytes = max_bytes
        self._max_line = max_line_bytes
        self.total_bytes = 0

    def feed(self, data: bytes) -> list[str]:
        """Add received bytes; return the lines they completed."""
        self.total_bytes += len(data)
        self._partial += data
        *complete, rest = self._partial.split(b"\n")
        if self._cut and complete:
            del complete[0]
            self._cut = False
        self._partial = bytearray() if self._cut else bytearray(rest)
        if not self._cut and len(rest) > self._max_line:
            complete.append(rest)
            self._partial = bytearray()
            self._cut = True
        lines = [self._text(raw) for raw in complete]
        for line in lines:
            self._push(line)
        return lines

    def close(self) -> list[str]:
        """The stream ended: keep an unterminated last line, if any."""
        if not self._partial:
            return []
        line = self._text(bytes(self._partial))
        self._partial = bytearray()
        self._push(line)
        return [line]

    def lines(self, last: int | None = None) -> tuple[str, ...]:
        """The kept lines, oldest first (only the ``last`` ones if given)."""
        kept = tuple(self._lines)
        return kept if last is None else kept[-last:] if last > 0 else ()

    def _text(self, raw: bytes | bytearray) -> str:
        cut = len(raw) > self._max_line
        text = raw[: self._max_line].decode("utf-8", "replace").rstrip("\r")
        return text + " [...line cut]" if cut else text

    def _push(self, line: str) -> None:
        if self._ignore and line.startswith(self._ignore):
            return
        # Sizes are counted in UTF-8 bytes: the bound is on bytes, not characters.
        self._lines.append(line)
        self._size += len(line.encode())
        while self._lines and (len(self._lines) > self._max_lines or self._size > self._max_bytes):
            self._size -= len(self._lines.popleft().encode())
