"""BERT pre-training (masked LM + next sentence prediction) with LAMB, in two phases.

    torchrun --nproc_per_node=8 run_pretraining.py --input_dir data/phase1 \\
        --config_file bert_configs/large.json --output_dir results/checkpoints \\
        --train_batch_size 8192 --gradient_accumulation_steps 128 --learning_rate 6e-3 \\
        --warmup_proportion 0.2843 --max_steps 7038 --fp16 --allreduce_post_accumulation
    # phase 2: the same output_dir, --phase2 --resume_from_checkpoint --phase1_end_step 7038
    #          --max_seq_length 512 --max_predictions_per_seq 80 ...

One process per GPU (torchrun, or srun under Slurm); CPU runs use gloo. Checkpoints
ckpt_<step>.pt in --output_dir hold the model, optimizer, schedule, loss scaler, RNG states
and the data position; --resume_from_checkpoint continues exactly where the newest one
stopped. SIGTERM/SIGUSR1 (Slurm pre-emption) make every rank save one and exit with status
75 (PREEMPTED_EXIT_STATUS, sysexits' EX_TEMPFAIL: unfinished, run again to continue); a run
that reaches its last step (--max_steps, or --steps_this_run) exits 0.

Deliberate deviations from NVIDIA's run_pretraining.py:
- --train_batch_size is the per-GPU batch of one optimizer step (as NVIDIA's), split into
  --gradient_accumulation_steps micro-batches; it must divide evenly (as NVIDIA's).
- Resume with no checkpoint in --output_dir starts from scratch (or --init_checkpoint) with
  a warning instead of crashing (NVIDIA issue #844); a run without --resume_from_checkpoint
  refuses an --output_dir that already holds checkpoints.
- In phase 2, a phase-1 checkpoint found by --resume_from_checkpoint (or --init_checkpoint)
  gives the weights only: optimizer and schedule start fresh and steps count from
  --phase1_end_step in file names; a phase-2 checkpoint is resumed fully (NVIDIA's
  --resume_phase2 is implied). A phase-1 checkpoint in --output_dir past
  --phase1_end_step is refused (colliding numbers), and so, without --init_checkpoint, is
  one before it (an unfinished phase 1). Phase 2 with neither a checkpoint to continue from
  nor --init_checkpoint is refused (NVIDIA's trains it from random weights).
- Steps skipped by the fp16 loss scaler (overflow) do not count, as NVIDIA's "dynamic step";
  --max_skipped_steps (100) of them in a row stop the run with an error (a loss that never
  becomes finite would otherwise halve the scale to zero, skipping forever).
- Retention keeps the newest three checkpoints of the running phase (--keep_checkpoints;
  phase 1's stay when phase 2 saves); phase 1 asked to resume where phase 2 has begun does
  nothing.
- --allreduce_post_accumulation_fp16 compresses the gradients to fp16 for the all-reduce
  (a DDP hook that divides by the world size before the cast, so a rank's gradient above
  fp16's range whose mean fits survives) instead of casting the model to fp16.
- Leftover temporary files of checkpoint saves that were killed are removed at start, and
  --output_dir is checked writable before any work.
- The model pads its vocabulary to a multiple of --pad_vocab_to_multiple_of (8); exported and
  fine-tuned models drop the padding rows again.
- --dynamic_masking (not in NVIDIA's HDF5 path; RoBERTa's practice) masks each instance anew
  every time it is served, from the tokens the shard stores, as a function of (seed, epoch,
  instance): the same for any number of ranks, and resume stays exact.
- A run stopped by a signal exits with status 75 after its checkpoint, not 0, so that a
  wrapper does not take an unfinished phase 1 for a finished one.
- --steps_this_run N counts the steps of this run (a resumed job does N more), where
  NVIDIA's compares it with the global step; a job resubmitted under a time limit passes
  the same N each time.
- A loss that is not finite (outside fp16's skipped steps) stops the run with an error at
  the next log or checkpoint step, before any checkpoint of diverged weights is written.
- NVIDIA's --profile, --profile-start, --cuda_graphs, --disable_jit_fusions and
  --no_dense_sequence_output are accepted and change nothing (the masked-LM head always
  reads the masked positions only; bench/bench_model.py --profile profiles a step).
"""

import argparse
import contextlib
import logging
import os
import sys
import time

import torch
from torch.nn.parallel import DistributedDataParallel

import utils
from masking import DynamicMasking
from model import BertConfig, BertForPreTraining, add_batch_indices, load_checkpoint
from optimization import (
    lamb_kind,
    load_lamb_state,
    make_lamb,
    param_groups,
    poly_warmup_schedule,
)
from pretraining_data import (
    LddlBatches,
    Position,
    PretrainingBatches,
    ShardLimits,
    find_input_files,
)
from tokenization import load_vocab
from utils import logger

PREEMPTED_EXIT_STATUS = 75  # os.EX_TEMPFAIL: saved after a signal, not finished
DEFAULT_MASKED_LM_PROB = 0.15  # BERT's, as create_pretraining_data.py's default


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--input_dir", required=True,
                        help="folder of .hdf5 shards (create_pretraining_data.py) or LDDL "
                             ".parquet shards")
    parser.add_argument("--config_file", required=True, help="BERT config JSON")
    parser.add_argument("--output_dir", required=True, help="where checkpoints are written")
    parser.add_argument("--bert_model", default="bert-large-uncased",
                        help="model name, informational (logged)")
    parser.add_argument("--vocab_file", default=None, help="vocabulary (LDDL shards need it)")
    parser.add_argument("--init_checkpoint", default=None,
                        help="initial weights: ours, NVIDIA's or a Hugging Face directory")
    parser.add_argument("--max_seq_length", type=int, default=512)
    parser.add_argument("--max_predictions_per_seq", type=int, default=80,
                        help="most masked tokens per sequence in the shards")
    parser.add_argument("--train_batch_size", type=int, default=32,
                        help="sequences per GPU per optimizer step (all micro-batches)")
    parser.add_argument("--learning_rate", type=float, default=5e-5, help="peak LAMB lr")
    parser.add_argument("--max_steps", type=float, default=1000,
                        help="optimizer steps of this phase (sets the schedule)")
    parser.add_argument("--warmup_proportion", type=float, default=0.01,
                        help="share of max_steps with linear warm-up")
    parser.add_argument("--poly_degree", type=float, default=0.5,
                        help="after warm-up the lr decays as (1 - progress) ** degree: 0.5 is "
                             "NVIDIA's, 1 a linear decay to zero")
    parser.add_argument("--steps_this_run", type=int, default=-1,
                        help="stop after this many steps of this run (the schedule still spans "
                             "max_steps)")
    parser.add_argument("--allreduce_post_accumulation", action="store_true",
                        help="all-reduce gradients once per optimizer step, not per micro-batch")
    parser.add_argument("--allreduce_post_accumulation_fp16", action="store_true",
                        help="all-reduce gradients in fp16")
    parser.add_argument("--resume_from_checkpoint", action="store_true",
                        help="continue from the newest valid checkpoint in --output_dir")
    parser.add_argument("--resume_step", type=int, default=-1,
                        help="with --resume_from_checkpoint: continue from ckpt_<N>.pt "
                             "instead of the newest (-1)")
    parser.add_argument("--resume_phase2", action="store_true",
                        help="accepted for compatibility: a phase-2 checkpoint always resumes "
                             "fully in phase 2")
    parser.add_argument("--checkpoint_activations", action="store_true",
                        help="recompute activations in backward (less memory, ~1/3 more "
                             "compute)")
    parser.add_argument("--num_train_epochs", type=float, default=3.0,
                        help="accepted for compatibility: training is bounded by --max_steps")
    parser.add_argument("--num_steps_per_checkpoint", type=int, default=100)
    parser.add_argument("--skip_checkpoint", action="store_true", help="write no checkpoints")
    parser.add_argument("--keep_checkpoints", type=int, default=3,
                        help="newest checkpoints of this phase kept (0 = all, e.g. to evaluate "
                             "each one later)")
    parser.add_argument("--max_skipped_steps", type=int, default=100,
                        help="stop with an error after this many consecutive steps skipped by "
                             "the fp16 loss scaler (inf/NaN gradients)")
    parser.add_argument("--phase2", action="store_true", help="this is phase 2 (seq 512)")
    parser.add_argument("--phase1_end_step", type=int, default=7038,
                        help="steps of phase 1; phase-2 checkpoint numbers continue from it")
    parser.add_argument("--pad_vocab_to_multiple_of", type=int, default=8,
                        help="round the embedding table up for tensor cores (1 = off)")
    parser.add_argument("--num_workers", type=int, default=4, help="LDDL loader workers")
    parser.add_argument("--dynamic_masking", action="store_true",
                        help="draw new masks each time an instance is served (HDF5 shards; "
                             "needs --vocab_file), instead of the masks stored in the shards")
    parser.add_argument("--masked_lm_prob", type=float, default=None,
                        help=f"--dynamic_masking: share of each sequence's tokens masked "
                             f"(default {DEFAULT_MASKED_LM_PROB}); the shards' masked positions "
                             f"must hold it")
    parser.add_argument("--whole_word_masking", action="store_true",
                        help="--dynamic_masking: mask whole words (all their word pieces)")
    parser.add_argument("--no_dropout", action="store_true",
                        help="pre-train without dropout (as recent recipes do; faster), "
                             "whatever --config_file says; fine-tuning still reads its dropout")
    parser.add_argument("--no_nsp", action="store_true",
                        help="masked-LM loss only, as RoBERTa pre-trains (the next-sentence "
                             "head stays in the checkpoint, untrained; the shards' sentence "
                             "pairs are read as they are)")
    for flag in ("--do_train", "--use_env", "--profile", "--disable_jit_fusions",
                 "--cuda_graphs"):
        parser.add_argument(flag, action="store_true", help="accepted for compatibility")
    parser.add_argument("--profile-start", type=int, default=0,
                        help="accepted for compatibility")
    parser.add_argument("--no_dense_sequence_output", action="store_true",
                        help="accepted for compatibility: the masked-LM head always reads "
                             "the masked positions only")
    utils.add_common_args(parser)
    return parser.parse_args(argv)


def resolve_masking_args(args):
    """--masked_lm_prob (its default filled in here) and --whole_word_masking choose how
    --dynamic_masking masks; without it the shards' stored masks are read, so either flag
    would be silently ignored: an error."""
    given = [flag for flag, value in (("--masked_lm_prob", args.masked_lm_prob is not None),
                                      ("--whole_word_masking", args.whole_word_masking)) if value]
    if given and not args.dynamic_masking:
        raise ValueError(f"{' and '.join(given)} only apply with --dynamic_masking: without "
                         "it the masks stored in the shards are used (create_pretraining_data.py "
                         "takes these flags for them)")
    if args.masked_lm_prob is None:
        args.masked_lm_prob = DEFAULT_MASKED_LM_PROB
    if not 0.0 < args.masked_lm_prob < 1.0:
        raise ValueError(f"--masked_lm_prob must be in (0, 1), got {args.masked_lm_prob}")


def check_args(args):
    utils.check_precision_args(args)
    if args.train_batch_size % args.gradient_accumulation_steps:
        raise ValueError(f"--train_batch_size {args.train_batch_size} is not divisible by "
                         f"--gradient_accumulation_steps {args.gradient_accumulation_steps}")
    if args.keep_checkpoints < 0:
        raise ValueError(f"--keep_checkpoints must be 0 (all) or more, got {args.keep_checkpoints}")
    for flag in ("max_steps", "log_freq", "num_steps_per_checkpoint", "max_skipped_steps"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.resume_step >= 0 and not args.resume_from_checkpoint:
        raise ValueError("--resume_step needs --resume_from_checkpoint")
    if args.dynamic_masking and not args.vocab_file:
        raise ValueError("--dynamic_masking needs --vocab_file (the [MASK] id and the word "
                         "pieces of whole-word masking come from it)")
    if args.poly_degree < 0:
        raise ValueError(f"--poly_degree must be 0 (a constant lr) or more, got "
                         f"{args.poly_degree}")
    resolve_masking_args(args)
    if args.allreduce_post_accumulation_fp16 and not args.fp16:
        raise ValueError("--allreduce_post_accumulation_fp16 needs --fp16: without a loss "
                         "scaler, gradients compressed to fp16 may underflow or overflow")


# ----------------------------------------------------------------------------- set-up

def build_model(args, device):
    config = BertConfig.from_json_file(args.config_file)
    config.pad_vocab_to_multiple_of = args.pad_vocab_to_multiple_of
    if args.no_dropout:
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    model = BertForPreTraining(config)
    model.bert.encoder.checkpoint_activations = args.checkpoint_activations
    if args.no_nsp:  # no loss reaches them, and DDP fails on parameters left without one
        for unused in (model.bert.pooler, model.cls.seq_relationship):
            unused.requires_grad_(False)
    return model.to(device)


def find_start(args):
    """Decides where training starts. Returns (checkpoint state or None, how): how is
    'resume' (full state), 'weights' (a phase-1 checkpoint or --init_checkpoint), 'scratch',
    or 'finished' (phase 1 asked to resume where phase 2 has begun: nothing to do)."""
    existing = utils.list_checkpoints(args.output_dir)
    if not args.resume_from_checkpoint:
        if existing:
            raise FileExistsError(f"--output_dir {args.output_dir} already holds checkpoints "
                                  f"({existing[0].name}, ...): pass --resume_from_checkpoint "
                                  f"to continue, or choose another directory")
        if args.phase2 and not args.init_checkpoint:
            raise FileNotFoundError(
                "--phase2 without --resume_from_checkpoint or --init_checkpoint would start "
                "from random weights: pass --resume_from_checkpoint with phase 1's "
                "--output_dir, or --init_checkpoint")
        return None, "weights" if args.init_checkpoint else "scratch"
    path, state = (chosen_checkpoint(args, existing) if args.resume_step >= 0
                   else utils.load_latest_checkpoint(args.output_dir))
    if state is None:
        if args.phase2 and not args.init_checkpoint:
            raise FileNotFoundError(
                f"--phase2 --resume_from_checkpoint: --output_dir {args.output_dir} holds no "
                "checkpoint (phase 1's or phase 2's) and there is no --init_checkpoint: phase 2 "
                "would start from random weights")
        logger.warning("--resume_from_checkpoint: no checkpoint in %s, starting %s",
                       args.output_dir, "from --init_checkpoint" if args.init_checkpoint
                       else "from scratch")
        return None, "weights" if args.init_checkpoint else "scratch"
    if not {"model", "optimizer", "scheduler", "step"} <= set(state):
        raise ValueError(f"{path} is not a run_pretraining.py checkpoint (it lacks the "
                         "optimizer, schedule or step): to start from its weights, move it out "
                         "of --output_dir and pass it as --init_checkpoint")
    if state.get("phase2", False) and not args.phase2:
        logger.info("phase 1 is finished: the newest checkpoint, %s, is phase 2's", path)
        return state, "finished"
    if state.get("phase2", False) == args.phase2:
        logger.info("resuming from %s", path)
        return state, "resume"
    return phase2_opening(args, path, state)


def phase2_opening(args, path, state):
    """Phase 2's first start, when --output_dir's newest checkpoint (`path`) is phase 1's:
    from its weights, or from --init_checkpoint where one is given (as NVIDIA's script
    does). Phase 2 numbers its checkpoints from --phase1_end_step + 1, so a phase 1 that ran
    past that step would have its checkpoints overwritten and outranked: refused. So is a
    phase 1 that has not reached it (NVIDIA's script takes any checkpoint)."""
    number = utils.checkpoint_number(path)
    if number > args.phase1_end_step:
        raise ValueError(f"{path} is phase 1's checkpoint of step {number}, past "
                         f"--phase1_end_step {args.phase1_end_step}: phase 2's checkpoints "
                         f"(numbered from {args.phase1_end_step + 1}) would collide with "
                         f"phase 1's; pass --phase1_end_step {number}")
    if args.init_checkpoint:
        logger.info("phase 2 starts from --init_checkpoint %s, not from %s",
                    args.init_checkpoint, path)
        return None, "weights"
    if number < args.phase1_end_step:  # e.g. a phase-1 job that stopped at --steps_this_run
        raise ValueError(f"{path} is phase 1's newest checkpoint, of step {number}, before "
                         f"--phase1_end_step {args.phase1_end_step}: phase 1 is unfinished; "
                         f"resume it first, or pass --phase1_end_step {number} to start phase 2 "
                         "from this checkpoint")
    logger.info("phase 2 starts from the weights of phase 1's %s", path)
    return state, "weights"


def chosen_checkpoint(args, existing):
    """--resume_step N: (path, state) of ckpt_<N>.pt. Newer checkpoints beside it would
    outrank the ones this run writes (resume and retention take the highest numbers), so
    they must be moved away first."""
    path = utils.checkpoint_path(args.output_dir, args.resume_step)
    if not path.is_file():
        raise FileNotFoundError(f"--resume_step {args.resume_step}: {path} does not exist")
    newer = [p.name for p in existing if utils.checkpoint_number(p) > args.resume_step]
    if newer:
        raise FileExistsError(f"--resume_step {args.resume_step}: {args.output_dir} also holds "
                              f"newer checkpoints ({', '.join(newer)}); move them away first")
    return path, utils.load_tensors(path)


def restore(state, how, args, model, optimizer, scheduler, scaler):
    """Loads what the start decision says; returns (step, data Position)."""
    if how == "resume":
        model.load_state_dict(state["model"])
        load_lamb_state(optimizer, state["optimizer"], state.get("optimizer_kind"))
        scheduler.load_state_dict(state["scheduler"])
        if state["grad_scaler"]:  # empty when saved without fp16's scaler
            scaler.load_state_dict(state["grad_scaler"])
        return state["step"], Position(**state["data_position"])
    if state is not None:  # a phase-1 checkpoint opens phase 2 with fresh optimizer state
        model.load_state_dict(state["model"])
    elif how == "weights":
        load_checkpoint(model, args.init_checkpoint)
    return 0, Position()


def wrap_ddp(model, args, distributed):
    if not distributed.enabled:
        return model
    ddp = DistributedDataParallel(model, device_ids=[distributed.device] if
                                  distributed.device.type == "cuda" else None,
                                  gradient_as_bucket_view=True)  # no copy in and out
    if args.allreduce_post_accumulation_fp16:
        ddp.register_comm_hook(None, fp16_mean_allreduce_hook)
    return ddp


def fp16_mean_allreduce_hook(process_group, bucket):
    """DDP communication hook: the mean of the gradients over ranks, sent in fp16.

    It divides by the world size before the cast (torch's fp16_compress_hook casts first):
    a rank's gradient above fp16's 65504 whose mean fits would otherwise become inf, and
    the loss scaler would settle world-size times lower than it needs to.
    """
    group = process_group if process_group is not None else torch.distributed.group.WORLD
    gradients = bucket.buffer()
    compressed = gradients.div(group.size()).to(torch.float16)
    future = torch.distributed.all_reduce(compressed, group=group, async_op=True).get_future()

    def decompress(done):
        gradients.copy_(done.value()[0])
        return gradients

    return future.then(decompress)


def make_batches(args, distributed, micro_batch, position):
    kind, files = find_input_files(args.input_dir)
    config = BertConfig.from_json_file(args.config_file)
    limits = ShardLimits(args.max_seq_length, args.max_predictions_per_seq, config.vocab_size,
                         config.max_position_embeddings)
    if kind == "parquet":
        if args.dynamic_masking:
            raise ValueError(f"--dynamic_masking is for HDF5 shards; --input_dir "
                             f"{args.input_dir} holds LDDL shards, which its loader masks "
                             "anew at every load already")
        return LddlBatches(files, args.vocab_file, micro_batch, distributed.local_rank,
                           distributed.world_size, args.seed, position, args.num_workers,
                           f"{args.output_dir}/lddl_log", limits)
    masking = (DynamicMasking(load_vocab(args.vocab_file), args.masked_lm_prob,
                              args.whole_word_masking, args.seed)
               if args.dynamic_masking else None)
    return PretrainingBatches(files, micro_batch, distributed.rank, distributed.world_size,
                              args.seed, position, limits,
                              pin_memory=distributed.device.type == "cuda", masking=masking)


# ----------------------------------------------------------------------------- training

class Trainer:
    """One optimizer step = gradient_accumulation_steps micro-batches, mixed precision,
    the loss scaler and LAMB; returns the step's mean losses over ranks, its learning rate,
    and whether it was applied."""

    def __init__(self, model, optimizer, scheduler, scaler, args, distributed):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.scaler, self.args, self.distributed = scaler, args, distributed
        self.precision = utils.precision_of(args)

    def step(self, batches):
        accumulation = self.args.gradient_accumulation_steps
        losses = torch.zeros(3, device=self.distributed.device)
        device = self.distributed.device
        for micro_step in range(accumulation):
            # Indices computed on the host, and pinned memory: no sync in the model, no wait here.
            batch = add_batch_indices(next(batches), pin_memory=device.type == "cuda")
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                     for k, v in batch.items()}
            if self.args.no_nsp:  # the model then returns no next-sentence loss
                del batch["next_sentence_labels"]
            with self._sync_context(micro_step == accumulation - 1):
                with utils.autocast(self.precision, self.distributed.device):
                    total, masked_lm, next_sentence = self.model(**batch)
                self.scaler.scale(total / accumulation).backward()
            if next_sentence is None:
                next_sentence = torch.zeros_like(masked_lm)
            losses += torch.stack([total, masked_lm, next_sentence]).detach() / accumulation
        learning_rate = self.optimizer.param_groups[0]["lr"]
        applied = utils.optimizer_step(self.optimizer, self.scheduler, self.scaler)
        return utils.all_reduce_mean(losses, self.distributed), learning_rate, applied

    def _sync_context(self, last_micro_step):
        """With --allreduce_post_accumulation, DDP reduces only on the last micro-batch."""
        if self.distributed.enabled and self.args.allreduce_post_accumulation and \
                not last_micro_step:
            return self.model.no_sync()
        return contextlib.nullcontext()


def checkpoint_state(model, optimizer, scheduler, scaler, step, batches, args, distributed):
    raw_model = model.module if distributed.enabled else model
    position = getattr(batches, "position", Position())
    return {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
            "optimizer_kind": lamb_kind(optimizer),
            "scheduler": scheduler.state_dict(), "grad_scaler": scaler.state_dict(),
            "step": step, "phase2": args.phase2,
            "data_position": vars(position).copy(),
            "rng": utils.gather_rng_states(distributed)}


def save(state, step, args, distributed):
    """Rank 0 writes ckpt_<number>.pt, numbered from phase1_end_step in phase 2."""
    if args.skip_checkpoint or not distributed.is_main:
        return
    if step == 0 and args.phase2:  # its number would be phase 1's last: nothing to keep
        logger.info("phase 2 stopped before its first step: nothing to save")
        return
    offset = args.phase1_end_step if args.phase2 else 0
    path = utils.checkpoint_path(args.output_dir, step + offset)
    utils.save_checkpoint(state, path, keep=args.keep_checkpoints,
                          first_number=offset + 1)  # retention within this phase
    logger.info("saved checkpoint %s", path)


def last_step_of_run(args, start_step):
    """The step this run stops at: max_steps, or sooner with --steps_this_run."""
    max_steps = int(args.max_steps)
    return max_steps if args.steps_this_run < 0 else min(max_steps,
                                                         start_step + args.steps_this_run)


def train(args, trainer, batches, start_step, metrics, distributed, preemption):
    """The loop: steps until max_steps, steps_this_run or pre-emption (a PreemptionFlag);
    checkpoints. Steps the fp16 loss scaler skips (inf/NaN gradients) do not count;
    --max_skipped_steps of them in a row stop the run with an error. Returns (step, final
    loss, seconds)."""
    max_steps = int(args.max_steps)
    last_step = last_step_of_run(args, start_step)
    phase = int(args.phase2) + 1
    step, skipped, skipped_in_a_row, final_losses = start_step, 0, 0, None
    log_window = LogWindow(args.train_batch_size * distributed.world_size)
    progress = utils.Progress(last_step - start_step, "pre-training", unit="step",
                              disable=args.disable_progress_bar or not distributed.is_main)
    stream, started = iter(batches), time.monotonic()
    while step < last_step:
        losses, learning_rate, applied = trainer.step(stream)
        if applied:
            step, skipped_in_a_row, final_losses = step + 1, 0, losses
            log_window.add(losses)
            progress.update(1)
            if step % args.log_freq == 0 or step == last_step:
                metrics.log((phase, step), log_window.summary(learning_rate, skipped),
                            label=f"phase {phase} step {step}/{max_steps}")
        else:
            skipped, skipped_in_a_row = skipped + 1, skipped_in_a_row + 1
            check_skipped_steps(skipped_in_a_row, args.max_skipped_steps, trainer.scaler, step)
        stop = preemption.should_stop(distributed)  # every iteration, skipped or not
        saving = stop or applied and (step == last_step or
                                      step % args.num_steps_per_checkpoint == 0)
        if saving or applied and step % args.log_freq == 0:
            check_finite(final_losses, step)
        if saving:
            save(checkpoint_state(trainer.model, trainer.optimizer, trainer.scheduler,
                                  trainer.scaler, step, batches, args, distributed),
                 step, args, distributed)
        if stop:
            logger.warning("received %s: saved step %d, exiting",
                           preemption.received or "a signal on another rank", step)
            break
    progress.close()
    final_loss = final_losses[0].item() if final_losses is not None else float("nan")
    return step, final_loss, time.monotonic() - started


class LogWindow:
    """Losses and time since the last log line: logged losses are means over the window
    (NVIDIA's average_loss). Summing stays on the device; the host reads it at log time."""

    def __init__(self, sequences_per_step):
        self.sequences_per_step = sequences_per_step
        self._reset()

    def _reset(self):
        self.start, self.steps, self.losses = time.monotonic(), 0, 0.0

    def add(self, losses):
        self.steps, self.losses = self.steps + 1, self.losses + losses

    def summary(self, learning_rate, skipped):
        total, masked_lm, next_sentence = (self.losses / self.steps).tolist()
        values = {"loss": total, "mlm_loss": masked_lm, "nsp_loss": next_sentence,
                  "learning_rate": learning_rate,
                  "sequences_per_second": self.sequences_per_step * self.steps
                  / (time.monotonic() - self.start),
                  "skipped_steps": skipped}
        self._reset()
        return values


def check_finite(losses, step):
    """Outside fp16 (whose scaler skips such steps) a loss that is not finite means the
    weights no longer are: stop before a checkpoint of them replaces a good one (retention
    would delete the last finite checkpoints one by one). Read at log and checkpoint steps
    only, where the host reads the losses anyway."""
    if losses is not None and not torch.isfinite(losses).all():
        raise FloatingPointError(
            f"the loss at step {step} is not finite ({losses[0].item()}): the run diverged and "
            "nothing was saved from this point. Resume from the last checkpoint with a lower "
            "--learning_rate (or --warmup_proportion higher), or check the input data")


def check_skipped_steps(in_a_row, limit, scaler, step):
    """A loss that is never finite would otherwise skip steps forever while the loss scale
    halves towards zero."""
    if in_a_row >= limit:
        raise FloatingPointError(
            f"{in_a_row} optimizer steps in a row were skipped after step {step} because the "
            f"gradients held inf/NaN (loss scale now {scaler.get_scale():.3g}): the loss "
            "diverged. Lower --learning_rate, check the input data, or resume from an earlier "
            "checkpoint (--max_skipped_steps sets this limit)")


def main(args):
    """SIGTERM/SIGUSR1 are caught from the start to the end of the run, the wait of the
    other ranks for rank 0's last checkpoint included (a signal there would kill them, and
    srun then rank 0 in the middle of its write); then their handlers are given back."""
    with utils.PreemptionFlag() as preemption:
        return pretrain(args, preemption)


def pretrain(args, preemption):
    check_args(args)
    distributed = utils.init_distributed(args.no_cuda, utils.precision_of(args))
    utils.setup_logging(distributed.is_main)
    utils.seed_everything(args.seed, distributed.rank)
    if distributed.is_main:
        utils.check_writable_dir(args.output_dir, "--output_dir")
        utils.remove_partial_checkpoints(args.output_dir)
    micro_batch = args.train_batch_size // args.gradient_accumulation_steps
    metrics = utils.MetricLogger(args.json_summary or f"{args.output_dir}/dllogger.json",
                                 enabled=distributed.is_main)
    metrics.parameters(vars(args))

    state, how = find_start(args)
    utils.check_same_on_all_ranks((how, state and state["step"], state and state.get("phase2")),
                                  distributed, "where to start (how, step, phase 2): a "
                                  "checkpoint that some ranks cannot read?")
    if how == "finished":
        metrics.close()
        utils.end_distributed(distributed)
        return {"step": int(args.max_steps), "final_loss": float("nan"), "preempted": False}
    model = build_model(args, distributed.device)
    optimizer = make_lamb(param_groups(model, weight_decay=0.01), lr=args.learning_rate)
    scheduler = poly_warmup_schedule(optimizer, args.warmup_proportion, int(args.max_steps),
                                     args.poly_degree)
    scaler = utils.make_grad_scaler(utils.precision_of(args), distributed.device, args.loss_scale,
                                    args.init_loss_scale)
    start_step, position = restore(state, how, args, model, optimizer, scheduler, scaler)
    if how == "resume":
        utils.restore_rng_states(state["rng"], distributed, args.seed, start_step)
    logger.info("start: %s at step %d, %s, %d process(es), micro-batch %d x %d accumulation",
                how, start_step, utils.precision_of(args), distributed.world_size, micro_batch,
                args.gradient_accumulation_steps)

    batches = make_batches(args, distributed, micro_batch, position)
    trainer = Trainer(wrap_ddp(model, args, distributed), optimizer, scheduler, scaler, args,
                      distributed)
    model.train()
    step, final_loss, seconds = train(args, trainer, batches, start_step, metrics, distributed,
                                      preemption)
    trained = step - start_step
    metrics.log((), {"e2e_train_time": seconds, "final_loss": final_loss,
                     "training_sequences_per_second":
                         trained * args.train_batch_size * distributed.world_size / seconds
                         if trained else 0.0})
    metrics.close()
    if hasattr(batches, "close"):
        batches.close()
    utils.end_distributed(distributed)  # after rank 0's last checkpoint is written
    return {"step": step, "final_loss": final_loss,
            "preempted": step < last_step_of_run(args, start_step)}


def exit_preempted():
    """Exits with PREEMPTED_EXIT_STATUS at once, skipping the interpreter's teardown.

    srun --kill-on-bad-exit ends the job step at the first non-zero exit: a rank still in
    its teardown (hundreds of ms with torch, more on a loaded node) when another has exited
    with 75 is killed, and srun's status (143) hides the 75 that asks run.sub to requeue.
    The ranks have just left end_distributed's barrier together; the checkpoint, the
    metrics and the reader are closed."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(PREEMPTED_EXIT_STATUS)


if __name__ == "__main__":
    result = utils.run_entry_point(main, parse_args)
    if result["preempted"]:
        exit_preempted()
    sys.exit(0)
