"""MkDocs hook: the command line reference is the real ``--help`` output, made at build time.

docs/reference/cli.md holds markers such as ``<!-- cli-help: serve -->``; each becomes a text
block with the output of ``python -m supervisor serve --help`` run by the building interpreter,
so the page can never disagree with the parser. A marker for a command that fails is a build
error, not a silent gap.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

MARKER = re.compile(r"^<!-- cli-help:(?P<args>[^>]*)-->$", re.MULTILINE)
COLUMNS = "100"  # argparse wraps to $COLUMNS; fixed so the page does not depend on a terminal


def help_text(args: list[str]) -> str:
    """The output of ``python -m supervisor ARGS --help``."""
    done = subprocess.run(
        [sys.executable, "-m", "supervisor", *args, "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "COLUMNS": COLUMNS},
    )
    if done.returncode != 0:
        raise RuntimeError(f"python -m supervisor {' '.join(args)} --help failed: {done.stderr}")
    return done.stdout


def expand(markdown: str) -> str:
    """``markdown`` with every cli-help marker replaced by the command's help text."""

    def block(found: re.Match[str]) -> str:
        args = found.group("args").split()
        command = " ".join(["python -m supervisor", *args, "--help"])
        return f"```text\n$ {command}\n{help_text(args).rstrip()}\n```"

    return MARKER.sub(block, markdown)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """MkDocs event: expand the markers of any page that has them."""
    return expand(markdown) if MARKER.search(markdown) else markdown
