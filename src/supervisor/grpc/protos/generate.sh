#!/usr/bin/env bash
# Makes the Python modules of the .proto files beside this script (checked in):
#
#   nox -s protos         (a venv with the pinned grpcio-tools, then this script)
#   PYTHON=.nox/tests/bin/python src/supervisor/grpc/protos/generate.sh [OUTPUT_ROOT]
#
# OUTPUT_ROOT defaults to src/ (the modules land beside the protos); the test
# tests/test_grpc_protos.py runs it into a temporary folder and compares. PYTHON
# must have grpcio-tools (pinned in the test extra: another protoc makes other
# files) and googleapis-common-protos (google/rpc/status.proto).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="$(cd "$here/../../.." && pwd)"
out="$(mkdir -p "${1:-$src}" && cd "${1:-$src}" && pwd)"
python="${PYTHON:-python3}"
rpc="$("$python" -c 'import google.rpc as m, os; print(os.path.dirname(os.path.dirname(list(m.__path__)[0])))')"
"$python" -m grpc_tools.protoc -I "$src" -I "$rpc" \
    --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
    "$src"/supervisor/grpc/protos/inference.proto \
    "$src"/supervisor/grpc/protos/management.proto \
    "$src"/supervisor/grpc/protos/open_inference_grpc.proto
