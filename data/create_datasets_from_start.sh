#!/usr/bin/env bash
# Downloads and prepares every data set of the recipe, from nothing.
#   bash data/create_datasets_from_start.sh [flow]
# Arguments:
#   1. flow: lddl (default) | hdf5
#      lddl: Google's weights and vocabularies, SQuAD, MRPC, SST-2, then Wikipedia through
#            LDDL's download_wikipedia; the Parquet shards are then made with LDDL's own
#            preprocess_bert_pretrain and balance_dask_output (its full install, below).
#      hdf5: the same downloads (the Wikipedia dump directly when LDDL is absent), then
#            text formatting, sharding, and HDF5 files for phase 1 (seq 128, 20 predictions)
#            and phase 2 (seq 512, 80 predictions) with create_pretraining_data.py.
# Environment: BERT_PREP_WORKING_DIR (default: data/ in the repo), PYTHON (default python3).
# Every download fails within seconds when the network is unreachable, saying where to put
# the file by hand; run the script again afterwards and present files are not fetched again.
set -euo pipefail

FLOW=${1:-lddl}
REPO=$(cd "$(dirname "$0")/.." && pwd)
export BERT_PREP_WORKING_DIR=${BERT_PREP_WORKING_DIR:-$REPO/data}
PYTHON=${PYTHON:-python3}
PREP=("$PYTHON" "$REPO/data/bertPrep.py")

if [[ $FLOW != lddl && $FLOW != hdf5 ]]; then
  echo "usage: $0 [lddl|hdf5]  (got '$FLOW')" >&2
  exit 2
fi
echo "preparing data ($FLOW flow) in $BERT_PREP_WORKING_DIR"

if ! command -v download_wikipedia > /dev/null; then
  cat >&2 << 'EOF'
note: LDDL is not installed. `pip install --no-deps lddl==0.1.0 pyarrow` gives the Parquet
loader that run_pretraining.py uses; LDDL's downloader also needs `pip install wikiextractor`,
and its preprocessing (preprocess_bert_pretrain, balance_dask_output) needs its full install
with dask, dask-mpi and an MPI library. Continuing with the steps that need none of it.
EOF
fi

for dataset in google_pretrained_weights squad mrpc sst-2 wikicorpus_en; do
  "${PREP[@]}" --action download --dataset "$dataset"
done

if [[ $FLOW == lddl ]]; then
  # LDDL's preprocessing runs under MPI with dask across a machine or a cluster: its size
  # is the user's to choose, so the commands are printed, not run.
  W=$BERT_PREP_WORKING_DIR
  cat >&2 << EOF
Wikipedia is downloaded; the lddl flow stops here. Make the Parquet shards with LDDL's full
install (dask, dask-mpi, an MPI library), N shards from P processes, for phase 1:
  mpirun -np P preprocess_bert_pretrain --schedule mpi --vocab-file VOCAB.txt \\
    --wikipedia $W/wikipedia/source --sink $W/pretrain/phase1/unbinned/parquet \\
    --num-blocks N --sample-ratio 0.9 --masking --seed 42
  mpirun -np P balance_dask_output --indir $W/pretrain/phase1/unbinned/parquet --num-shards N
and for phase 2 the same with --target-seq-length 512 --bin-size 64 and
$W/pretrain/phase2/bin_size_64/parquet; then set DATA_DIR_PHASE1/2 and VOCAB_FILE for
scripts/run_pretraining.sh. Without LDDL's full install, 'bash $0 hdf5' makes the HDF5
shards that scripts/run_pretraining.sh reads by default.
EOF
  exit 0
fi

"${PREP[@]}" --action text_formatting --dataset wikicorpus_en
"${PREP[@]}" --action sharding --dataset wikicorpus_en
"${PREP[@]}" --action create_hdf5_files --dataset wikicorpus_en \
  --max_seq_length 128 --max_predictions_per_seq 20
"${PREP[@]}" --action create_hdf5_files --dataset wikicorpus_en \
  --max_seq_length 512 --max_predictions_per_seq 80
echo "done: scripts/run_pretraining.sh reads these HDF5 folders by default (DATA_DIR_PHASE1/2)"
