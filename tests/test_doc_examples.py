"""The documentation's walk-throughs, run as a user would run them, output compared.

Each test runs the blocks of its pages whose marker names it (``<!-- run-by:
tests/test_doc_examples.py::test_name -->``), in page order, in one directory, against a real
``python -m supervisor serve`` started by the pages' own commands or by the test (see
tests/docrunner.py for how commands run and how output is compared).
"""

from __future__ import annotations

import json

import pytest

from tests.docblocks import ROOT, blocks, run_by
from tests.docrunner import DocSession
from tests.helpers import CRASH_AT_LOAD_HANDLER, ECHO_HANDLER, make_mar
from tests.test_updates import GARBLING_HANDLER, VERSIONED_HANDLER, canary

pytestmark = pytest.mark.slow

DOCS = ROOT / "docs"
TUTORIAL = ["serve.md", "handler.md", "archive.md", "deploy.md"]


async def test_the_tutorial(nursery, tmp_path):
    session = DocSession(tmp_path, nursery)
    for page in TUTORIAL:
        await session.run(run_by(DOCS / "tutorial" / page, "test_the_tutorial"))
    await session.stop()


async def test_the_updates_walkthrough(nursery, tmp_path):
    """docs/updates.md: echo 1.0, then 2.0 with retire_old, a bad 3.0, a set-default to 3.0."""
    store = tmp_path / "store"
    versions = [
        ("echo-1.mar", "1.0", VERSIONED_HANDLER),
        ("echo-2.mar", "2.0", VERSIONED_HANDLER),
        ("echo-3-bad.mar", "3.0", GARBLING_HANDLER),
    ]
    for file, version, handler in versions:
        extra = {"canaries.json": json.dumps([canary(version)])}
        make_mar(store, "echo", handler, version=version, extra=extra).rename(store / file)
    make_mar(store, "echo", VERSIONED_HANDLER, version="3.0").rename(store / "echo-3.mar")
    (store / "smoke-3.json").write_text(json.dumps([canary("3.0")]))
    session = DocSession(tmp_path, nursery)
    await session.serve("python -m supervisor serve --model-store store --enable-model-api")
    await session.run(run_by(DOCS / "updates.md", "test_the_updates_walkthrough"))
    await session.stop()


def handler_from(page: str, first_line: str) -> str:
    """The ``python`` block of ``page`` that starts with ``first_line``."""
    [source] = [
        block.text
        for block in blocks(DOCS / page)
        if block.lang == "python" and block.text.startswith(first_line)
    ]
    return source


async def test_the_http_api_inference_examples(nursery, tmp_path):
    """docs/http-api.md up to the management API: the built-in iris, echo and counter."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "echo_handler.py").write_text(ECHO_HANDLER)
    (models / "counter.py").write_text(handler_from("handlers.md", "# counter.py"))
    session = DocSession(tmp_path, nursery)
    await session.serve(
        "python -m supervisor serve --models iris=handlers.builtin.iris"
        " echo=echo_handler@models counter=counter@models"
    )
    await session.run(run_by(DOCS / "http-api.md", "test_the_http_api_inference_examples"))
    await session.stop()


async def test_the_validation_walkthrough(nursery, tmp_path):
    """docs/validation.md: archive, validate (passing, then failing), the two runners."""
    session = DocSession(tmp_path, nursery)
    await session.run(run_by(DOCS / "validation.md", "test_the_validation_walkthrough"))


async def test_the_handlers_examples(nursery, tmp_path):
    """docs/handlers.md: the streaming counter, and the built-in handlers' three examples."""
    session = DocSession(tmp_path, nursery)
    await session.run(run_by(DOCS / "handlers.md", "test_the_handlers_examples"))
    await session.stop()


async def test_the_readme_doubler(nursery, tmp_path):
    """README.md's own model: the doubler handler, served from its directory, answering."""
    session = DocSession(tmp_path, nursery)
    await session.run(run_by(ROOT / "README.md", "test_the_readme_doubler"))
    await session.stop()


DESCRIBED_ECHO = (
    ECHO_HANDLER
    + """
    def describe_handle(self):
        return {"model": "echo", "kind": "echo"}
"""
)


async def test_the_http_api_management_examples(nursery, tmp_path):
    """docs/http-api.md's management API: register, errors, list, describe, scale, delete."""
    store = tmp_path / "store"
    make_mar(store, "echo", DESCRIBED_ECHO)
    make_mar(store, "echo", DESCRIBED_ECHO, version="2.0").rename(store / "echo2.mar")
    make_mar(store, "echo", DESCRIBED_ECHO)
    make_mar(store, "broken", CRASH_AT_LOAD_HANDLER)
    session = DocSession(tmp_path, nursery)
    await session.serve(
        "python -m supervisor serve --model-store store --enable-model-api --max-restarts 1"
    )
    await session.run(run_by(DOCS / "http-api.md", "test_the_http_api_management_examples"))
    await session.stop()


async def test_the_embedding_example(nursery, tmp_path):
    """docs/embedding.md's complete example, run as a script, prints what the page shows."""
    session = DocSession(tmp_path, nursery)
    await session.run(run_by(DOCS / "embedding.md", "test_the_embedding_example"))
