"""The documentation's walk-throughs, run as a user would run them, output compared.

Each test runs the blocks of its pages whose marker names it (``<!-- run-by:
tests/test_doc_examples.py::test_name -->``), in page order, in one directory, against a real
``python -m supervisor serve`` started by the pages' own commands or by the test (see
tests/docrunner.py for how commands run and how output is compared).
"""

from __future__ import annotations

import pytest

from tests.docblocks import ROOT, run_by
from tests.docrunner import DocSession

pytestmark = pytest.mark.slow

DOCS = ROOT / "docs"
TUTORIAL = ["serve.md", "handler.md", "archive.md", "deploy.md"]


async def test_the_tutorial(nursery, tmp_path):
    session = DocSession(tmp_path, nursery)
    for page in TUTORIAL:
        await session.run(run_by(DOCS / "tutorial" / page, "test_the_tutorial"))
    await session.stop()
