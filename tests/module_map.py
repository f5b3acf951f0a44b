"""docs/design.md's module maps, made from the packages' own module docstrings.

``python tests/module_map.py`` rewrites the two tables in docs/design.md (between
the ``<!-- module-map: PACKAGE -->`` and ``<!-- /module-map -->`` markers); the
test in tests/test_layout.py checks that they are what this script would write,
so a module added, removed or re-described shows up as a failing test.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "design.md"
PACKAGES = ("supervisor", "handlers")
_BLOCK = re.compile(r"(<!-- module-map: (\w+) -->\n)(.*?)(<!-- /module-map -->)", re.S)


def summary(path: Path) -> str:
    """The first paragraph of a module's docstring, on one line."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    first = doc.split("\n\n")[0]
    return " ".join(first.split()).replace("|", "\\|")


def table(package: str) -> str:
    """The markdown table of ``package``'s modules: dotted name, then summary."""
    base = ROOT / "src" / package
    rows = ["| module | what it does |", "|---|---|"]
    for path in sorted(base.rglob("*.py")):
        parts = path.relative_to(base).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "(package)"
        rows.append(f"| `{name}` | {summary(path)} |")
    return "\n".join(rows) + "\n"


def render(text: str) -> str:
    """``text`` (docs/design.md) with every module map regenerated."""
    return _BLOCK.sub(lambda m: m.group(1) + table(m.group(2)) + m.group(4), text)


def main() -> int:
    """Rewrite docs/design.md's module maps in place."""
    text = DESIGN.read_text()
    if not all(f"<!-- module-map: {p} -->" in text for p in PACKAGES):
        print("docs/design.md lacks a module-map marker", file=sys.stderr)
        return 1
    DESIGN.write_text(render(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
