# BERT for PyTorch in NVIDIA's PyTorch container, which brings CUDA, torch and apex.
#   docker build -t bert .
#   docker run --gpus all --rm -it --ipc=host -v "$PWD/results:/workspace/bert/results" bert \
#       bash scripts/run_squad.sh <init_checkpoint> ...
# Commands run in /workspace/bert exactly as the README shows them (python run_*.py,
# torchrun, scripts/*.sh). Serving with Triton uses its own container: see triton/README.md.
# Triton 24.10 (2.51) matches the server bundled for CPU runs in triton/requirements.txt.
# The image's Python is 3.10: the code keeps to its standard library.
ARG FROM_IMAGE_NAME=nvcr.io/nvidia/pytorch:24.10-py3
FROM ${FROM_IMAGE_NAME}

ENV BERT_PREP_WORKING_DIR=/workspace/bert/data
WORKDIR /workspace/bert

# The container's torch (a CUDA build with apex against it) is kept: the torch requirement is
# dropped rather than letting pip replace it. dllogger is not needed (utils.MetricLogger
# writes its format).
COPY requirements.txt .
# LDDL's loader reads NVIDIA's current Parquet shards; its pinned dependencies do not
# install on recent Pythons, so it comes without them (pyarrow is what it needs).
RUN grep -v '^torch' requirements.txt > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt \
 && pip install --no-cache-dir --no-deps lddl==0.1.0 pyarrow \
 && rm /tmp/requirements.txt

COPY . .
