#!/usr/bin/env bash
# Two-phase BERT pre-training on one node: phase 1 (seq 128), then phase 2 (seq 512) from
# phase 1's last checkpoint in the same folder. Defaults are NVIDIA's for 8 GPUs.
# Before launching it checks the data folders, the config, and num_gpus against this
# machine's GPUs (1 on a machine without one), naming what to set. Phase 2 starts only once
# phase 1's final checkpoint (ckpt_<train_steps>.pt) exists; otherwise the script stops with
# phase 1's status: with one process 75 when it was stopped by a signal after a checkpoint;
# with num_gpus > 1 torchrun reports any rank's failure, 75 included, as 1, so tell them
# apart by the log's last lines. resume_training=true continues phase 1 in either case.
#
# Positional arguments, in order (default):
#  1 train_batch_size (8192)            per GPU per optimizer step, phase 1
#  2 learning_rate (6e-3)               phase 1
#  3 precision (fp16)                   fp16 | bf16 | tf32 (fp32 with TF32 matrix products,
#                                       NVIDIA's default on Ampere and later) | fp32 (true fp32)
#  4 num_gpus (8)                       processes on this node (1 on a CPU machine)
#  5 warmup_proportion (0.2843)
#  6 train_steps (7038)                 phase 1 optimizer steps
#  7 save_checkpoint_steps (200)
#  8 resume_training (false)            true: continue from the newest checkpoint
#  9 create_logfile (true)              tee the output to $RESULTS_DIR/<job_name>.log
# 10 accumulate_gradients (true)        false: no accumulation (batch = micro-batch)
# 11 gradient_accumulation_steps (128)
# 12 seed (42)
# 13 job_name (bert_lamb_pretraining)
# 14 allreduce_post_accumulation (true)
# 15 allreduce_post_accumulation_fp16 (true)
# 16 train_batch_size_phase2 (4096)
# 17 learning_rate_phase2 (4e-3)
# 18 warmup_proportion_phase2 (0.128)
# 19 train_steps_phase2 (1563)
# 20 gradient_accumulation_steps_phase2 (512)
# 21 init_checkpoint (None)             phase-1 starting weights (ours, NVIDIA's or Hugging Face)
#
# Environment: DATA_DIR_PHASE1, DATA_DIR_PHASE2 (HDF5 or LDDL Parquet shards; default the
# folders `data/create_datasets_from_start.sh hdf5` writes under BERT_PREP_WORKING_DIR), BERT_CONFIG
# (bert_configs/large.json), VOCAB_FILE (needed for LDDL shards), RESULTS_DIR (results),
# CHECKPOINTS_DIR ($RESULTS_DIR/checkpoints), SEQ_LENGTH_PHASE1/2 (128/512),
# MAX_PREDICTIONS_PHASE1/2 (20/80), EXTRA_ARGS (appended to both phases).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/wrapper_common.sh
source scripts/wrapper_common.sh

train_batch_size=${1:-8192}
learning_rate=${2:-6e-3}
precision=${3:-fp16}
num_gpus=${4:-8}
warmup_proportion=${5:-0.2843}
train_steps=${6:-7038}
save_checkpoint_steps=${7:-200}
resume_training=${8:-false}
create_logfile=${9:-true}
accumulate_gradients=${10:-true}
gradient_accumulation_steps=${11:-128}
seed=${12:-42}
job_name=${13:-bert_lamb_pretraining}
allreduce_post_accumulation=${14:-true}
allreduce_post_accumulation_fp16=${15:-true}
train_batch_size_phase2=${16:-4096}
learning_rate_phase2=${17:-4e-3}
warmup_proportion_phase2=${18:-0.128}
train_steps_phase2=${19:-1563}
gradient_accumulation_steps_phase2=${20:-512}
init_checkpoint=${21:-None}

# Where `data/create_datasets_from_start.sh hdf5` (data/bertPrep.py) writes them.
prep=${BERT_PREP_WORKING_DIR:-data}
hdf5_folder() { echo "$prep/hdf5_lower_case_1_seq_len_$1_max_pred_$2_masked_lm_prob_0.15_random_seed_12345_dupe_factor_5/wikicorpus_en"; }
DATA_DIR_PHASE1=${DATA_DIR_PHASE1:-$(hdf5_folder 128 20)}
DATA_DIR_PHASE2=${DATA_DIR_PHASE2:-$(hdf5_folder 512 80)}
BERT_CONFIG=${BERT_CONFIG:-bert_configs/large.json}
RESULTS_DIR=${RESULTS_DIR:-results}
CHECKPOINTS_DIR=${CHECKPOINTS_DIR:-$RESULTS_DIR/checkpoints}

set_precision_flags "$precision"

# True when the folder holds shards that run_pretraining.py reads (HDF5, or LDDL Parquet).
has_shards() {
  [ -d "$1" ] && [ -n "$(find "$1" \( -name '*.hdf5' -o -name '*.h5' -o -name '*.parquet*' \) -print -quit)" ]
}
problems=()
problem() { problems+=("$*"); }
for phase in 1 2; do
  folder=DATA_DIR_PHASE$phase
  has_shards "${!folder}" || problem "$folder=${!folder} holds no pre-training shards: set" \
    "$folder to a folder of phase-$phase .hdf5 (or LDDL .parquet) files (create_pretraining_data.py," \
    "or bash data/create_datasets_from_start.sh hdf5, which writes the default folders)"
done
[ -f "$BERT_CONFIG" ] || problem "BERT_CONFIG=$BERT_CONFIG is not a file: set BERT_CONFIG to a BERT config JSON"
[ "$init_checkpoint" = None ] || [ -e "$init_checkpoint" ] ||
  problem "init_checkpoint (argument 21) $init_checkpoint does not exist"
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$num_gpus" -gt "$(( gpus > 0 ? gpus : 1 ))" ]; then
  problem "num_gpus (argument 4) is $num_gpus, but this machine has $gpus GPUs: pass" \
          "$(( gpus > 0 ? gpus : 1 )) (one process per GPU; 1 on a machine without one)"
fi
for text in ${problems[@]+"${problems[@]}"}; do echo "run_pretraining.sh: error: $text" >&2; done
[ "${#problems[@]}" = 0 ] || exit 2
mkdir -p "$CHECKPOINTS_DIR" "$RESULTS_DIR"
[ "$accumulate_gradients" = true ] || { gradient_accumulation_steps=1; gradient_accumulation_steps_phase2=1; }
common=(--config_file "$BERT_CONFIG" --output_dir "$CHECKPOINTS_DIR" --seed "$seed"
        --num_steps_per_checkpoint "$save_checkpoint_steps" --bert_model bert-large-uncased
        --json-summary "$RESULTS_DIR/dllogger.json" --disable_progress_bar ${PRECISION_FLAGS[@]+"${PRECISION_FLAGS[@]}"})
[ -n "${VOCAB_FILE:-}" ] && common+=(--vocab_file "$VOCAB_FILE")
[ "$allreduce_post_accumulation" = true ] && common+=(--allreduce_post_accumulation)
[ "$allreduce_post_accumulation_fp16" = true ] && [ "$precision" = fp16 ] && common+=(--allreduce_post_accumulation_fp16)
read -r -a extra <<< "${EXTRA_ARGS:-}"
launch=(python run_pretraining.py)  # one process: its exit status (75 = pre-empted) as it is
[ "$num_gpus" -gt 1 ] && launch=(python -m torch.distributed.run --standalone --nproc_per_node="$num_gpus" run_pretraining.py)

phase1=("${launch[@]}" --input_dir "$DATA_DIR_PHASE1" "${common[@]}"
        --max_seq_length "${SEQ_LENGTH_PHASE1:-128}" --max_predictions_per_seq "${MAX_PREDICTIONS_PHASE1:-20}"
        --train_batch_size "$train_batch_size" --learning_rate "$learning_rate"
        --warmup_proportion "$warmup_proportion" --max_steps "$train_steps"
        --gradient_accumulation_steps "$gradient_accumulation_steps" ${extra[@]+"${extra[@]}"})
[ "$resume_training" = true ] && phase1+=(--resume_from_checkpoint)
[ "$init_checkpoint" != None ] && phase1+=(--init_checkpoint "$init_checkpoint")

phase2=("${launch[@]}" --input_dir "$DATA_DIR_PHASE2" "${common[@]}" --phase2
        --resume_from_checkpoint --phase1_end_step "$train_steps"
        --max_seq_length "${SEQ_LENGTH_PHASE2:-512}" --max_predictions_per_seq "${MAX_PREDICTIONS_PHASE2:-80}"
        --train_batch_size "$train_batch_size_phase2" --learning_rate "$learning_rate_phase2"
        --warmup_proportion "$warmup_proportion_phase2" --max_steps "$train_steps_phase2"
        --gradient_accumulation_steps "$gradient_accumulation_steps_phase2" ${extra[@]+"${extra[@]}"})

log=/dev/null
[ "$create_logfile" = true ] && log="$RESULTS_DIR/$job_name.log"
echo "${phase1[*]}" | tee -a "$log"
status=0
"${phase1[@]}" 2>&1 | tee -a "$log" || status=$?
final="$CHECKPOINTS_DIR/ckpt_$train_steps.pt"
if [ "$status" != 0 ] || [ ! -f "$final" ]; then
  echo "run_pretraining.sh: phase 1 ended with status $status before its last checkpoint" \
       "($final): phase 2 not started; resume_training=true (argument 8) continues phase 1" | tee -a "$log" >&2
  exit $(( status > 0 ? status : 75 ))
fi
echo "${phase2[*]}" | tee -a "$log"
"${phase2[@]}" 2>&1 | tee -a "$log"
