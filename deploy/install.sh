#!/bin/sh
# Install trio-supervisor, with the torch that constraints.txt pins, into the Python that runs
# this script's pip (a virtual environment). deploy/Containerfile runs it to build the image and
# tests/test_deploy.py runs it in a fresh virtual environment, so the test installs what the image
# installs.
#
# Usage: sh deploy/install.sh SOURCE_DIR
#   PYTHON           the interpreter to install with (default: python)
#   TORCH_INDEX_URL  the index torch comes from: the Containerfile passes PyTorch's CPU wheels,
#                    a CUDA index (for example .../whl/cu128) for GPU images, or empty for pip's
#                    own configuration
set -eu

src="${1:?usage: install.sh SOURCE_DIR}"
python="${PYTHON:-python}"

if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "$python" -m pip install -c "$src/constraints.txt" --index-url "$TORCH_INDEX_URL" torch
else
    "$python" -m pip install -c "$src/constraints.txt" torch
fi
# torch is already there at the pinned version, so this takes only the server and its extras.
"$python" -m pip install -c "$src/constraints.txt" "$src[ml]"
