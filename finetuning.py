"""The fine-tuning loop shared by run_squad.py and run_glue.py: flags, model loading,
AdamW with linear warm-up, mixed precision, gradient accumulation, global gradient clipping,
DDP, and batched prediction.

Deliberate deviations from NVIDIA's fine-tuning scripts:
- torch AdamW (bias-corrected) replaces BertAdam/apex FusedAdam (see optimization.py), with
  the global gradient-norm clip to 1.0 in every precision (NVIDIA's run_glue defines it but
  never calls it).
- --train_batch_size is per process per optimizer step and is split into
  --gradient_accumulation_steps micro-batches (NVIDIA divides it the same way).
- The fine-tuned model is saved as {'model': state_dict} plus config.json (NVIDIA's format)
  and can be exported to a Hugging Face directory with --export_huggingface.
- A model that is not trained in the run (prediction, inference.py, the Triton export) must
  find its task head in --init_checkpoint: a checkpoint without it (a pre-training one) is an
  error, where NVIDIA's scripts answer with a randomly initialised head.
- A training set too small for one optimizer step is an error (NVIDIA's loop never ends).
- Inputs the model cannot take are errors before any work: --max_seq_length beyond its
  max_position_embeddings, a --vocab_file with more tokens than its word embeddings. A
  vocabulary smaller than the table (beyond NVIDIA's padding to a multiple of 8) is a
  warning: it most likely is not the checkpoint's own.
- DDP all-reduces once per optimizer step (no_sync on the other micro-batches), into
  gradients that are views of its buckets; the training loss is summed on the device and
  read only at log steps, so the host never waits for the GPU between them.
- --max_steps sets the schedule's length too (warm-up and decay span max_steps), where
  NVIDIA's run_squad stops its epoch-long schedule early.
- fp16: a step the loss scaler skips (inf/NaN gradients) still advances the schedule, as
  NVIDIA's amp fine-tuning does, and is logged (skipped_steps); a run in which every step
  was skipped is an error. The loss scale starts at 2**16 (amp's), not pre-training's 2**20.
"""

import argparse
import contextlib
import json
import math
import time
import warnings
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
)

import utils
from model import BertConfig, export_huggingface, load_checkpoint, unpadding_indices
from optimization import linear_warmup_schedule, make_adamw, param_groups
from tokenization import FullTokenizer, load_vocab, lower_case_for_model
from utils import logger

MAX_GRAD_NORM = 1.0
VOCAB_PADDING = 8  # rows a vocabulary may lack: tables are padded to a multiple of 8


def add_finetuning_args(parser, learning_rate, epochs, batch_size):
    """Model, optimisation and output flags of both fine-tuning scripts."""
    parser.add_argument("--bert_model", default="bert-large-uncased",
                        help="model name: informational, and selects lower-casing when "
                             "--do_lower_case is not given")
    parser.add_argument("--init_checkpoint", default=None,
                        help="weights: ours, NVIDIA's, or a Hugging Face directory")
    parser.add_argument("--config_file", default=None,
                        help="BERT config JSON (default: config.json in a Hugging Face "
                             "--init_checkpoint directory)")
    parser.add_argument("--vocab_file", default=None,
                        help="WordPiece vocabulary: a vocab.txt or a tokenizer.json (default: "
                             "either in a Hugging Face --init_checkpoint directory)")
    parser.add_argument("--do_lower_case", action=argparse.BooleanOptionalAction,
                        default=None, help="lower-case input (default: as an --init_checkpoint "
                                           "directory's tokenizer_config.json says, else "
                                           "from --bert_model)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--train_batch_size", type=int, default=batch_size,
                        help="sequences per process per optimizer step")
    parser.add_argument("--learning_rate", type=float, default=learning_rate)
    parser.add_argument("--num_train_epochs", type=float, default=epochs)
    parser.add_argument("--max_steps", type=float, default=-1.0,
                        help="> 0: stop after this many optimizer steps (overrides epochs)")
    parser.add_argument("--warmup_proportion", type=float, default=0.1)
    parser.add_argument("--skip_checkpoint", action="store_true",
                        help="do not save the fine-tuned model")
    parser.add_argument("--export_huggingface", action="store_true",
                        help="also write a Hugging Face directory to <output_dir>/huggingface")
    utils.add_common_args(parser)
    # NVIDIA's run_squad.py logs every 50 steps (pre-training every step); its fine-tuning
    # scales fp16 losses from apex amp's 2**16 (pre-training from 2**20).
    parser.set_defaults(log_freq=50, init_loss_scale=2.0**16)


def start_run(args):
    """What both fine-tuning scripts do once their arguments are checked: processes, logging,
    seeds, the model's files, the tokenizer and the metrics file. Returns (distributed,
    tokenizer, metrics)."""
    if args.do_train:
        check_training_length(args)
    distributed = utils.init_distributed(args.no_cuda, utils.precision_of(args))
    utils.setup_logging(distributed.is_main)
    utils.seed_everything(args.seed, distributed.rank)
    resolve_model_files(args)
    tokenizer = FullTokenizer(args.vocab_file, do_lower_case(args))
    metrics = utils.MetricLogger(args.json_summary or f"{args.output_dir}/dllogger.json",
                                 enabled=distributed.is_main)
    metrics.parameters(vars(args))
    return distributed, tokenizer, metrics


def resolve_model_files(args):
    """config and vocab default to the files inside a Hugging Face checkpoint directory."""
    folder = Path(args.init_checkpoint) if args.init_checkpoint else None
    if args.config_file is None and folder is not None and (folder / "config.json").is_file():
        args.config_file = str(folder / "config.json")
    if args.vocab_file is None and folder is not None:
        # transformers 5's save_pretrained writes tokenizer.json without a vocab.txt
        found = [folder / name for name in ("vocab.txt", "tokenizer.json")
                 if (folder / name).is_file()]
        args.vocab_file = str(found[0]) if found else None
    for flag in ("config_file", "vocab_file"):
        if getattr(args, flag) is None:
            holds = "config.json" if flag == "config_file" else "vocab.txt or tokenizer.json"
            raise ValueError(f"--{flag} is required (or an --init_checkpoint directory "
                             f"that holds {holds})")


def do_lower_case(args):
    """--do_lower_case when given; else the casing that an --init_checkpoint directory
    records (tokenizer_config.json, as export_huggingface and transformers write it); else
    the one --bert_model's name implies."""
    if args.do_lower_case is not None:
        return args.do_lower_case
    recorded = recorded_lower_case(getattr(args, "init_checkpoint", None))
    if recorded is not None:
        return recorded
    return lower_case_for_model(args.bert_model) is not False


def checkpoint_label_names(init_checkpoint):
    """A checkpoint directory's classifier label names (config.json's id2label, in id
    order); None without them."""
    id2label = checkpoint_directory_json(init_checkpoint, "config.json").get("id2label")
    if not isinstance(id2label, dict):
        return None
    try:
        return [str(id2label[key]) for key in sorted(id2label, key=int)]
    except ValueError:
        raise ValueError(f"--init_checkpoint {init_checkpoint}: config.json's id2label keys "
                         f"must be label ids, got {sorted(id2label)}") from None


def recorded_lower_case(init_checkpoint, what="--init_checkpoint's"):
    """do_lower_case of a checkpoint (or export) directory's tokenizer_config.json; None
    without one."""
    recorded = checkpoint_directory_json(init_checkpoint, "tokenizer_config.json",
                                         what).get("do_lower_case")
    return recorded if isinstance(recorded, bool) else None


def checkpoint_directory_json(init_checkpoint, name, what="--init_checkpoint's"):
    """The JSON object in file `name` of an --init_checkpoint directory ({} without one);
    `what` names the directory in errors."""
    path = Path(init_checkpoint) / name if init_checkpoint else None
    if path is None or not path.is_file():
        return {}
    return utils.read_json_object(path, what)


def load_model(model_class, args, device, will_train, **kwargs):
    """A task model from the config, with --init_checkpoint's weights if given. A model
    that will not be trained must come whole from the checkpoint: predicting with a
    randomly initialised task head (a pre-training checkpoint) is an error, not a warning.
    The config must fit --max_seq_length and --vocab_file (check_model_fits_inputs)."""
    config = BertConfig.from_json_file(args.config_file)
    check_model_fits_inputs(config, args)
    model = model_class(config, **kwargs)
    if not args.init_checkpoint:
        if not will_train:
            raise ValueError("--init_checkpoint is required to predict without training "
                             "(the model would be random)")
        logger.warning("no --init_checkpoint: fine-tuning starts from random weights")
        return model.to(device)
    missing, _ = load_checkpoint(model, args.init_checkpoint)
    untrained_head = [key for key in missing if key.startswith(model.TASK_HEAD)]
    if untrained_head and not will_train:
        raise ValueError(f"--init_checkpoint {args.init_checkpoint} has no weights for the "
                         f"{type(model).__name__} head ({', '.join(untrained_head)}): it is "
                         "not fine-tuned for this task; fine-tune it first (run_squad.py or "
                         "run_glue.py --do_train)")
    return model.to(device)


def check_model_fits_inputs(config, args):
    """Errors before any work for inputs the model cannot take: sequences longer than its
    position table (an IndexError deep in the embeddings otherwise) and token ids past its
    word embeddings. A vocabulary smaller than the table is only a warning: the ids fit,
    but the checkpoint was most likely trained with another vocabulary, whose ids mean
    other words (the answers are garbage)."""
    max_seq_length = getattr(args, "max_seq_length", None)
    if max_seq_length is not None and max_seq_length > config.max_position_embeddings:
        raise ValueError(f"--max_seq_length {max_seq_length} is longer than the model's "
                         f"max_position_embeddings {config.max_position_embeddings} (--config_file "
                         f"{args.config_file}): pass --max_seq_length "
                         f"{config.max_position_embeddings} or less")
    vocab_size = max(load_vocab(args.vocab_file).values()) + 1
    rows = config.vocab_size
    table = (f"the model's {rows:,} word embeddings (vocab_size in --config_file "
             f"{args.config_file}"
             + (f"; --init_checkpoint {args.init_checkpoint})" if args.init_checkpoint else ")"))
    if vocab_size > rows:
        raise ValueError(f"--vocab_file {args.vocab_file} has {vocab_size:,} tokens, more than "
                         f"{table}: ids from {rows:,} on have no embedding; pass the vocabulary "
                         "the model was trained with")
    if _round_up(vocab_size, VOCAB_PADDING) < rows:  # NVIDIA pads the table to a multiple of 8
        logger.warning("--vocab_file %s has %s tokens, %s fewer than %s: was the model trained "
                       "with another vocabulary? Its ids would mean other words; pass the "
                       "vocab.txt the checkpoint was trained with", args.vocab_file,
                       f"{vocab_size:,}", f"{rows - vocab_size:,}", table)


def _round_up(value, multiple):
    return -(-value // multiple) * multiple


def save_model(model, args, label_names=None):
    """<output_dir>/pytorch_model.bin ({'model': state_dict}) and config.json, atomically;
    with --export_huggingface also a Hugging Face directory (a classifier's rows named
    label_names)."""
    if args.skip_checkpoint:
        return
    output_dir = Path(args.output_dir)
    with utils.atomic_path(output_dir / "pytorch_model.bin") as temporary:
        torch.save({"model": model.state_dict()}, temporary)
    model.config.to_json_file(output_dir / "config.json")
    if args.export_huggingface:
        export_huggingface(model, args.vocab_file, output_dir / "huggingface",
                           do_lower_case(args), label_names)
    logger.info("saved the fine-tuned model to %s", output_dir)


# ----------------------------------------------------------------------------- training

def train(model, dataset, args, distributed, metrics):
    """Fine-tunes `model` on a TensorDataset whose tensors are named by `dataset.names`
    (the keyword arguments of the model's forward). Returns the training summary."""
    accumulation = args.gradient_accumulation_steps
    sampler, loader = training_loader(dataset, args, distributed)
    micro_batch = loader.batch_size
    total_steps = total_training_steps(args, len(loader) // accumulation)

    optimizer = make_adamw(param_groups(model, weight_decay=0.01), lr=args.learning_rate)
    scheduler = linear_warmup_schedule(optimizer, args.warmup_proportion, total_steps)
    precision = utils.precision_of(args)
    scaler = utils.make_grad_scaler(precision, distributed.device, args.loss_scale,
                                    args.init_loss_scale)
    ddp = wrap_distributed(model, distributed)
    logger.info("training: %d examples, %d optimizer steps of %d x %d x %d sequences",
                len(dataset), total_steps, micro_batch, accumulation, distributed.world_size)

    model.train()
    steps = StepAccounting(distributed.device)
    step, skipped, started = 0, 0, time.monotonic()
    progress = utils.Progress(total_steps, "fine-tuning", unit="step",
                              disable=args.disable_progress_bar or not distributed.is_main)
    epoch = 0
    while step < total_steps:
        if distributed.enabled:
            sampler.set_epoch(epoch)
        optimizer.zero_grad()  # an epoch's unfinished accumulation is dropped
        steps.drop_pending()
        for micro_step, tensors in enumerate(loader):
            last_micro_step = (micro_step + 1) % accumulation == 0
            batch = trimmed_batch(dataset.names, tensors, distributed.device)
            with gradient_sync(ddp, last_micro_step):
                with utils.autocast(precision, distributed.device):
                    loss = ddp(**batch)[0]
                scaler.scale(loss / accumulation).backward()
            steps.add(loss.detach() / accumulation, len(tensors[0]))
            if not last_micro_step:
                continue
            learning_rate = scheduler.get_last_lr()[0]
            if not utils.optimizer_step(optimizer, scheduler, scaler, model, MAX_GRAD_NORM):
                advance_past_skipped_step(scheduler)
                skipped += 1
            step += 1
            steps.taken()
            if step % args.log_freq == 0 or step == total_steps:
                mean_loss = steps.mean_loss_since_log()
                progress.update(1, loss=f"{mean_loss:.4f}")
                metrics.log(("train", step), {"loss": mean_loss, "learning_rate": learning_rate,
                                              "skipped_steps": skipped})
            else:
                progress.update(1)
            if step >= total_steps:
                break
        epoch += 1
    progress.close()
    if skipped == step:
        raise FloatingPointError(
            f"all {step} optimizer steps were skipped: the fp16 gradients were never finite "
            f"(loss scale now {scaler.get_scale():.3g}), so the model is unchanged. Lower "
            "--learning_rate or --init_loss_scale, or train in bf16/fp32")
    seconds = time.monotonic() - started
    return {"e2e_train_time": seconds, "final_loss": steps.last_loss(),
            "training_sequences_per_second": steps.sequences * distributed.world_size / seconds,
            "train_steps": step, "skipped_steps": skipped}


def advance_past_skipped_step(scheduler):
    """The schedule follows the batches, as in NVIDIA's amp fine-tuning. torch warns of a
    schedule step before any optimizer step, which a skipped first step is meant to be."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        scheduler.step()


class StepAccounting:
    """The losses and sequence counts of the optimizer steps taken: a micro-batch counts once
    its step is taken, so an epoch's dropped accumulation counts nowhere. Losses stay on the
    device until read: .item() would make the host wait for the GPU every micro-batch."""

    def __init__(self, device):
        self.zero = torch.zeros((), device=device)
        self.pending, self.pending_sequences = self.zero, 0
        self.since_log, self.steps_since_log = self.zero, 0
        self.step_loss, self.sequences = None, 0

    def add(self, loss, sequences):
        self.pending = self.pending + loss
        self.pending_sequences += sequences

    def drop_pending(self):
        self.pending, self.pending_sequences = self.zero, 0

    def taken(self):
        self.step_loss, self.sequences = self.pending, self.sequences + self.pending_sequences
        self.since_log = self.since_log + self.pending
        self.steps_since_log += 1
        self.drop_pending()

    def mean_loss_since_log(self):
        """The mean loss of the steps since the previous call (NVIDIA logs each step's)."""
        mean = self.since_log.item() / self.steps_since_log
        self.since_log, self.steps_since_log = self.zero, 0
        return mean

    def last_loss(self):
        """The last step's loss (NVIDIA's final_loss), NaN before any step."""
        return self.step_loss.item() if self.step_loss is not None else math.nan


def total_training_steps(args, steps_per_epoch):
    """--max_steps when given (> 0), else --num_train_epochs' worth (training_loader makes
    steps_per_epoch at least 1, check_training_length the flags at least one step)."""
    if args.max_steps > 0:
        return int(args.max_steps)
    return math.ceil(steps_per_epoch * args.num_train_epochs)


def check_training_length(args):
    if 0 < args.max_steps < 1:
        raise ValueError(f"--max_steps {args.max_steps:g} is less than one step: pass a "
                         "whole number of steps, or -1 to train for --num_train_epochs")
    if args.max_steps <= 0 and args.num_train_epochs <= 0:
        raise ValueError(f"--num_train_epochs {args.num_train_epochs:g} gives no training "
                         "step: pass a positive number of epochs (or --max_steps)")


def training_loader(dataset, args, distributed):
    """(sampler, loader of micro-batches) over this process's share of the training set;
    errors for a set that cannot fill one optimizer step."""
    accumulation = args.gradient_accumulation_steps
    if args.train_batch_size % accumulation:
        raise ValueError(f"--train_batch_size {args.train_batch_size} is not divisible by "
                         f"--gradient_accumulation_steps {accumulation}")
    micro_batch = args.train_batch_size // accumulation
    if not len(dataset):
        raise ValueError("the training set is empty: check the training file (and any warning "
                         "above about skipped examples)")
    sampler = (DistributedSampler(dataset, seed=args.seed) if distributed.enabled
               else RandomSampler(dataset, generator=torch.Generator().manual_seed(args.seed)))
    loader = DataLoader(dataset, sampler=sampler, batch_size=micro_batch, drop_last=False,
                        pin_memory=distributed.device.type == "cuda")
    if len(loader) < accumulation:  # the training loop would never finish a step
        raise ValueError(f"each of {distributed.world_size} process(es) gets {len(loader)} "
                         f"micro-batch(es) of {micro_batch} per epoch, fewer than one optimizer "
                         f"step of --gradient_accumulation_steps {accumulation} (the training "
                         f"set has {len(dataset)} sequences): lower --train_batch_size or "
                         "--gradient_accumulation_steps")
    return sampler, loader


def wrap_distributed(model, distributed):
    """DDP over several processes; gradients live in its all-reduce buckets (no copy in
    and out of them each step)."""
    if not distributed.enabled:
        return model
    device_ids = [distributed.device] if distributed.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True)


def gradient_sync(ddp, last_micro_step):
    """DDP all-reduces the gradients once per optimizer step, on its last micro-batch; the
    others only accumulate locally (the forward pass must be inside the context too)."""
    if isinstance(ddp, DistributedDataParallel) and not last_micro_step:
        return ddp.no_sync()
    return contextlib.nullcontext()


@torch.no_grad()
def predict(model, dataset, batch_size, args, device, per_token=False):
    """Runs the model over a TensorDataset in order; returns the concatenated outputs (each
    output of the model's forward as one tensor on the CPU) and the timing, under NVIDIA's
    summary names (e2e_inference_time, inference_sequences_per_second).
    per_token: the outputs have a sequence dimension (question answering), which is padded
    back to the dataset's width after the batch was trimmed."""
    model.eval()
    loader = DataLoader(dataset, sampler=SequentialSampler(dataset), batch_size=batch_size,
                        pin_memory=device.type == "cuda")
    outputs, started = None, time.monotonic()
    progress = utils.Progress(len(dataset), "predicting", unit="seq",
                              disable=args.disable_progress_bar)
    for tensors in loader:
        with utils.autocast(utils.precision_of(args), device):
            result = model(**trimmed_batch(dataset.names, tensors, device))
        result = result if isinstance(result, tuple) else (result,)
        parts = [r.float().cpu() for r in result]
        if per_token:
            parts = [restore_width(p, tensors[0].shape[1]) for p in parts]
        outputs = [[p] for p in parts] if outputs is None else [o + [p] for o, p in
                                                                 zip(outputs, parts)]
        progress.update(len(tensors[0]))
    progress.close()
    seconds = time.monotonic() - started
    return [torch.cat(o) for o in outputs], {"e2e_inference_time": seconds,
                                             "inference_sequences_per_second":
                                             len(dataset) / seconds}


NVIDIA_SUMMARY_NAMES = {"acc": "exact_match", "exact": "exact_match", "f1": "F1"}


def with_nvidia_summary_names(results):
    """The summary for dllogger.json: `results` plus the names NVIDIA's scripts log the same
    values under (parsers of their files read F1, and run_glue's accuracy as exact_match)."""
    return {**results, **{NVIDIA_SUMMARY_NAMES[k]: v for k, v in results.items()
                          if k in NVIDIA_SUMMARY_NAMES}}


def trimmed_batch(names, tensors, device):
    """The batch as keyword arguments on `device`, cut to its longest sequence: padding
    beyond it changes no output, and short inputs (SST-2) then cost a fraction of
    max_seq_length. The length is read from the mask while it is still on the host, and
    the whole (pinned, contiguous) tensors are copied before cutting, so that the copy
    runs asynchronously: a cut, strided view would be staged through pageable memory. The
    model's token layout (unpadding_indices) is read from the host mask too: from the
    device's it would be a host sync every micro-batch."""
    batch = {name: t.to(device, non_blocking=True) for name, t in zip(names, tensors)}
    if "attention_mask" not in names:
        return batch
    mask = tensors[names.index("attention_mask")]
    longest = int(mask.sum(dim=1).max())
    token_index, padded = unpadding_indices(mask[:, :longest])
    batch = {name: t[:, :longest] if t.dim() == 2 and name != "labels" else t
             for name, t in batch.items()}
    if token_index is not None:
        if device.type == "cuda":  # a non-blocking copy needs pinned memory
            token_index = token_index.pin_memory()
        batch["token_index"] = token_index.to(device, non_blocking=True)
    return dict(batch, padded=padded)


def restore_width(output, width):
    """Per-token outputs of a trimmed batch padded back to `width` with a very low score,
    so that batches concatenate and padding is never picked as an answer."""
    return torch.nn.functional.pad(output, (0, width - output.shape[1]), value=-10000.0)


def named_dataset(tensors):
    """A TensorDataset that remembers which forward argument each tensor is."""
    dataset = torch.utils.data.TensorDataset(*tensors.values())
    dataset.names = list(tensors)
    return dataset


def write_json(path, value):
    utils.atomic_write_text(path, json.dumps(value, indent=2) + "\n")
