"""docs/protocols.md's gRPC examples, run as a user would: tritonclient, then grpcio's stubs."""

from __future__ import annotations

import pytest

from tests.docblocks import ROOT, blocks, run_by
from tests.docrunner import DocSession

PAGE = ROOT / "docs" / "protocols.md"


@pytest.mark.slow
async def test_the_protocols_grpc_examples(nursery, tmp_path):
    """OIP v2 over gRPC with the REST section's doubler, then TorchServe's API with iris."""
    doubler = next(b for b in blocks(PAGE) if b.text.startswith("# models/doubler.py"))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "doubler.py").write_text(doubler.text + "\n")
    session = DocSession(tmp_path, nursery)
    await session.run(run_by(PAGE, "test_the_protocols_grpc_examples"))
    await session.stop()
