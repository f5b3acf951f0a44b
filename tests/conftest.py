"""Shared fixtures: the identity check, handler modules written per test."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import supervisor

pytest_plugins = ["tests._trio_unwrap"]

# `python -m supervisor serve` serves gRPC on 7070 and 7071 unless told otherwise; the
# servers the tests start as processes take free ports instead, so none collide.
os.environ.setdefault("SUPERVISOR_GRPC_INFERENCE_ADDRESS", "127.0.0.1:0")
os.environ.setdefault("SUPERVISOR_GRPC_MANAGEMENT_ADDRESS", "127.0.0.1:0")

if getattr(supervisor, "DISTRIBUTION", None) != "trio-supervisor":
    raise RuntimeError(
        f"'import supervisor' resolves to {supervisor.__file__}, not trio-supervisor; "
        "supervisord uses the same import name. Run the tests in their own virtualenv "
        "(nox -s tests)."
    )


@pytest.fixture
def handler_dir(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write a handler module into a fresh model directory; returns the directory.

    Usage: ``model_dir = handler_dir("crashy", source)`` then
    ``ModelConfig(name=..., handler="crashy", model_dir=str(model_dir))``.
    """

    def write(module: str, source: str) -> Path:
        directory = tmp_path / f"model_{module}"
        directory.mkdir(exist_ok=True)
        (directory / f"{module}.py").write_text(textwrap.dedent(source))
        return directory

    return write
