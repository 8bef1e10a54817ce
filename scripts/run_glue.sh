#!/usr/bin/env bash
# Fine-tunes and/or evaluates BERT on a GLUE task (run_glue.py). Before launching it checks
# its files and folders and num_gpus against this machine's GPUs, naming what to set.
#
# Positional arguments, in order (default):
#  1 init_checkpoint ($BERT_PREP_WORKING_DIR/checkpoints/bert_uncased.pt)
#  2 data_dir ($BERT_PREP_WORKING_DIR/download/glue/MRPC)
#  3 vocab_file ($BERT_PREP_WORKING_DIR/download/google_pretrained_weights/uncased_L-24_H-1024_A-16/vocab.txt)
#  4 config_file (bert_configs/large.json)
#  5 out_dir (results/MRPC)
#  6 task_name (mrpc)
#  7 num_gpus (8)                   1 on a CPU machine
#  8 batch_size (16)                per GPU per optimizer step
#  9 gradient_accumulation_steps (1)
# 10 learning_rate (2.4e-5)
# 11 warmup_proportion (0.1)
# 12 epochs (3)
# 13 precision (fp16)               fp16 | bf16 | tf32 (TF32 matrix products) | fp32 (true fp32)
# 14 seed (2)
# 15 mode (train eval)              any of: train, eval, prediction
# 16 max_steps (-1)                 > 0 stops early (benchmarks)
# NVIDIA's current script takes max_steps as argument 13, before precision; here it comes
# last, so that a call with arguments 1-15 and no max_steps keeps working.
# Environment: EXTRA_ARGS (appended), e.g. "--max_seq_length 64".
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/wrapper_common.sh
source scripts/wrapper_common.sh
data=${BERT_PREP_WORKING_DIR:-data}

init_checkpoint=${1:-$data/checkpoints/bert_uncased.pt}
data_dir=${2:-$data/download/glue/MRPC}
vocab_file=${3:-$data/download/google_pretrained_weights/uncased_L-24_H-1024_A-16/vocab.txt}
config_file=${4:-bert_configs/large.json}
out_dir=${5:-results/MRPC}
task_name=${6:-mrpc}
num_gpus=${7:-8}
batch_size=${8:-16}
gradient_accumulation_steps=${9:-1}
learning_rate=${10:-2.4e-5}
warmup_proportion=${11:-0.1}
epochs=${12:-3}
precision=${13:-fp16}
seed=${14:-2}
mode=${15:-train eval}
max_steps=${16:--1}

args=(--task_name "$task_name" --data_dir "$data_dir" --init_checkpoint "$init_checkpoint"
      --vocab_file "$vocab_file" --config_file "$config_file" --output_dir "$out_dir"
      --bert_model bert-large-uncased --do_lower_case --max_seq_length 128 --seed "$seed"
      --train_batch_size "$batch_size" --gradient_accumulation_steps "$gradient_accumulation_steps"
      --learning_rate "$learning_rate" --warmup_proportion "$warmup_proportion"
      --num_train_epochs "$epochs" --max_steps "$max_steps" --json-summary "$out_dir/dllogger.json")
set_precision_flags "$precision"
args+=(${PRECISION_FLAGS[@]+"${PRECISION_FLAGS[@]}"})
[[ "$mode" == *train* ]] && args+=(--do_train)
[[ "$mode" == *eval* ]] && args+=(--do_eval)
[[ "$mode" == *prediction* ]] && args+=(--do_predict)
read -r -a extra <<< "${EXTRA_ARGS:-}"
args+=(${extra[@]+"${extra[@]}"})

problems=()
problem() { problems+=("$*"); }
[ -e "$init_checkpoint" ] || problem "init_checkpoint (argument 1) $init_checkpoint does not exist:" \
  "pass a pre-trained or fine-tuned checkpoint (ours, NVIDIA's, or a Hugging Face folder)"
[ -d "$data_dir" ] || problem "data_dir (argument 2) $data_dir is not a folder: pass the task's" \
  "GLUE folder (train.tsv, dev.tsv, ...; data/bertPrep.py --action download --dataset mrpc)"
[ -f "$vocab_file" ] || problem "vocab_file (argument 3) $vocab_file is not a file"
[ -f "$config_file" ] || problem "config_file (argument 4) $config_file is not a file"
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
[ "$num_gpus" -le "$(( gpus > 0 ? gpus : 1 ))" ] || problem "num_gpus (argument 7) is $num_gpus," \
  "but this machine has $gpus GPUs: pass $(( gpus > 0 ? gpus : 1 )) (one process per GPU; 1 on a machine without one)"
for text in ${problems[@]+"${problems[@]}"}; do echo "run_glue.sh: error: $text" >&2; done
[ "${#problems[@]}" = 0 ] || exit 2

launch=(python)
# Evaluation alone runs on one process, as the original does.
[ "$num_gpus" -gt 1 ] && [[ "$mode" == *train* ]] && launch=(python -m torch.distributed.run --standalone --nproc_per_node="$num_gpus")
mkdir -p "$out_dir"
echo "${launch[*]} run_glue.py ${args[*]}"
"${launch[@]}" run_glue.py "${args[@]}" 2>&1 | tee "$out_dir/logfile.txt"
