#!/usr/bin/env bash
# Creates (or updates) the deployment environment from triton/requirements.txt: the Triton
# server bundled in nvidia-pytriton, tritonclient, onnx/onnxscript/onnxruntime and the CPU
# torch. It is separate from .venv because nvidia-pytriton pins numpy<2.
# Environment: TRITON_VENV (default triton/.venv), PYTHON (default python3; a CPython built
# with its shared library, which the server's python backend loads).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${TRITON_VENV:-triton/.venv}
python=${PYTHON:-python3}

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
echo "installing triton/requirements.txt into $venv ..."
"$venv/bin/python" -m pip install -q -r triton/requirements.txt
