#!/usr/bin/env bash
# The Slurm tests (tests/test_slurm.py): run.sub under a real single-node cluster.
#   bash tests/slurm/run_slurm_tests.sh [pytest arguments]
#   BERT_SLURM_TESTS=require bash tests/slurm/run_slurm_tests.sh   # CI: a skip is a failure
# Installs slurm-wlm and munge with apt-get when they are missing (root, Debian's registry),
# creates .venv when it is missing (scripts/setup_env.sh), then runs pytest; the tests start
# and stop the cluster themselves (tests/slurm/cluster.sh). Where Slurm cannot be installed or
# started (not root, no apt-get, no registry) the tests skip and say why.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  bash tests/slurm/cluster.sh install || echo "slurm-wlm and munge could not be installed" >&2
fi
[ -x .venv/bin/python ] || bash scripts/setup_env.sh
export BERT_SLURM_TESTS=${BERT_SLURM_TESTS:-1}
exec .venv/bin/python -m pytest tests/test_slurm.py "$@"
