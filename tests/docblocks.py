"""The fenced blocks of README.md and docs/, their markers, and how their output is compared.

Every command or output block (``sh``, ``console``, ``text``...) carries a marker comment on the
last non-blank line before its fence:

- ``<!-- run-by: tests/test_doc_examples.py::test_name -->``: that test runs the block (in page
  order with the page's other blocks that name it) and compares its output;
- ``<!-- illustrative -->`` or ``<!-- illustrative: why -->``: shown, not run.

``python tests/docblocks.py [FILE...]`` lists the blocks without a marker as ``file:line``
(all pages when no file is given) and exits 1 if there is one.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parent.parent
# Languages of commands and their output; a block without a language counts as one too.
CHECKED = frozenset({"", "sh", "shell", "bash", "console", "text", "http", "output"})
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)[^\n]*$")
MARKER = re.compile(
    r"^<!-- (?:illustrative(?::[^>]*)?|run-by: (?P<file>[\w/.]+\.py)::(?P<test>\w+)) -->$"
)


@attrs.frozen
class Block:
    """One fenced block: where it is, its language, its text, and its marker line."""

    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    marker: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def run_by(self) -> tuple[str, str] | None:
        """(test file, test name) for a run-by marker, else None."""
        found = MARKER.match(self.marker or "")
        return (found["file"], found["test"]) if found and found["file"] else None


def pages() -> list[Path]:
    """README.md and every Markdown page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, in order."""
    lines = page.read_text().splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        end = next(j for j in range(index + 1, len(lines)) if lines[j].strip().startswith("```"))
        indent = len(opening["indent"])
        text = "\n".join(line[indent:] for line in lines[index + 1 : end])
        before = [line.strip() for line in lines[:index] if line.strip()]
        marker = before[-1] if before and before[-1].startswith("<!--") else None
        found.append(Block(page, index + 1, opening["lang"], text, marker))
        index = end + 1
    return found


def unmarked(page: Path) -> list[Block]:
    """The command and output blocks of ``page`` without a valid marker."""
    return [
        block
        for block in blocks(page)
        if block.lang in CHECKED and not MARKER.match(block.marker or "")
    ]


def run_by(page: Path, test: str) -> list[Block]:
    """The blocks of ``page`` that name ``test`` in their run-by marker, in page order."""
    return [block for block in blocks(page) if block.run_by and block.run_by[1] == test]


def main(argv: list[str]) -> int:
    chosen = [Path(arg).resolve() for arg in argv] or pages()
    missing = [block for page in chosen for block in unmarked(page)]
    for block in missing:
        print(f"{block.where}: a ```{block.lang} block without a run-by or illustrative marker")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
