"""Sessions: tests (the whole suite), lint (ruff), typecheck (mypy --strict), docs; chaos, soak.

``chaos`` and ``soak`` take minutes and are not run by default (nor in CI): they
write their figures to ``.reliability/`` for docs/reliability.md.
"""

from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint", "typecheck"]

CONSTRAINTS = ("-c", "constraints.txt")


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """Run the whole test suite against real workers and a real server."""
    session.install(*CONSTRAINTS, "torch==2.13.0")
    session.install(*CONSTRAINTS, "-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.9")
    session.run("ruff", "check", "src", "tests", "bench", "examples", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "bench", "examples", "noxfile.py")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the sources."""
    session.install(*CONSTRAINTS, "-e", ".[test,dev]")
    session.run("mypy", "--strict", "src")


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """The documentation site into site/: mkdocs build --strict (any warning fails)."""
    session.install(*CONSTRAINTS, "-e", ".[docs]")
    quiet = {"NO_MKDOCS_2_WARNING": "1"}  # Material's end-of-life banner, not about this site
    session.run("mkdocs", "build", "--strict", "--site-dir", "site", *session.posargs, env=quiet)


@nox.session(python="3.11")
def protos(session: nox.Session) -> None:
    """Regenerate the gRPC modules from src/supervisor/grpc/protos/*.proto (commit the result)."""
    session.install("grpcio-tools==1.81.1", "googleapis-common-protos>=1.70,<2")  # as pyproject
    python = str(Path(session.bin) / "python")
    generate = "src/supervisor/grpc/protos/generate.sh"
    session.run("bash", generate, env={"PYTHON": python}, external=True)


@nox.session(python="3.11")
def chaos(session: nox.Session) -> None:
    """The long fault runs: a minute of chaos per signal, long fuzzing (minutes)."""
    session.install(*CONSTRAINTS, "torch==2.13.0")
    session.install(*CONSTRAINTS, "-e", ".[test]")
    env = {"RELIABILITY_REPORT_DIR": ".reliability", "FUZZ_EXAMPLES": "3000"}
    session.run("pytest", "-m", "chaos", "-s", *session.posargs, env=env)
    session.run("pytest", "tests/test_archive_fuzz.py", *session.posargs, env=env)


@nox.session(python="3.11")
def soak(session: nox.Session) -> None:
    """Steady load with periodic worker kills; SOAK_SECONDS (default 180) sets the length."""
    session.install(*CONSTRAINTS, "torch==2.13.0")
    session.install(*CONSTRAINTS, "-e", ".[test]")
    env = {"RELIABILITY_REPORT_DIR": ".reliability"}
    session.run("pytest", "-m", "soak", "-s", *session.posargs, env=env)
