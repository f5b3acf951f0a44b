"""The checked-in gRPC modules are what generate.sh makes of the protos, and they load.

``src/supervisor/grpc/protos/generate.sh`` runs grpcio-tools (pinned in the test
extra) into a temporary folder; every generated file must equal the checked-in
one. The modules must load with the protobuf runtime installed (its version
check runs at import), beside tritonclient's own ``inference`` package.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "src" / "supervisor" / "grpc" / "protos"
GENERATED = sorted(
    p.name for p in PROTOS.iterdir() if p.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"))
)


def test_there_are_three_protos_and_their_generated_modules():
    protos = sorted(p.stem for p in PROTOS.glob("*.proto"))
    assert protos == ["inference", "management", "open_inference_grpc"]
    suffixes = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
    expected = [f"{stem}{suffix}" for stem in protos for suffix in suffixes]
    assert sorted(expected) == GENERATED


def test_each_proto_names_its_source_and_license():
    for proto in PROTOS.glob("*.proto"):
        head = proto.read_text().splitlines()[:20]
        assert any("Source: TorchServe" in line for line in head), proto.name
        assert any("Apache License" in line for line in head), proto.name


@pytest.mark.slow
def test_regenerating_gives_the_checked_in_files(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(
        ["bash", str(PROTOS / "generate.sh"), str(tmp_path)], check=True, env=env, timeout=120
    )
    made = tmp_path / "supervisor" / "grpc" / "protos"
    assert sorted(p.name for p in made.iterdir()) == GENERATED
    for name in GENERATED:
        assert (made / name).read_bytes() == (PROTOS / name).read_bytes(), name


def test_the_modules_load_with_the_installed_protobuf_beside_tritonclients():
    probe = (
        "import google.protobuf as p;"
        "from supervisor.grpc.protos import inference_pb2_grpc, management_pb2_grpc,"
        " open_inference_grpc_pb2_grpc;"
        "import tritonclient.grpc.service_pb2 as triton;"
        "from supervisor.grpc.protos import open_inference_grpc_pb2 as ours;"
        "print(p.__version__, triton.ModelInferRequest.DESCRIPTOR.full_name,"
        " ours.ModelInferRequest.DESCRIPTOR.full_name)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    version, theirs, ours = out.stdout.split()
    assert tuple(int(part) for part in version.split(".")[:2]) >= (6, 33)
    assert theirs == "inference.ModelInferRequest"
    assert ours == "org.pytorch.serve.grpc.openinference.ModelInferRequest"
