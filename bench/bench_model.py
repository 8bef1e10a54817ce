"""Pre-training step time of our BertForPreTraining against transformers' on the CPU.

One step is forward, backward, optimizer step and zero_grad, in train mode (dropout on).
Both models get the same config, the same weights (our state dict loaded into theirs), the
same batch and torch.optim.AdamW(foreach=True) with the same settings; LAMB, the optimizer
of the real recipe, is benchmarked on its own. transformers runs with
attn_implementation="sdpa", so both sides use scaled_dot_product_attention: the difference
measured is the model code (chiefly ours decoding only the masked positions), not the
attention kernel.

Before timing, each config checks that the two models' initial losses agree to 1e-4 in
eval mode; a benchmark of two different computations would be worthless.

Timed steps alternate between the two implementations (and which goes first) so that load
from other processes affects both; the table reports the median seconds per step.

Run from the repository root:
    python bench/bench_model.py                       # small and base, fp32, 2-5 min on 2 cores
    python bench/bench_model.py --configs small --steps 1 --warmup 1    # quick check
    python bench/bench_model.py --bf16                # adds autocast bf16 rows

bf16 is only worth timing on CPUs with native bf16 (AVX512-BF16 or AMX); elsewhere it is
emulated and several times slower than fp32. Other processes on the same cores distort the
numbers badly (threads wait on each other), so the min-max spread is printed beside each
median.
"""

import argparse
import copy
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # model.py lives in the root
from model import BertConfig, BertForPreTraining  # noqa: E402
from optimization import make_lamb, param_groups  # noqa: E402

CONFIGS = {
    # The all-MiniLM-L6-v2 shape.
    "small": dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12,
                  intermediate_size=1536, vocab_size=30522),
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12,
                 intermediate_size=3072, vocab_size=30522),
}
DEFAULT_STEPS = {"small": 5, "base": 3}
CLS_ID, SEP_ID, MASK_ID = 101, 102, 103  # BERT's uncased vocabulary; [PAD] is 0
FIRST_WORDPIECE_ID = 1000  # ids below are [unused*] and special tokens
MASKED_LM_PROB = 0.15
LOSS_TOLERANCE = 1e-4
ADAMW = dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, foreach=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS),
                        default=["small", "base"], help="model shapes to benchmark")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="CPU threads for both models (default: torch's current number)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps per implementation before timing")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per implementation (default: "
                             + ", ".join(f"{k} {v}" for k, v in DEFAULT_STEPS.items()) + ")")
    parser.add_argument("--bf16", action="store_true",
                        help="also time both under torch.autocast('cpu', dtype=torch.bfloat16)")
    parser.add_argument("--lamb", action="store_true",
                        help="also time our model with run_pretraining's LAMB optimizer")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    for name in ("threads", "batch_size", "max_seq_length"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.max_seq_length < 8:
        parser.error(f"--max_seq_length must be at least 8 to hold two segments, "
                     f"got {args.max_seq_length}")
    if args.warmup < 0 or (args.steps is not None and args.steps < 1):
        parser.error("--warmup must be >= 0 and --steps >= 1")
    return args


# ----------------------------------------------------------------------------- set-up

def build_twins(name, seed):
    """Our model and transformers', holding the same weights (theirs loads our state dict)."""
    torch.manual_seed(seed)
    ours = BertForPreTraining(BertConfig(**CONFIGS[name]))
    shared = {k: v for k, v in ours.config.to_dict().items() if k != "pad_vocab_to_multiple_of"}
    hf_config = transformers.BertConfig(**shared, attn_implementation="sdpa")
    theirs = transformers.BertForPreTraining(hf_config)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    if (theirs.cls.predictions.decoder.weight is not theirs.bert.embeddings.word_embeddings.weight
            or sum(p.numel() for p in ours.parameters())
            != sum(p.numel() for p in theirs.parameters())):
        raise RuntimeError(f"{name}: the two models do not hold the same (tied) parameters; "
                           f"the comparison would not be like for like")
    return ours, theirs


def make_batch(vocab_size, batch_size, seq_length, generator):
    """A pre-training batch shaped like create_pretraining_data's output.

    Rows are [CLS] A [SEP] B [SEP] then padding; row 0 fills the sequence and the others
    have lengths drawn from [seq_length / 2, seq_length], since most pre-training instances
    are filled close to the maximum. 15% of the word pieces of each row are masked (80%
    [MASK], 10% random, 10% kept, as in BERT). Returns the model inputs and the labels:
    token id at masked positions, -1 elsewhere in masked_lm_labels (ours) and -100
    elsewhere in hf_labels (transformers).
    """
    input_ids = torch.zeros(batch_size, seq_length, dtype=torch.long)
    token_type_ids = torch.zeros_like(input_ids)
    attention_mask = torch.zeros_like(input_ids)
    masked_lm_labels = torch.full_like(input_ids, -1)
    for row in range(batch_size):
        length = seq_length if row == 0 else int(
            torch.randint(seq_length // 2, seq_length + 1, (), generator=generator))
        first_sep = int(torch.randint(2, length - 2, (), generator=generator))
        words = torch.randint(FIRST_WORDPIECE_ID, vocab_size, (length,), generator=generator)
        words[0], words[first_sep], words[length - 1] = CLS_ID, SEP_ID, SEP_ID
        input_ids[row, :length] = words
        token_type_ids[row, first_sep + 1:length] = 1
        attention_mask[row, :length] = 1
        mask_positions(input_ids[row], masked_lm_labels[row], length, first_sep, vocab_size,
                       generator)
    next_sentence_labels = torch.randint(0, 2, (batch_size,), generator=generator)
    return dict(input_ids=input_ids, token_type_ids=token_type_ids,
                attention_mask=attention_mask, masked_lm_labels=masked_lm_labels,
                hf_labels=masked_lm_labels.masked_fill(masked_lm_labels < 0, -100),
                next_sentence_labels=next_sentence_labels)


def mask_positions(row_ids, row_labels, length, first_sep, vocab_size, generator):
    """Masks 15% (at least one) of the row's word pieces in place, never [CLS]/[SEP]/padding."""
    candidates = torch.tensor([p for p in range(1, length - 1) if p != first_sep])
    count = max(1, round(MASKED_LM_PROB * len(candidates)))
    chosen = candidates[torch.randperm(len(candidates), generator=generator)[:count]]
    row_labels[chosen] = row_ids[chosen]
    replacement = torch.rand(count, generator=generator)
    row_ids[chosen[replacement < 0.8]] = MASK_ID
    random_ids = chosen[(replacement >= 0.8) & (replacement < 0.9)]
    row_ids[random_ids] = torch.randint(FIRST_WORDPIECE_ID, vocab_size,
                                        (len(random_ids),), generator=generator)


# ----------------------------------------------------------------------------- steps

def ours_loss(model, batch):
    return model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                 masked_lm_labels=batch["masked_lm_labels"],
                 next_sentence_labels=batch["next_sentence_labels"])[0]


def theirs_loss(model, batch):
    return model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                 attention_mask=batch["attention_mask"], labels=batch["hf_labels"],
                 next_sentence_label=batch["next_sentence_labels"]).loss


def check_initial_losses(name, ours, theirs, batch):
    """Eval-mode (no dropout) losses of both models on the batch; exits if they differ."""
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        ours_value, theirs_value = ours_loss(ours, batch).item(), theirs_loss(theirs, batch).item()
    difference = abs(ours_value - theirs_value)
    verdict = "OK" if difference <= LOSS_TOLERANCE else "MISMATCH"
    print(f"{name}: initial loss (eval) ours {ours_value:.6f}, transformers {theirs_value:.6f}, "
          f"|difference| {difference:.2e} (tolerance {LOSS_TOLERANCE:g}) {verdict}", flush=True)
    if verdict != "OK":
        sys.exit(f"{name}: the two models compute different losses on the same weights and "
                 f"batch, so their timings are not comparable; fix the parity first "
                 f"(tests/test_model.py covers it on tiny configs)")


def train_step(model, optimizer, loss_fn, batch, autocast):
    """One full step; returns its wall-clock seconds."""
    start = time.perf_counter()
    with autocast():
        loss = loss_fn(model, batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def time_steps(contenders, batch, autocast, warmup, steps):
    """Seconds of each timed step per (model, loss_fn, optimizer) contender, rotating
    which one runs first."""
    for model, _, _ in contenders:
        model.train()
    seconds = [[] for _ in contenders]
    for step in range(warmup + steps):
        shift = step % len(contenders)
        for index in [*range(shift, len(contenders)), *range(shift)]:
            model, loss_fn, optimizer = contenders[index]
            elapsed = train_step(model, optimizer, loss_fn, batch, autocast)
            if step >= warmup:
                seconds[index].append(elapsed)
    return seconds


# ----------------------------------------------------------------------------- report

def benchmark_config(name, args):
    """Table rows (config, implementation, precision, s/step, sequences/s, speed-up)."""
    ours, theirs = build_twins(name, args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    batch = make_batch(ours.config.vocab_size, args.batch_size, args.max_seq_length, generator)
    check_initial_losses(name, ours, theirs, batch)
    steps = args.steps or DEFAULT_STEPS[name]
    precisions = {"fp32": nullcontext}
    if args.bf16:
        precisions["bf16"] = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    contenders = {"ours": (ours, ours_loss, torch.optim.AdamW(ours.parameters(), **ADAMW)),
                  "transformers": (theirs, theirs_loss,
                                   torch.optim.AdamW(theirs.parameters(), **ADAMW))}
    if args.lamb:  # run_pretraining's optimizer on a copy of our model
        with_lamb = copy.deepcopy(ours)
        contenders["ours, LAMB"] = (with_lamb, ours_loss, make_lamb(
            param_groups(with_lamb, weight_decay=0.01), lr=ADAMW["lr"]))
    rows = []
    for precision, autocast in precisions.items():
        times = dict(zip(contenders, time_steps(list(contenders.values()), batch, autocast,
                                                args.warmup, steps)))
        baseline = statistics.median(times["transformers"])
        for implementation, seconds_list in times.items():
            seconds = statistics.median(seconds_list)
            rows.append((name, implementation, precision, seconds, args.batch_size / seconds,
                         "baseline" if implementation == "transformers"
                         else f"{baseline / seconds:.2f}x"))
        print(f"{name} {precision}: {steps} timed steps after {args.warmup} warm-up, "
              f"s/step min-max: " + ", ".join(f"{k} {min(v):.3f}-{max(v):.3f}"
                                              for k, v in times.items()), flush=True)
    return rows


def print_table(rows, args):
    print(f"\nOne pre-training step (forward, backward, optimizer step, zero_grad): ours and "
          f"transformers use torch.optim.AdamW(foreach=True) (\"ours, LAMB\": our LAMB, as "
          f"run_pretraining.py), train mode, batch {args.batch_size} x seq "
          f"{args.max_seq_length}, {args.threads} CPU threads, torch {torch.__version__}, "
          f"transformers {transformers.__version__} (sdpa attention).\n")
    print("| config | implementation | precision | s/step (median) | sequences/s "
          "| speed-up of ours |")
    print("|---|---|---|---:|---:|---:|")
    for name, implementation, precision, seconds, throughput, speedup in rows:
        print(f"| {name} | {implementation} | {precision} | {seconds:.3f} | {throughput:.2f} "
              f"| {speedup} |")


def main(args):
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.configs:
        rows += benchmark_config(name, args)
    print_table(rows, args)
    return rows


if __name__ == "__main__":
    main(parse_args())
