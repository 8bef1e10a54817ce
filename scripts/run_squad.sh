#!/usr/bin/env bash
# Fine-tunes and/or evaluates BERT on SQuAD v1.1 or v2.0 (run_squad.py). Before launching it checks
# the files the mode reads and num_gpus against this machine's GPUs, naming what to set.
#
# Positional arguments, in order (default):
#  1 init_checkpoint ($BERT_PREP_WORKING_DIR/checkpoints/bert_uncased.pt)
#  2 epochs (2.0)
#  3 batch_size (3)                 per GPU
#  4 learning_rate (3e-5)
#  5 precision (fp16)               fp16 | bf16 | tf32 (TF32 matrix products) | fp32 (true fp32)
#  6 num_gpus (8)                   1 on a CPU machine
#  7 seed (1)
#  8 squad_dir ($BERT_PREP_WORKING_DIR/download/squad/v1.1)   train-v1.1.json, dev-v1.1.json
#                                  (v2.0 and the -v2.0.json files with --version_2_with_negative)
#  9 vocab_file ($BERT_PREP_WORKING_DIR/download/google_pretrained_weights/uncased_L-24_H-1024_A-16/vocab.txt)
# 10 out_dir (results/SQuAD)
# 11 mode (train)                   any of: train, eval (predict + score), prediction
# 12 config_file (bert_configs/large.json)
# 13 max_steps (-1)                 > 0 stops early (benchmarks)
# The order is the documented one (NVIDIA's README); NVIDIA's current script also takes
# warmup_proportion as argument 5 (here: EXTRA_ARGS="--warmup_proportion P", default 0.1).
# Environment: EXTRA_ARGS (appended), e.g. "--version_2_with_negative" (SQuAD 2.0).
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a extra <<< "${EXTRA_ARGS:-}"
version=v1.1
for flag in ${extra[@]+"${extra[@]}"}; do [ "$flag" = --version_2_with_negative ] && version=v2.0; done
# shellcheck source=scripts/wrapper_common.sh
source scripts/wrapper_common.sh
data=${BERT_PREP_WORKING_DIR:-data}

init_checkpoint=${1:-$data/checkpoints/bert_uncased.pt}
epochs=${2:-2.0}
batch_size=${3:-3}
learning_rate=${4:-3e-5}
precision=${5:-fp16}
num_gpus=${6:-8}
seed=${7:-1}
squad_dir=${8:-$data/download/squad/$version}
vocab_file=${9:-$data/download/google_pretrained_weights/uncased_L-24_H-1024_A-16/vocab.txt}
out_dir=${10:-results/SQuAD}
mode=${11:-train}
config_file=${12:-bert_configs/large.json}
max_steps=${13:--1}

args=(--init_checkpoint "$init_checkpoint" --vocab_file "$vocab_file" --config_file "$config_file"
      --bert_model bert-large-uncased --do_lower_case --max_seq_length 384 --doc_stride 128
      --output_dir "$out_dir" --seed "$seed" --json-summary "$out_dir/dllogger.json")
set_precision_flags "$precision"
args+=(${PRECISION_FLAGS[@]+"${PRECISION_FLAGS[@]}"})
[[ "$mode" == *train* ]] && args+=(--do_train --train_file "$squad_dir/train-$version.json"
  --train_batch_size "$batch_size" --learning_rate "$learning_rate"
  --num_train_epochs "$epochs" --max_steps "$max_steps")
[[ "$mode" == *eval* || "$mode" == *prediction* ]] && args+=(--do_predict
  --predict_file "$squad_dir/dev-$version.json" --predict_batch_size "$batch_size")
[[ "$mode" == *eval* ]] && args+=(--do_eval)
args+=(${extra[@]+"${extra[@]}"})

problems=()
problem() { problems+=("$*"); }
[ -e "$init_checkpoint" ] || problem "init_checkpoint (argument 1) $init_checkpoint does not exist:" \
  "pass a pre-trained checkpoint (run_pretraining.py's ckpt_<step>.pt, NVIDIA's, or a Hugging Face folder)"
[ -f "$vocab_file" ] || problem "vocab_file (argument 9) $vocab_file is not a file"
[ -f "$config_file" ] || problem "config_file (argument 12) $config_file is not a file"
[[ "$mode" != *train* ]] || [ -f "$squad_dir/train-$version.json" ] ||
  problem "squad_dir (argument 8) $squad_dir holds no train-$version.json (data/squad/squad_download.sh)"
[[ "$mode" != *eval* && "$mode" != *prediction* ]] || [ -f "$squad_dir/dev-$version.json" ] ||
  problem "squad_dir (argument 8) $squad_dir holds no dev-$version.json (data/squad/squad_download.sh)"
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
[ "$num_gpus" -le "$(( gpus > 0 ? gpus : 1 ))" ] || problem "num_gpus (argument 6) is $num_gpus," \
  "but this machine has $gpus GPUs: pass $(( gpus > 0 ? gpus : 1 )) (one process per GPU; 1 on a machine without one)"
for text in ${problems[@]+"${problems[@]}"}; do echo "run_squad.sh: error: $text" >&2; done
[ "${#problems[@]}" = 0 ] || exit 2

launch=(python)
[ "$num_gpus" -gt 1 ] && launch=(python -m torch.distributed.run --standalone --nproc_per_node="$num_gpus")
mkdir -p "$out_dir"
echo "${launch[*]} run_squad.py ${args[*]}"
"${launch[@]}" run_squad.py "${args[@]}" 2>&1 | tee "$out_dir/logfile.txt"
