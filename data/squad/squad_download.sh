#!/usr/bin/env bash
# Downloads SQuAD v1.1 and v2.0 (train and dev JSON, official evaluate scripts; md5-checked)
# into <working dir>/download/squad/v1.1 and v2.0.
#   bash data/squad/squad_download.sh [working_dir]
# Arguments:
#   1. working_dir (default: $BERT_PREP_WORKING_DIR, else data/ in the repo)
# Environment: PYTHON (default python3).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
WORKING_DIR=${1:-${BERT_PREP_WORKING_DIR:-$REPO/data}}
PYTHON=${PYTHON:-python3}

CMD=("$PYTHON" "$REPO/data/bertPrep.py" --action download --dataset squad
     --working_dir "$WORKING_DIR")
echo "${CMD[*]}"
exec "${CMD[@]}"
