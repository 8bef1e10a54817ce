#!/usr/bin/env bash
# The prepared GPU check (bench/gpu_check.py): environment, BERT-large pre-training steps in
# bf16 and fp16 (seq 128) and bf16 (seq 512) with sequences/s and MFU, SQuAD fine-tuning
# steps/s, TorchScript and ONNX export with parity, and a one-rank NCCL DDP run with resume,
# in under 8 minutes on one H100/H200; one JSON of figures.
#   bash bench/gpu_check.sh                 # writes $OUT/gpu_check.json and gpu_check.log
#   bash bench/gpu_check.sh --cpu_smoke     # tiny config on the CPU (tests/test_gpu_check.py)
# Further arguments go to gpu_check.py (--output, --work_dir, --budget_seconds, --peak_tflops).
# It runs the machine's own interpreter (PYTHON, default python3: no virtualenv of ours) and
# needs no network. Wheels found in .whl/ are installed first into a private folder put on
# PYTHONPATH (none are needed on the device image: torch, numpy, h5py, tqdm, onnx,
# onnxscript and onnxruntime are there).
# Environment: PYTHON (python3), OUT (results: where the JSON and the log go).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-results}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/bert_gpu_check_site .whl/*.whl
  export PYTHONPATH=/tmp/bert_gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
echo "$PYTHON bench/gpu_check.py --output $OUT/gpu_check.json $*"
"$PYTHON" bench/gpu_check.py --output "$OUT/gpu_check.json" "$@" 2>&1 | tee "$OUT/gpu_check.log"
