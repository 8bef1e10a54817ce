#!/usr/bin/env bash
# Sets up $VENV (default .venv, scripts/setup_env.sh) and runs the test suite; extra
# arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
bash triton/setup_env.sh  # the deployment venv (numpy<2) that tests/test_triton.py runs Triton from
# shellcheck disable=SC1091
source "${VENV:-.venv}/bin/activate"  # the wrappers under test call `python`
status=0
python -m pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then  # pytest's "no tests collected"
  echo "no tests were collected" >&2
fi
exit "$status"
