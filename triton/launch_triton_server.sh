#!/usr/bin/env bash
# Starts Triton on a model repository written by triton/deployer.py: the tritonserver
# container when a Docker engine answers (models built with --backend onnxruntime or
# pytorch), otherwise, or when a model is built with --backend python (the container's
# Python has no onnxruntime), the CPU server bundled in nvidia-pytriton (triton/server.py,
# in the deployment environment). Runs in the foreground; stop it with
# Ctrl-C, or SIGTERM to its process id when started in the background.
#
# Positional arguments, in order (default):
#  1 model_repository (results/triton_models)
#  2 http_port (8000)
#  3 grpc_port (8001)
#  4 metrics_port (8002)        0: none (the bundled server only)
# Environment: TRITON_IMAGE (nvcr.io/nvidia/tritonserver:24.10-py3, Triton 2.51 as the
# bundled server), TRITON_GPUS (all where nvidia-smi lists a GPU, else none: the container
# then runs without GPUs and serves --instance_kind cpu models), TRITON_HOST
# (127.0.0.1: the address served, or the container's ports are published on),
# TRITON_VENV (triton/.venv), TRITON_SERVER (docker | bundled: which server, whatever the
# machine has; default docker when an engine answers and no model uses the python backend).
set -euo pipefail
# ${a[@]+"${a[@]}"} expands a possibly empty array: under set -u bash before 4.4 (RHEL/CentOS 7
# ship 4.2) calls an empty "${a[@]}" an unbound variable.
repository_arg=${1:-}  # a relative path is the caller's, resolved before the cd below
[ -z "$repository_arg" ] || repository_arg=$(realpath -m "$repository_arg")
cd "$(dirname "$0")/.."

model_repository=${repository_arg:-$(realpath -m results/triton_models)}
if [ ! -d "$model_repository" ]; then
  echo "launch_triton_server.sh: model repository $model_repository is not a directory" \
       "(write one with triton/deployer.py)" >&2
  exit 2
fi
http_port=${2:-8000}
grpc_port=${3:-8001}
metrics_port=${4:-8002}
image=${TRITON_IMAGE:-nvcr.io/nvidia/tritonserver:24.10-py3}
gpus=${TRITON_GPUS:-}
if [ -z "$gpus" ]; then  # `docker run --gpus all` fails on a machine without one
  gpus=none
  command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 && gpus=all
fi
host=${TRITON_HOST:-127.0.0.1}
venv=${TRITON_VENV:-triton/.venv}

server=${TRITON_SERVER:-}
if [ -z "$server" ]; then
  server=bundled
  # The container's Python lacks onnxruntime, which --backend python models import.
  if ! grep -qs 'backend: "python"' "$model_repository"/*/config.pbtxt &&
     command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    server=docker
  fi
fi
case "$server" in
  docker|bundled) ;;
  *) echo "launch_triton_server.sh: TRITON_SERVER=$server: expected docker or bundled" >&2; exit 2 ;;
esac
if [ "$server" = docker ]; then
  gpu_flags=()
  [ "$gpus" = none ] || gpu_flags=(--gpus "$gpus")
  cmd=(docker run --rm ${gpu_flags[@]+"${gpu_flags[@]}"} --shm-size=1g --ulimit memlock=-1
       -p "$host:$http_port:8000" -p "$host:$grpc_port:8001" -p "$host:$metrics_port:8002"
       -v "$model_repository:/models:ro" "$image"
       tritonserver --model-repository=/models --exit-timeout-secs=10)
else
  cmd=("$venv/bin/python" triton/server.py --model_repository "$model_repository"
       --host "$host" --http_port "$http_port" --grpc_port "$grpc_port"
       --metrics_port "$metrics_port")
fi
echo "${cmd[@]}"
exec "${cmd[@]}"
