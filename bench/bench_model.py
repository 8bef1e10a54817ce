"""Pre-training step time of ours against transformers on the CPU, and as a share of the
machine's own matrix-multiply ceiling on the model's shapes.

One step is forward, backward, optimizer step and zero_grad, in train mode (dropout on).
Both models get the same config, the same weights (our state dict loaded into theirs), the
same batch and the same optimizer settings. transformers runs with attn_implementation=
"sdpa". Before timing, each config checks that the two models' eval-mode losses agree to
1e-4 in fp32: a benchmark of two different computations would be worthless.

Rows (config, batch 8 x 128 unless said):
- small (all-MiniLM-L6-v2's 6-layer/384 shape) and base (BERT-base): ours and transformers
  with torch.optim.AdamW(fused=True), and "ours, LAMB": our model with run_pretraining's
  LAMB, whose optimizer step is also timed alone ("LAMB share" of the step).
- recipe: the real pre-training recipe of bench/time_to_accuracy.py (and of the retired
  bench/pretrain_corpus.py, whose baseline issue 12 quotes): 4-layer/256 (4 heads,
  intermediate 1024, dropout 0.1), batch 64 x 128 with LAMB, ours through
  run_pretraining.py's own Trainer.step; transformers with the same LAMB in a plain loop;
  "ours, no dropout" is ours with run_pretraining.py --no_dropout (an ablation, not the
  recipe). Its batch is shaped like create_pretraining_data's output
  (rows full but for 10% of short ones, at most 20 masked tokens a row); the others' rows
  have lengths drawn from [seq/2, seq].

Model FLOPs of one step (what the task needs; work a model does beyond it is its loss):
    3 x [2 N L (4 H^2 + 2 H I)             encoder projections and feed-forward
         + 4 L H sum_i n_i^2                attention scores and their weighted sum
         + 2 M (H^2 + H V) + 2 B (H^2 + 2H)]  masked-LM head on the M masked tokens, NSP
with batch B, rows of n_i real tokens (N in all), L layers, hidden H, intermediate I,
vocabulary V; backward counts twice forward. Padding is not counted: the task does not need
it (ours skips it in the projections when it is over a tenth of the batch, transformers
computes it). Until the tenth measurement below it was counted, which made the shares of
small and base 1.18x and 1.21x too high (their batches are 82% real tokens) and the
recipe's 1.03x.

The ceiling: in each run, between warm-up and the timed steps, every linear layer's three
GEMMs of forward and backward (Y = X W^T, dX = dY W, dW = dY^T X) are timed on their own,
at the step's shapes, as plain tensors of the benchmark's dtype (bf16 or fp32): the ceiling
is their FLOPs over their time, the rate this machine multiplies the model's matrices at.
"share" is a row's model FLOP/s over that ceiling.

Each of --runs runs interleaves the contenders step by step (rotating which goes first),
so that load from other processes hits all of them alike; a run's figure is the median of
its steps. Each config and precision of each run is measured in a fresh process, as a user
trains one model per process (measure_in_fresh_process says what sharing one cost). The
table gives the median over runs and, in brackets, the lowest and highest. This machine is
shared and noisy: compare the ratios of one table, not tables.

Run from the repository root:
    python bench/bench_model.py --bf16                    # fp32 and bf16 rows, ~20 min
    python bench/bench_model.py --configs recipe --bf16 --runs 1 --steps 2   # quick check
    python bench/bench_model.py --configs base --bf16 --profile   # top ops of ours' step

bf16 is only worth timing on CPUs with native bf16 (AVX512-BF16 or AMX); elsewhere it is
emulated (a warning says so): on a 2-core AVX2 EPYC (Zen 3) a 1024x768 by 768x3072 product
ran at 1.0 GFLOP/s in bf16 against 161 in fp32.

Measured (2026-12-01, this project's 2-core CPU with AMX, torch 2.13, transformers 5.24,
`python bench/bench_model.py --bf16`, 3 runs; medians, the spread in the table printed):
- recipe bf16: ours 0.973 s/step, 65.8 sequences/s, 65% of a 352 GFLOP/s ceiling, 4.80x
  transformers (14%); fp32: 26.8 sequences/s, 71% of 148 GFLOP/s, 3.85x. Before this
  pass the recipe ran at about 31 sequences/s (bf16, dropout on).
- small (6-layer/384) bf16: 2.00x, 57% of 359 GFLOP/s; fp32 1.80x, 73%.
- base bf16: 1.66x, 69% of 391 GFLOP/s; fp32 1.52x, 87% of 174 GFLOP/s. With LAMB the
  optimizer step is 45% of the bf16 step (24% in fp32): about 26 passes of 4 bytes over
  each of the 110M parameters (moments, norms, update), some 11 GB a step at this machine's
  ~10 GB/s; a fused kernel would need about 10.
Measured again (2026-12-02, after LAMB's blocked CPU path, the same command, 3 runs; the
ceiling read 549-753 GFLOP/s in bf16 that day, about twice the day before):
- recipe bf16: ours 0.712 s/step, 89.9 sequences/s (2.9x the 31 before this pass; 99.3
  without dropout), 50% of 623 GFLOP/s, 7.58x transformers; fp32 33.7 sequences/s, 76%.
- small bf16: 1.94x (1.90x-2.71x), 41%; fp32 1.80x, 74%.
- base bf16: 1.74x (1.54x-1.96x), 46% of 686 GFLOP/s; fp32 1.57x, 79%. LAMB's share of
  the step: 25% in bf16 (45% before the blocked path), 8% in fp32, 20% in small bf16.
Measured a third time (2026-12-02, a slow afternoon of the machine: the bf16 ceiling read
293-356 GFLOP/s; after LAMB's compiled CPU passes, the same command, 3 runs):
- recipe bf16: ours 1.032 s/step, 62.0 sequences/s, 65% of 297 GFLOP/s, 5.48x
  transformers; without dropout 62.1 sequences/s, 71%. fp32: 24.1 sequences/s, 62%.
- small bf16: 2.03x (2.01x-2.33x), 58%; fp32 2.02x, 76%.
- base bf16: 1.64x (1.53x-1.74x), 70% of 345 GFLOP/s; with LAMB 1.85x, 78%, and LAMB's
  share of the step 10% (10%-11%, its floor at the copy bandwidth 5%); fp32 1.40x, 74%,
  LAMB 6%. LAMB alone on BERT-base's fp32 parameters (`optimization.LAMB.step`, median
  of 6 steps, interleaved): 628 ms with separate norm and update passes, 387 ms blocked
  eager, 199 ms compiled, against 98 ms to move its 28 B/param at 31.5 GB/s.
Measured a fourth time (2026-12-02 evening, as slow: bf16 ceiling 292-365 GFLOP/s; after
the small LAMB tensors' multi-tensor pass, LAMB's kept update buffer and the dropout mask
compared straight into bf16; the same command, 3 runs):
- recipe bf16: ours 1.223 s/step, 52.3 sequences/s, 60% of 306 GFLOP/s, 6.69x
  transformers; without dropout 57.5 sequences/s, 66%. fp32: 22.4 sequences/s, 3.77x.
- small bf16: 2.04x (1.72x-2.32x), 53%; fp32 1.87x, 75%.
- base bf16: 1.80x (1.78x-1.95x), 64% of 357 GFLOP/s; with LAMB 1.94x, 68%, LAMB's share
  of the step 10% (9%-10%, floor 4%); fp32 1.60x, 78%, LAMB 4%.
Measured a fifth time (2026-12-03, a fast morning: the bf16 ceiling read 1,268-1,534
GFLOP/s, four times the evenings before, fp32 270-320; the same command, 3 runs):
- recipe bf16: ours 0.588 s/step, 108.8 sequences/s, 26% of 1,479 GFLOP/s, 6.85x
  transformers; without dropout 132.2 sequences/s, 31%, 8.43x. fp32: 46.1 sequences/s,
  53%, 4.22x.
- small bf16: 1.80x (1.80x-2.22x), 22% of 1,343 GFLOP/s; fp32 1.61x, 52%.
- base bf16: 2.09x (2.04x-2.17x), 33% of 1,280 GFLOP/s; with LAMB 2.41x, 39%, LAMB's share
  16% against a floor of 10%; fp32 1.43x, 63%, LAMB 7%.
  With multiplies four times faster the rest of the step shows: the small bf16 step, timed
  by phase (median of 6, malloc setting on): ours forward 96 ms, backward 97, LAMB 56;
  transformers 229, 180 and AdamW 50. The optimizer moves 28 B a parameter whichever it is,
  so it costs both sides alike and caps the ratio (2.5x would need ours' forward and
  backward 30% faster); at 26 GB/s LAMB's floor alone is 10% of the BERT-base step, so
  under 10% would need lower-precision optimizer state. A query-key-value projection fused
  into one GEMM (the three weights concatenated each step) took 0.254 s/step against 0.251
  unfused on small and 0.939 against 0.958 on base: not worth its copy.
  The largest cost left in ours' small step is dropout, 17% of it: the same step (AdamW,
  interleaved, median of 8) took 0.220 s, 0.198 without attention-probability dropout and
  0.183 without any (transformers, with its dropout, took 0.485 in the table's run). Of the
  keep mask for 8x12x128x128 probabilities (2.2 ms), torch's CPU generator (mt19937, 1.65
  ns a 32-bit word) takes 1.3 ms and the bit slicing and compares the rest. An
  inductor-compiled counter-hash mask took 0.95 ms (about 10 ms of the 220 saved, with a
  new random stream for every bf16 dropout) and a compiled torch.rand mask 6.6 ms, so the
  mask stayed as it was (until the sixth measurement: a hash fused with the mask's
  application and drawn again in the backward, so that no mask is stored, pays).
  With --reuse_freed_memory (bf16 rows, the next half hour): recipe 107.2 sequences/s,
  25%, 5.35x; small 1.91x, 23%; base 1.43x, 38% (transformers 1.563 s/step against 2.629
  without it), LAMB 16% against a floor of 11%.
Measured a sixth time (2026-12-03 afternoon, bf16 ceiling 1,079-1,430 GFLOP/s; after
dropout's hashed mask, the compiled masked-LM loss, LAMB compiled from 8.4M-parameter models
up and for every tensor too large to share a block, and fused AdamW for both sides' AdamW
rows; the same command, 3 runs):
- recipe bf16: ours 0.498 s/step, 128.5 sequences/s, 31% of 1,416 GFLOP/s, 7.82x
  transformers; without dropout 135.7 sequences/s, 34%. fp32: 45.2 sequences/s, 56%, 4.29x.
- small bf16: 2.13x (2.02x-2.70x), 28% of 1,295 GFLOP/s; fp32 1.65x, 58%.
- base bf16: 2.75x (2.33x-2.75x), 46% of 1,228 GFLOP/s; with LAMB 2.50x, 42%, LAMB's share
  17% against a floor of 11%; fp32 1.39x, 67%, LAMB 8%.
  Each change measured alone (bf16, medians): the recipe's attention-probability dropout
  (64x4x128x128) forward and backward 3.1 ms against 12, its hidden-state dropout
  (64x128x256) 2.4-2.8 against 7.8; the masked-LM loss of 1161 x 30522 logits 43-52 ms
  against 78-80; the recipe's LAMB step 29 ms against 63-75 and small's 55 against 69;
  fused AdamW on small's parameters 16 ms against 57 with foreach. Dropout went from 22% of
  the recipe's step (0.770 against 0.604 without) to 5%. The code before and after, side by
  side (`--configs recipe --bf16 --no_fp32 --runs 1`, alternating, twice each): the recipe's
  bf16 step 0.630-0.631 s against 0.499-0.512 with dropout, 0.496-0.501 against 0.466-0.467
  without (the loss and LAMB kernels).
  What is left, from torch.profiler over two small bf16 steps (malloc setting on, 0.206
  s/step unprofiled): matrix multiplies 37% of self time; the word embeddings' 9% (autocast's
  fp32-to-bf16 copy for the decoder, the decoder's bf16 gradient copied back to fp32, the
  embedding backward's zero-filled 30522x384 gradient and its sum with the decoder's);
  GELU, softmax and LayerNorm with their backwards 9%; the compiled dropout and loss
  kernels 8%; fused AdamW 7%. The 2.5x on small needs 15% off ours' step and no single
  item left is that large. torch.compile of every BertLayer (train mode, bf16, dynamic
  shapes) gave 0.179 s/step against 0.186 eager on small, after 16 s of compiling, and of
  the feed-forward's first half alone 0.196: not adopted.
  Since then the word lookup's gradient goes into the tied table sparsely on the CPU (no
  zero-filled table, no full-table sum): alone, small's lookup-and-decoder forward and
  backward 67-73 ms against 79-81; the code before and after side by side (`--configs small
  recipe --bf16 --no_fp32 --runs 1 --reuse_freed_memory`, alternating, twice each, with
  GLIBC_TUNABLES=glibc.malloc.tcache_count=0): small 0.187-0.188 s against 0.181-0.184
  (2.21x-2.26x against 2.28x-2.29x), the recipe 0.457-0.461 against 0.459-0.464 (no change).
  Autograd summed that sparse gradient with the decoder's dense one out of place (the dense
  one arrives first, and dense plus a later sparse makes a new tensor): a third copy of the
  30522x384 table each step, 14 ms of the small step in torch.profiler, beside 2 ms for each
  of the casts to and from bf16. The table now reaches both uses through one autograd
  function whose backward adds the rows in place (model.tied_word_tables): small's step
  alone, 5 processes alternating with the code before (2026-12-04, a slow hour, malloc
  settings on), median 0.282 s against 0.271. The table in that hour (`--configs small
  recipe --bf16 --no_fp32 --runs 3 --reuse_freed_memory`, GLIBC_TUNABLES as above; bf16
  ceiling 358-400 GFLOP/s): small 2.28x (1.60x-2.41x), 68% of the ceiling, with LAMB 2.14x
  and LAMB 11% of the step; recipe 0.844 s/step, 75.8 sequences/s, 68%, 5.61x, without
  dropout 79.3 sequences/s, 71%.
Measured a seventh time (2026-12-05 morning, a slow machine: bf16 ceiling 357-422 GFLOP/s,
the model's own 384- and 1536-wide products at 385-430 in a side check; `python
bench/bench_model.py --bf16 --no_fp32`, 3 runs; no model or optimizer change since):
- recipe bf16: ours 0.848 s/step, 75.5 sequences/s, 72% (66%-72%) of the ceiling, 5.69x
  transformers; without dropout 79.2 sequences/s, 75%.
- small bf16: 2.35x (2.32x-2.82x), 74%; with LAMB 2.19x, LAMB 11% of the step.
- base bf16: 1.86x (1.76x-1.89x), 88% of 422 GFLOP/s; with LAMB 1.71x, 86%, LAMB's share
  8% (8%-9%) against a floor of 6%.
  The unpadded token count (809 of 1,024 here) is no multiple of AMX's tiles, but a side
  check found no tail cost: 384x809 by 809x384 ran at 404-408 GFLOP/s, 384x832 by 832x384
  at 406-407.
Measured an eighth time (2026-12-05 midday, as slow: bf16 ceiling 328-416 GFLOP/s; each
config and precision now in a fresh process; `python bench/bench_model.py --bf16`, 3 runs,
twice; no model or optimizer change since the seventh), the first table and the second:
- recipe bf16: ours 76.6 and 71.8 sequences/s, 72% and 76% of the ceiling, 4.49x and 4.88x
  transformers; without dropout 76% and 81%. fp32: 66% and 65%, 2.64x and 3.26x.
- small bf16: 2.81x (2.78x-2.93x) and 2.74x (2.73x-2.96x), 66% and 65%; with LAMB 2.63x
  and 2.55x, LAMB 12% and 11.4% of the step. fp32: 2.03x and 1.99x.
- base bf16: 2.40x (2.05x-2.84x) and 2.14x (1.99x-2.30x), 86% and 77%; with LAMB's share of
  the step 10% (9%-11%; that table printed it without decimals) and 9.3% (8.9%-9.4%), its
  floor 5% and 3.2%. fp32: 1.75x and 1.68x.
  In the hour before, two tables of the earlier design (one process for everything) gave
  small 2.23x (2.18x-2.75x) and 2.17x (2.14x-2.57x): there transformers' small step took
  0.64-0.66 s in the runs after BERT-base's rows and 0.74-0.84 s before them, and 0.80-0.91
  s in processes that timed small alone; ours 0.28-0.34 s throughout (see
  measure_in_fresh_process). Those tables' BERT-base: 2.05x and 1.88x, 88% and 85%.
  All goals of issue 12 hold in the second fresh-process table, and in the first but for
  LAMB's share, at the 10% bound. On the fast day of the fifth and sixth measurements
  (ceiling 1,079-1,534 GFLOP/s) BERT-base's share (33%-46%) and LAMB's (16%-17%) missed
  them: there the matrix products take a third to a half of the step, and LAMB's memory
  floor alone is 10-11% of it.
Measured a ninth time (2026-12-05 evening, bf16 ceiling 337-422 GFLOP/s, copy bandwidth
36-56 GB/s; `python bench/bench_model.py --bf16`, 3 runs; no code change since the eighth;
shares with padding counted as work, base's 90% is 75% counted as in the tenth):
- recipe bf16: ours 0.866 s/step, 73.9 sequences/s, 68% (68%-84%) of the ceiling, 4.55x
  transformers; without dropout 78.9 sequences/s, 75%. fp32: 66%, 2.62x.
- small bf16: 2.87x (2.63x-2.88x), 66%; with LAMB 2.65x, LAMB 11.8% of the step. fp32:
  1.99x, 70%.
- base bf16: 2.14x (2.03x-2.28x), 90% (84%-97%); with LAMB 2.10x, 83%, LAMB's share 8.0%
  (7.8%-8.5%) against a floor of 3.7%. fp32: 1.72x, 94%; with LAMB 4.4%.
Measured a tenth time (2026-12-05 evening, an hour after the ninth; model FLOPs now count
real tokens only, see above; bf16 ceiling 345-410 GFLOP/s, copy bandwidth 30-53 GB/s; `python
bench/bench_model.py --bf16`, 3 runs, nothing else on the cores):
- recipe bf16: ours 0.853 s/step, 75.0 sequences/s, 70% (68%-73%) of the ceiling, 4.56x
  transformers; without dropout 81.4 sequences/s, 73%. fp32: 63%, 3.25x.
- small bf16: 2.89x (2.71x-2.89x), 55%; with LAMB 2.74x, LAMB 11.1% of the step. fp32:
  2.05x, 61%.
- base bf16: 2.30x (1.93x-2.37x), 68% (59%-73%); with LAMB 2.13x, 64%, LAMB's share 7.9%
  (7.2%-9.6%) against a floor of 5.2%. fp32: 1.71x, 80%; with LAMB 3.9%.
  Counted as here, the eighth measurement's BERT-base bf16 shares were 71% and 64%.
  Why the shares fall when the ceiling rises: torch.profiler over two base bf16 steps with
  LAMB (as `--configs base --bf16 --profile`, malloc settings on, shapes recorded; the
  ninth measurement's hour) gives 1,203 ms a step in mm/addmm/bmm and 402 ms in everything
  else: LAMB 159 (40 B a parameter over its two passes, 137 ms at 32 GB/s), autocast's
  weight casts and their gradients' casts back 52, GELU and its backward 31, dropout 29,
  LayerNorm 11, the unpadding gathers and scatters 13. That rest is bound by memory, which
  ran no faster on the fast days (26-35 GB/s) than this evening (30-56), while the products
  ran three times faster. The step's 453 GFLOP take 0.35 s at a ceiling of 1,280 GFLOP/s:
  with the 0.4 s of rest that is 47% of the ceiling (the sixth measurement found 46%, 38%
  counted as now).
  65% there needs the rest under 0.19 s, and LAMB under 10% of the step needs LAMB under
  39 ms even if nothing else took time, below the 88-118 ms that its 28 bytes of fp32
  state and gradient per parameter take at 26-35 GB/s. So on those days the LAMB goal is out
  of reach of any LAMB that keeps NVIDIA's fp32 moments, and the share goal of any step that
  does not cut the rest by half.
With --reuse_freed_memory (glibc keeps large freed blocks, as the entry scripts set it on
the CPU; the evening of the fourth measurement, bf16 rows only), both sides stop faulting
in the pages of every step's tensors over 32 MB, transformers more (its logits cover every
token): recipe ours 56.7 sequences/s, 64%, 5.20x; small 2.06x, 59%; base ours 1.818 s/step
against 2.363 without, transformers 2.786 against 4.611, so 1.49x, 79%, and LAMB 10%
(7%-10%).
The ceiling moves with the machine's load (352-391 GFLOP/s in bf16 one day, 549-753 the
next, against 737 for a 1024x1024x4096 bf16 product on a quiet day), which is why each run
measures its own and the shares of two days do not compare. The LAMB floor column is
28 B per parameter (read gradient, weight and both moments, write weight and moments) at
the copy bandwidth measured in the same run (a 256 MB copy), over the row's step time:
the least any LAMB with fp32 state could take.

Profile of the recipe's bf16 step (torch.profiler, self CPU time, batch 64 x 128 with 10%
short rows, before the CPU fast paths of model.py and optimization.py, 1.39 s/step with
dropout): mm/addmm 34%, aten::bernoulli_ (dropout) 16%, bmm 9%, copy_ 10% (fp32 copies of
the logits for the loss and of activations for each projection), log-softmax and its
backward 5%, LAMB's repeat_interleave 2.5%. SDPA's flash kernel was 19% of the step without
dropout (its bf16 backward is 3x slower than matmul-softmax-matmul on this CPU). After
(1.0 s/step): mm/addmm 52%, copy_ 8%, random_ 5% (dropout's mask), bmm 5%.
"""

import argparse
import concurrent.futures
import copy
import dataclasses
import multiprocessing
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # model.py lives in the root
import run_pretraining  # noqa: E402
import utils  # noqa: E402
from model import BertConfig, BertForPreTraining  # noqa: E402
from optimization import make_lamb, param_groups, poly_warmup_schedule  # noqa: E402

CONFIGS = {
    "recipe": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4,
                   intermediate_size=1024, vocab_size=30522),
    # The all-MiniLM-L6-v2 shape.
    "small": dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12,
                  intermediate_size=1536, vocab_size=30522),
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12,
                 intermediate_size=3072, vocab_size=30522),
}
BATCH_SIZE = {"recipe": 64, "small": 8, "base": 8}
DEFAULT_STEPS = {"recipe": 4, "small": 5, "base": 3}
CLS_ID, SEP_ID, MASK_ID = 101, 102, 103  # BERT's uncased vocabulary; [PAD] is 0
FIRST_WORDPIECE_ID = 1000  # ids below are [unused*] and special tokens
MASKED_LM_PROB = 0.15
RECIPE_MAX_PREDICTIONS = 20  # create_pretraining_data's --max_predictions_per_seq at 128
SHORT_SEQ_PROB = 0.1  # create_pretraining_data's share of rows with a random shorter length
LOSS_TOLERANCE = 1e-4
# torch's fused AdamW kernel: what our fine-tuning takes on the CPU (make_adamw) and transformers'
# Trainer by default (optim="adamw_torch_fused").
ADAMW = dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, fused=True)
LAMB_LR = 4e-3  # the recipe's
# Memory traffic per fp32 parameter that any LAMB step with fp32 moments must move: read
# gradient, weight and both moments, write weight and moments once (ours moves about 44 on
# the CPU, see optimization._blocked_lamb_update).
LAMB_LEAST_BYTES = 28


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS),
                        default=["recipe", "small", "base"], help="model shapes to benchmark")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="CPU threads for all (default: torch's current number)")
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3,
                        help="independent runs; the table gives their median and spread")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps per contender before timing, in every run")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per contender and run (default: "
                             + ", ".join(f"{k} {v}" for k, v in DEFAULT_STEPS.items()) + ")")
    parser.add_argument("--bf16", action="store_true",
                        help="also time all under torch.autocast('cpu', dtype=torch.bfloat16)")
    parser.add_argument("--no_fp32", action="store_true", help="skip the fp32 rows")
    parser.add_argument("--reuse_freed_memory", action="store_true",
                        help="glibc's malloc keeps large freed blocks for reuse, as the entry "
                             "scripts set it on the CPU (utils.reuse_freed_memory), for every "
                             "contender alike (they share this process)")
    parser.add_argument("--profile", action="store_true",
                        help="instead of the table: torch.profiler's top ops of ours' step")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    for name in ("threads", "max_seq_length", "runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.max_seq_length < 8:
        parser.error(f"--max_seq_length must be at least 8 to hold two segments, "
                     f"got {args.max_seq_length}")
    if args.warmup < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--warmup and --steps must be at least 1 (every measurement's process "
                     "compiles its kernels in its first step)")
    if args.no_fp32 and not args.bf16:
        parser.error("--no_fp32 leaves nothing to time without --bf16")
    return args


# ----------------------------------------------------------------------------- set-up

def build_twins(name, seed):
    """Our model and transformers', holding the same weights (theirs loads our state dict)."""
    torch.manual_seed(seed)
    ours = BertForPreTraining(BertConfig(**CONFIGS[name]))  # vocabulary unpadded, as theirs
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


def make_batch(vocab_size, batch_size, seq_length, generator, full_rows=False):
    """A pre-training batch shaped like create_pretraining_data's output.

    Rows are [CLS] A [SEP] B [SEP] then padding. With full_rows (the recipe) a row fills the
    sequence but with probability SHORT_SEQ_PROB, when its length is drawn from [8, seq],
    and at most RECIPE_MAX_PREDICTIONS tokens are masked; otherwise row 0 is full and the
    others have lengths drawn from [seq / 2, seq]. 15% of the word pieces of each row are
    masked (80% [MASK], 10% random, 10% kept, as in BERT). Returns the model inputs and the
    labels: token id at masked positions, -1 elsewhere in masked_lm_labels (ours) and -100
    elsewhere in hf_labels (transformers).
    """
    input_ids = torch.zeros(batch_size, seq_length, dtype=torch.long)
    token_type_ids = torch.zeros_like(input_ids)
    attention_mask = torch.zeros_like(input_ids)
    masked_lm_labels = torch.full_like(input_ids, -1)
    for row in range(batch_size):
        length = row_length(row, seq_length, generator, full_rows)
        first_sep = int(torch.randint(2, length - 2, (), generator=generator))
        words = torch.randint(FIRST_WORDPIECE_ID, vocab_size, (length,), generator=generator)
        words[0], words[first_sep], words[length - 1] = CLS_ID, SEP_ID, SEP_ID
        input_ids[row, :length] = words
        token_type_ids[row, first_sep + 1:length] = 1
        attention_mask[row, :length] = 1
        mask_positions(input_ids[row], masked_lm_labels[row], length, first_sep, vocab_size,
                       generator, RECIPE_MAX_PREDICTIONS if full_rows else seq_length)
    next_sentence_labels = torch.randint(0, 2, (batch_size,), generator=generator)
    return dict(input_ids=input_ids, token_type_ids=token_type_ids,
                attention_mask=attention_mask, masked_lm_labels=masked_lm_labels,
                hf_labels=masked_lm_labels.masked_fill(masked_lm_labels < 0, -100),
                next_sentence_labels=next_sentence_labels)


def row_length(row, seq_length, generator, full_rows):
    if full_rows:
        short = float(torch.rand((), generator=generator)) < SHORT_SEQ_PROB
        return int(torch.randint(8, seq_length + 1, (), generator=generator)) if short \
            else seq_length
    if row == 0:
        return seq_length
    return int(torch.randint(seq_length // 2, seq_length + 1, (), generator=generator))


def mask_positions(row_ids, row_labels, length, first_sep, vocab_size, generator,
                   max_predictions):
    """Masks 15% (at least one, at most max_predictions) of the row's word pieces in place,
    never [CLS]/[SEP]/padding."""
    candidates = torch.tensor([p for p in range(1, length - 1) if p != first_sep])
    count = min(max_predictions, max(1, round(MASKED_LM_PROB * len(candidates))))
    chosen = candidates[torch.randperm(len(candidates), generator=generator)[:count]]
    row_labels[chosen] = row_ids[chosen]
    replacement = torch.rand(count, generator=generator)
    row_ids[chosen[replacement < 0.8]] = MASK_ID
    random_ids = chosen[(replacement >= 0.8) & (replacement < 0.9)]
    row_ids[random_ids] = torch.randint(FIRST_WORDPIECE_ID, vocab_size,
                                        (len(random_ids),), generator=generator)


OURS_KEYS = ("input_ids", "token_type_ids", "attention_mask", "masked_lm_labels",
             "next_sentence_labels")


# ----------------------------------------------------------------------------- contenders

class Contender:
    """One implementation: step(autocast) runs a full training step and returns its seconds
    and the seconds of its optimizer step (None where not timed apart)."""

    def __init__(self, model, optimizer, loss_fn=None):
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn

    def step(self, batch, autocast):
        start = time.perf_counter()
        with autocast():
            loss = self.loss_fn(self.model, batch)
        loss.backward()
        optimizer_start = time.perf_counter()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        end = time.perf_counter()
        return end - start, end - optimizer_start


class RecipeTrainer(Contender):
    """Ours as run_pretraining.py trains: its Trainer.step (micro-batch loop, autocast from
    the precision flag, LAMB through utils.optimizer_step, schedule) on one CPU process."""

    def __init__(self, model, precision, batch):
        rows, seq = batch["input_ids"].shape
        argv = ["--input_dir", "-", "--config_file", "-", "--output_dir", "-",
                "--max_seq_length", str(seq), "--train_batch_size", str(rows)]
        self.args = run_pretraining.parse_args(argv + (["--bf16"] if precision == "bf16" else []))
        distributed = utils.Distributed(rank=0, local_rank=0, world_size=1,
                                        device=torch.device("cpu"))
        optimizer = make_lamb(param_groups(model, weight_decay=0.01), lr=LAMB_LR)
        scheduler = poly_warmup_schedule(optimizer, warmup_proportion=0.02, total_steps=10**6)
        scaler = utils.make_grad_scaler(precision, distributed.device)
        self.trainer = run_pretraining.Trainer(model, optimizer, scheduler, scaler, self.args,
                                               distributed)
        super().__init__(model, optimizer)

    def step(self, batch, autocast):
        start = time.perf_counter()
        self.trainer.step(iter([{k: batch[k] for k in OURS_KEYS}]))
        return time.perf_counter() - start, None


def without_dropout(model):
    """A copy of our model with both dropout probabilities 0 (run_pretraining --no_dropout)."""
    config = dataclasses.replace(model.config, hidden_dropout_prob=0.0,
                                 attention_probs_dropout_prob=0.0)
    copy_ = BertForPreTraining(config)
    copy_.load_state_dict(model.state_dict())
    return copy_


def ours_loss(model, batch):
    return model(**{k: batch[k] for k in OURS_KEYS})[0]


def theirs_loss(model, batch):
    return model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                 attention_mask=batch["attention_mask"], labels=batch["hf_labels"],
                 next_sentence_label=batch["next_sentence_labels"]).loss


def make_contenders(name, ours, theirs, precision, batch):
    """{implementation: Contender} with fresh optimizers, training the twins themselves
    (each process builds its own, for one run) and copies of ours where a row needs its own;
    the recipe's trainers are set up for the batch's shape."""
    lamb = dict(weight_decay=0.01)
    if name == "recipe":
        return {"ours": RecipeTrainer(ours, precision, batch),
                "transformers": Contender(theirs, make_lamb(param_groups(theirs, **lamb),
                                                            lr=LAMB_LR), theirs_loss),
                "ours, no dropout": RecipeTrainer(without_dropout(ours), precision, batch)}
    with_lamb = copy.deepcopy(ours)
    return {"ours": Contender(ours, torch.optim.AdamW(ours.parameters(), **ADAMW), ours_loss),
            "transformers": Contender(theirs, torch.optim.AdamW(theirs.parameters(), **ADAMW),
                                      theirs_loss),
            "ours, LAMB": Contender(with_lamb, make_lamb(param_groups(with_lamb, **lamb),
                                                         lr=LAMB_LR), ours_loss)}


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


# ----------------------------------------------------------------------------- FLOPs, ceiling

def step_flops(config, batch):
    """Model FLOPs of one training step (the formula of the module docstring)."""
    rows = batch["input_ids"].shape[0]
    lengths = batch["attention_mask"].sum(dim=1).double()
    masked = int((batch["masked_lm_labels"] >= 0).sum())
    hidden, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    encoder = 2 * float(lengths.sum()) * layers * (4 * hidden**2 + 2 * hidden * inner)
    attention = 4 * layers * hidden * float(lengths.square().sum())
    heads = 2 * masked * (hidden**2 + hidden * config.vocab_size) + 2 * rows * (hidden**2 + 2 * hidden)
    return 3 * (encoder + attention + heads)


def linear_shapes(config, batch):
    """(tokens, in, out, count) of the step's linear layers, ours' way (masked-only head)."""
    tokens = batch["input_ids"].numel()
    masked = int((batch["masked_lm_labels"] >= 0).sum())
    hidden, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    return [(tokens, hidden, hidden, 4 * layers), (tokens, hidden, inner, layers),
            (tokens, inner, hidden, layers), (masked, hidden, hidden, 1),
            (masked, hidden, config.padded_vocab_size, 1)]


def gemm_ceiling(config, batch, dtype, repeats=3):
    """FLOP/s of the step's linear-layer GEMMs (forward and both backward products), each
    timed alone at its shape in `dtype`: the median of `repeats` passes over all of them."""
    generator = torch.Generator().manual_seed(0)
    operands = []
    for tokens, fan_in, fan_out, count in linear_shapes(config, batch):
        x = torch.randn(tokens, fan_in, generator=generator).to(dtype)
        w = torch.randn(fan_out, fan_in, generator=generator).to(dtype)
        dy = torch.randn(tokens, fan_out, generator=generator).to(dtype)
        operands.append((x, w, dy, count, 3 * 2 * tokens * fan_in * fan_out * count))
    total_flops = sum(flops for *_, flops in operands)
    seconds = []
    for _ in range(repeats + 1):  # the first pass warms the kernels up
        start = time.perf_counter()
        for x, w, dy, count, _ in operands:
            for _ in range(count):
                x @ w.t()  # forward
                dy @ w  # input gradient
                dy.t() @ x  # weight gradient
        seconds.append(time.perf_counter() - start)
    return total_flops / statistics.median(seconds[1:])


def copy_bandwidth(megabytes=256, repeats=3):
    """Bytes/s of a copy between two arrays far larger than the caches (bytes read plus
    written), the median of `repeats` after a warm-up: the memory rate LAMB is bound by."""
    source = torch.ones(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    seconds = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        target.copy_(source)
        seconds.append(time.perf_counter() - start)
    return 2 * source.numel() * source.element_size() / statistics.median(seconds[1:])


# ----------------------------------------------------------------------------- runs

def time_steps(contenders, batch, autocast, warmup, steps, before_timing):
    """{implementation: [(step seconds, optimizer seconds), ...]} of the timed steps, each
    step rotating which contender goes first; before_timing() runs after the warm-up."""
    for contender in contenders.values():
        contender.model.train()
    names = list(contenders)
    seconds = {name: [] for name in names}
    for step in range(warmup + steps):
        if step == warmup:
            before_timing()
        shift = step % len(names)
        for name in names[shift:] + names[:shift]:
            result = contenders[name].step(batch, autocast)
            if step >= warmup:
                seconds[name].append(result)
    return seconds


def one_run(name, twins, batch, precision, args):
    """One run of a config at a precision: per implementation its median seconds per step,
    median optimizer seconds (or None), the run's ceiling in FLOP/s and its copy bandwidth
    in bytes/s."""
    autocast = ((lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16"
                else nullcontext)
    contenders = make_contenders(name, *twins, precision, batch)
    machine = []
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    seconds = time_steps(contenders, batch, autocast, args.warmup,
                         args.steps or DEFAULT_STEPS[name],
                         lambda: machine.extend((gemm_ceiling(twins[0].config, batch, dtype),
                                                 copy_bandwidth())))
    medians = {}
    for implementation, results in seconds.items():
        optimizer_seconds = [o for _, o in results if o is not None]
        medians[implementation] = (statistics.median(s for s, _ in results),
                                   statistics.median(optimizer_seconds) if optimizer_seconds
                                   else None)
    return medians, *machine


def benchmark(args):
    """{(config, precision): [run results]} over args.runs runs, configs and precisions
    interleaved run by run, each measured in a fresh process (`measure_in_fresh_process`)."""
    setups = {name: checked_setup(name, args) for name in args.configs}
    precisions = ([] if args.no_fp32 else ["fp32"]) + (["bf16"] if args.bf16 else [])
    results = {(name, precision): [] for name in args.configs for precision in precisions}
    for run in range(args.runs):
        for name in args.configs:
            for precision in precisions:
                medians, ceiling, bandwidth = measure_in_fresh_process(name, precision, args)
                results[name, precision].append((medians, ceiling, bandwidth))
                print(f"run {run + 1}/{args.runs} {name} {precision}: ceiling "
                      f"{ceiling / 1e9:.0f} GFLOP/s, copy {bandwidth / 1e9:.1f} GB/s, s/step "
                      + ", ".join(
                          f"{k} {s:.3f}" for k, (s, _) in medians.items()), flush=True)
    return setups, results


def checked_setup(name, args):
    """(config, parameter count, batch) of a config, once its twins pass the parity check;
    the twins themselves are dropped (each measurement builds its own)."""
    ours, theirs = build_twins(name, args.seed)
    batch = config_batch(name, ours.config, args)
    check_initial_losses(name, ours, theirs, batch)
    return ours.config, sum(p.numel() for p in ours.parameters()), batch


def config_batch(name, config, args):
    """The config's batch, the same in every process (its own generator, seeded)."""
    return make_batch(config.vocab_size, BATCH_SIZE[name], args.max_seq_length,
                      torch.Generator().manual_seed(args.seed), full_rows=name == "recipe")


def measure_in_fresh_process(name, precision, args):
    """one_run of a config at a precision in a new process, as a user trains one model per
    process. Sharing one, transformers' 6-layer/384 bf16 step took 0.64-0.66 s in a process
    that had run the BERT-base rows before and 0.74-0.91 s in one that had not (2026-12-05),
    ours 0.28-0.34 s either way; likely memory that the earlier measurements freed, its
    pages already faulted in, serving the next ones' allocations (fixing glibc's mmap
    threshold at its 32 MB ceiling did not speed up a process that timed small alone)."""
    context = multiprocessing.get_context("spawn")  # a fork would inherit the heap
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(measure, name, precision, args).result()


def measure(name, precision, args):
    """one_run from scratch: the twins and the batch built again from the seed, with the
    threads and malloc setting asked for (a spawned process starts with torch's and glibc's
    defaults)."""
    torch.set_num_threads(args.threads)
    if args.reuse_freed_memory:
        utils.reuse_freed_memory()
    twins = build_twins(name, args.seed)
    return one_run(name, twins, config_batch(name, twins[0].config, args), precision, args)


# ----------------------------------------------------------------------------- report

def spread(values, form):
    values = sorted(values)
    median = statistics.median(values)
    if len(values) == 1:
        return form.format(median)
    return f"{form.format(median)} ({form.format(values[0])}-{form.format(values[-1])})"


def table_rows(setups, results):
    """Markdown rows: one per (config, precision, implementation), medians over runs."""
    rows = []
    for (name, precision), runs in results.items():
        config, parameters, batch = setups[name]
        flops = step_flops(config, batch)
        sequences = batch["input_ids"].shape[0]
        ceilings = [ceiling for _, ceiling, _ in runs]
        for implementation in runs[0][0]:
            seconds = [medians[implementation][0] for medians, _, _ in runs]
            speedups = [medians["transformers"][0] / medians[implementation][0]
                        for medians, _, _ in runs]
            shares = [flops / medians[implementation][0] / ceiling
                      for medians, ceiling, _ in runs]
            optimizer = [medians[implementation][1] / medians[implementation][0]
                         for medians, _, _ in runs if medians[implementation][1] is not None]
            floors = [LAMB_LEAST_BYTES * parameters / bandwidth / medians[implementation][0]
                      for medians, _, bandwidth in runs]
            rows.append(
                f"| {name} | {implementation} | {precision} | {spread(seconds, '{:.3f}')} "
                f"| {sequences / statistics.median(seconds):.1f} "
                f"| {flops / statistics.median(seconds) / 1e9:.0f} "
                f"| {spread([c / 1e9 for c in ceilings], '{:.0f}')} "
                f"| {spread([100 * s for s in shares], '{:.0f}%')} "
                f"| {'baseline' if implementation == 'transformers' else spread(speedups, '{:.2f}x')} "
                f"| {lamb_cells(optimizer, floors) if optimizer and 'LAMB' in implementation else '|'} |")
    return rows


def lamb_cells(optimizer_shares, floors):
    """The LAMB share of the step and the share that moving LAMB_LEAST_BYTES per parameter
    at the copy bandwidth would take: the least any LAMB with fp32 state can reach. One
    decimal: the goal for the share is a bound (under 10% of BERT-base's step)."""
    return (f"{spread([100 * o for o in optimizer_shares], '{:.1f}%')} "
            f"| {spread([100 * f for f in floors], '{:.1f}%')}")


def print_table(setups, results, args):
    print(f"\nOne pre-training step (forward, backward, optimizer step, zero_grad), train mode, "
          f"seq {args.max_seq_length}, {args.threads} CPU threads, torch {torch.__version__}, "
          f"transformers {transformers.__version__} (sdpa attention); median over {args.runs} "
          f"run(s), (lowest-highest). recipe: batch 64, LAMB, ours through run_pretraining's "
          f"Trainer.step; small/base: batch 8, AdamW (\"ours, LAMB\": our LAMB).\n")
    print("| config | implementation | precision | s/step | sequences/s | model GFLOP/s "
          "| ceiling GFLOP/s | share of ceiling | speed-up of ours | LAMB share of step "
          f"| LAMB floor ({LAMB_LEAST_BYTES} B/param at copy bandwidth) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in table_rows(setups, results):
        print(row)


def profile(args):
    """torch.profiler's top ops (self CPU time) of two of ours' steps per config."""
    from torch.profiler import profile as torch_profile
    for name in args.configs:
        ours, theirs = build_twins(name, args.seed)
        batch = config_batch(name, ours.config, args)
        precision = "bf16" if args.bf16 else "fp32"
        contenders = make_contenders(name, ours, theirs, precision, batch)
        contender = contenders["ours, LAMB" if name != "recipe" else "ours"]
        autocast = ((lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.bf16
                    else nullcontext)
        contender.model.train()
        for _ in range(max(args.warmup, 1)):
            contender.step(batch, autocast)
        with torch_profile() as recorded:
            for _ in range(2):
                contender.step(batch, autocast)
        print(f"\n{name} {precision}, ours (LAMB), 2 steps:")
        print(recorded.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main(args):
    torch.set_num_threads(args.threads)
    if args.reuse_freed_memory and not utils.reuse_freed_memory():
        sys.exit("--reuse_freed_memory: this is not Linux with glibc")
    if args.bf16:
        utils.warn_if_emulated("bf16", torch.device("cpu"))
    if args.profile:
        return profile(args)
    setups, results = benchmark(args)
    print_table(setups, results, args)
    return results


if __name__ == "__main__":
    main(parse_args())
