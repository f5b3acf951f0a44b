"""``python -m supervisor``: check which ``supervisor`` package this is, then run the CLI.

supervisord (PyPI ``supervisor``) uses the same import name. When both are
installed, one can shadow or overwrite the other; fail with a clear message
instead of a confusing ImportError later.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["check_identity", "program_name", "run"]


def check_identity() -> str | None:
    """Return an explanation if ``import supervisor`` is not trio-supervisor."""
    import supervisor

    origin = getattr(supervisor, "__file__", None) or "(namespace package)"
    ours = Path(__file__).resolve().parent
    is_ours = getattr(supervisor, "DISTRIBUTION", None) == "trio-supervisor"
    if is_ours and origin != "(namespace package)" and Path(origin).resolve().parent == ours:
        return None
    return (
        f"error: 'import supervisor' resolves to {origin}, which is not trio-supervisor "
        f"(installed at {ours}).\n"
        "The import name 'supervisor' is also used by supervisord (PyPI package 'supervisor').\n"
        "Fix: run trio-supervisor in its own virtual environment, or `pip uninstall supervisor` "
        "there and then `pip install --force-reinstall trio-supervisor`."
    )


def program_name(argv0: str) -> str:
    """The name this program was called by, for usage lines.

    ``python -m supervisor`` runs this file (``__main__.py``); a console script
    (``trio-supervisor``) runs under its own name.
    """
    name = Path(argv0).name
    return "python -m supervisor" if name in ("", "__main__.py", "-c", "-m") else name


def run() -> int:
    """Check the package identity and run the command line."""
    problem = check_identity()
    if problem:
        print(problem, file=sys.stderr)
        return 3
    from supervisor.cli import main

    return main(prog=program_name(sys.argv[0]))


if __name__ == "__main__":
    sys.exit(run())
