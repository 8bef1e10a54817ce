"""LDDL's Parquet shards through pretraining_data.LddlBatches and run_pretraining.main.

The shards are written here in exactly the layout LDDL 0.1.0's preprocess_bert_pretrain and
balance_dask_output produce with static masking (--masking):
- columns A, B (space-joined WordPieces of the two segments, masked tokens already
  replaced), is_random_next (bool), num_tokens (uint16, len(A) + len(B) + 3),
  masked_lm_positions (binary: numpy.save of a uint16 array of positions in
  [CLS] A [SEP] B [SEP]) and masked_lm_labels (space-joined original tokens);
- files shard-<i>.parquet, or shard-<i>.parquet_<bin> with an int64 bin_id column when
  binned; the balancer leaves every file of a set with n or n + 1 samples, and the loader
  asserts exactly that (min + 1 == max);
- .num_samples.json beside them: {file name: samples}.
"""

import io
import json
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("pyarrow", reason="pyarrow absent: pip install --no-deps lddl==0.1.0 pyarrow")
pytest.importorskip("lddl.torch", reason="LDDL absent: pip install --no-deps lddl==0.1.0 pyarrow")

import pyarrow as pa
import pyarrow.parquet as pq

import run_pretraining
from conftest import REPO, sample_documents, write_vocab
from pretraining_data import LddlBatches, Position, find_input_files
from tokenization import FullTokenizer, load_vocab

MAX_SEGMENT = 20  # WordPieces per segment: sequences stay under 48 tokens
BATCH = 8
SCHEMA = pa.schema([("A", pa.string()), ("B", pa.string()), ("is_random_next", pa.bool_()),
                    ("num_tokens", pa.uint16()), ("masked_lm_positions", pa.binary()),
                    ("masked_lm_labels", pa.string())])


# ----------------------------------------------------------------------------- writing shards

def make_samples(text, tokenizer, vocab_tokens, rng):
    """Sentence pairs of the text with static masking, as LDDL's preprocessor makes them.
    Each sample also keeps its unmasked segments under 'original' (not written)."""
    documents = [[tokenizer.tokenize(line)[:MAX_SEGMENT] for line in doc.split("\n") if line]
                 for doc in text.strip().split("\n\n")]
    samples = []
    for d, sentences in enumerate(documents):
        for i in range(len(sentences) - 1):
            a, b, is_random_next = sentences[i], sentences[i + 1], rng.random() < 0.5
            if is_random_next:
                other = documents[(d + rng.randrange(1, len(documents))) % len(documents)]
                b = other[rng.randrange(len(other))]
            if a and b:
                samples.append(mask_pair(a, b, is_random_next, vocab_tokens, rng))
    return samples


def mask_pair(a, b, is_random_next, vocab_tokens, rng):
    tokens = ["[CLS]", *a, "[SEP]", *b, "[SEP]"]
    candidates = [i for i, t in enumerate(tokens) if t not in ("[CLS]", "[SEP]")]
    positions = sorted(rng.sample(candidates, max(1, round(0.15 * len(tokens)))))
    masked = list(tokens)
    for p in positions:
        draw = rng.random()
        masked[p] = "[MASK]" if draw < 0.8 else tokens[p] if draw < 0.9 else rng.choice(vocab_tokens)
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(positions, dtype=np.uint16))
    return {"A": " ".join(masked[1:1 + len(a)]), "B": " ".join(masked[2 + len(a):-1]),
            "is_random_next": is_random_next, "num_tokens": len(tokens),
            "masked_lm_positions": buffer.getvalue(),
            "masked_lm_labels": " ".join(tokens[p] for p in positions),
            "original": tokens}


def write_balanced(folder, samples, num_files, suffix="", bin_id=None):
    """Spreads samples over num_files files of n or n + 1 samples (at least one of each);
    returns the {name: count} entries of .num_samples.json."""
    n = (len(samples) - 1) // num_files
    counts = [n + 1] + [n] * (num_files - 1)
    counts_by_name, start = {}, 0
    for i, count in enumerate(counts):
        rows = [{k: v for k, v in s.items() if k != "original"} for s in samples[start:start + count]]
        schema = SCHEMA
        if bin_id is not None:
            schema = schema.append(pa.field("bin_id", pa.int64()))
            rows = [{**row, "bin_id": bin_id} for row in rows]
        name = f"shard-{i}.parquet{suffix}"
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / name)
        counts_by_name[name] = count
        start += count
    return counts_by_name


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Vocabulary, tiny model config and the samples of the sample text."""
    folder = tmp_path_factory.mktemp("lddl")
    text = sample_documents(6, lines_per_document=20)
    vocab = write_vocab(folder / "vocab.txt", text)
    vocab_tokens = list(load_vocab(vocab))
    samples = make_samples(text, FullTokenizer(str(vocab)), vocab_tokens, random.Random(0))
    config = folder / "config.json"
    config.write_text(json.dumps({
        "vocab_size": len(vocab_tokens), "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 37, "max_position_embeddings": 64}))
    return folder, vocab, config, samples


@pytest.fixture(scope="module")
def unbinned(corpus):
    """4 files of 12 or 13 samples: 48 samples an epoch (the 49th is dropped by LDDL)."""
    folder, _, _, samples = corpus
    shards = folder / "phase1" / "unbinned" / "parquet"
    shards.mkdir(parents=True)
    counts = write_balanced(shards, samples[:49], 4)
    (shards / ".num_samples.json").write_text(json.dumps(counts))
    return shards


@pytest.fixture(scope="module")
def binned(corpus):
    """Two bins by length (<= 32 tokens and longer), 2 files each, bin id in the names."""
    folder, _, _, samples = corpus
    shards = folder / "phase2" / "bin_size_32" / "parquet"
    shards.mkdir(parents=True)
    counts = {}
    for bin_id, members in enumerate([[s for s in samples if s["num_tokens"] <= 32],
                                      [s for s in samples if s["num_tokens"] > 32]]):
        counts.update(write_balanced(shards, members[:17], 2, f"_{bin_id}", bin_id))
    (shards / ".num_samples.json").write_text(json.dumps(counts))
    return shards


# ----------------------------------------------------------------------------- checks

def first_batches(input_dir, vocab, count, tmp_path, num_workers=1, epoch=0, served=0):
    _, files = find_input_files(input_dir)
    source = LddlBatches(files, vocab, BATCH, local_rank=-1, world_size=1, seed=7,
                         position=Position(epoch=epoch, batch_index=served),
                         num_workers=num_workers,
                         log_dir=tmp_path / "lddl_log")
    stream = iter(source)
    batches = [next(stream) for _ in range(count)]
    source.close()
    return batches


def check_batch(batch, by_input, vocab_ids):
    """Every row against the sample it came from; returns the samples' originals."""
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "masked_lm_labels",
                          "next_sentence_labels"}
    rows, width = batch["input_ids"].shape
    longest = int(batch["attention_mask"].sum(1).max())
    assert width == -(-longest // 8) * 8  # padded to the batch's longest, a multiple of 8
    assert batch["next_sentence_labels"].shape == (rows,)
    for name in ("token_type_ids", "attention_mask", "masked_lm_labels"):
        assert batch[name].shape == (rows, width), name
    seen = []
    ids_to_tokens = {i: t for t, i in vocab_ids.items()}
    for r in range(rows):
        length = int(batch["attention_mask"][r].sum())
        assert batch["attention_mask"][r, :length].all()
        tokens = [ids_to_tokens[int(i)] for i in batch["input_ids"][r, :length]]
        assert (batch["input_ids"][r, length:] == 0).all()
        sample = by_input[" ".join(tokens)]
        len_a = len(sample["A"].split())
        segments = [0] * (len_a + 2) + [1] * (length - len_a - 2) + [0] * (width - length)
        assert batch["token_type_ids"][r].tolist() == segments
        positions = np.load(io.BytesIO(sample["masked_lm_positions"])).tolist()
        expected = torch.full((width,), -1)
        expected[positions] = torch.tensor([vocab_ids[sample["original"][p]] for p in positions])
        assert torch.equal(batch["masked_lm_labels"][r], expected)
        unmasked = [t for i, t in enumerate(sample["original"]) if i not in positions]
        assert unmasked == [t for i, t in enumerate(tokens) if i not in positions]
        assert batch["next_sentence_labels"][r].item() == int(sample["is_random_next"])
        seen.append(" ".join(sample["original"]))
    return seen


def index_by_input(samples):
    return {f"[CLS] {s['A']} [SEP] {s['B']} [SEP]": s for s in samples}


def test_unbinned_shards_yield_one_epoch_of_correct_batches(corpus, unbinned, tmp_path):
    _, vocab, _, samples = corpus
    vocab_ids = dict(load_vocab(vocab))
    batches = first_batches(unbinned, vocab, 48 // BATCH, tmp_path)
    seen = [text for batch in batches for text in check_batch(batch, index_by_input(samples),
                                                               vocab_ids)]
    assert len(set(seen)) == 48  # each of the epoch's samples once, in shuffled order
    assert seen != sorted(seen, key=[" ".join(s["original"]) for s in samples].index)
    labels = torch.cat([b["next_sentence_labels"] for b in batches])
    assert 0 < labels.sum() < len(labels)


def test_binned_shards_give_batches_of_one_bin_each(corpus, binned, tmp_path):
    _, vocab, _, samples = corpus
    vocab_ids = dict(load_vocab(vocab))
    batches = first_batches(binned, vocab, 4, tmp_path)
    for batch in batches:
        check_batch(batch, index_by_input(samples), vocab_ids)
        lengths = batch["attention_mask"].sum(1)
        assert bool((lengths <= 32).all()) or bool((lengths > 32).all())


def test_run_pretraining_trains_on_lddl_shards(corpus, unbinned, tmp_path):
    _, vocab, config, _ = corpus
    result = run_pretraining.main(run_pretraining.parse_args([
        "--input_dir", str(unbinned), "--config_file", str(config), "--output_dir",
        str(tmp_path), "--vocab_file", str(vocab), "--train_batch_size", str(BATCH),
        "--max_steps", "2", "--num_workers", "1", "--learning_rate", "1e-3",
        "--disable_progress_bar"]))
    assert result["step"] == 2 and np.isfinite(result["final_loss"])
    assert (tmp_path / "ckpt_2.pt").is_file()


def test_run_pretraining_finds_binned_shards(binned):
    assert find_input_files(binned)[0] == "parquet"


def test_checkpoint_records_the_lddl_epoch(corpus, unbinned, tmp_path):
    _, vocab, config, _ = corpus
    run_pretraining.main(run_pretraining.parse_args([
        "--input_dir", str(unbinned), "--config_file", str(config), "--output_dir",
        str(tmp_path), "--vocab_file", str(vocab), "--train_batch_size", str(BATCH),
        "--max_steps", "7", "--num_workers", "1", "--disable_progress_bar"]))  # 6 steps an epoch
    state = torch.load(tmp_path / "ckpt_7.pt", weights_only=True)
    assert (state["data_position"]["epoch"], state["data_position"]["batch_index"]) == (1, 1)


def test_a_resume_inside_an_epoch_skips_the_batches_it_served(corpus, unbinned, tmp_path):
    """Requeued runs shorter than an epoch would otherwise all train on its first batches."""
    _, vocab, _, _ = corpus
    uninterrupted = first_batches(unbinned, vocab, 9, tmp_path / "whole")
    for epoch, served in ((0, 3), (1, 2), (0, 6)):  # (0, 6): the epoch's last was served
        resumed = first_batches(unbinned, vocab, 2, tmp_path / f"resumed{epoch}{served}",
                                epoch=epoch, served=served)
        for batch, reference in zip(resumed, uninterrupted[6 * epoch + served:]):
            for name, tensor in batch.items():
                assert torch.equal(tensor, reference[name]), (epoch, served, name)


def test_a_position_in_a_later_epoch_starts_that_epochs_order(corpus, unbinned, tmp_path):
    """What a resume does: the batches from epoch 1 on are those an uninterrupted reader
    serves after its first epoch's 6, not epoch 0's again."""
    _, vocab, _, _ = corpus
    uninterrupted = first_batches(unbinned, vocab, 8, tmp_path / "whole")
    resumed = first_batches(unbinned, vocab, 2, tmp_path / "resumed", epoch=1)
    assert not torch.equal(uninterrupted[6]["input_ids"], uninterrupted[0]["input_ids"])
    for batch, reference in zip(resumed, uninterrupted[6:]):
        for name, tensor in batch.items():
            assert torch.equal(tensor, reference[name]), name


def test_lddl_batches_with_num_workers_0(corpus, unbinned, tmp_path):
    """--num_workers 0 (run_pretraining.py's default on the CPU) takes one worker, which LDDL
    needs: the same correct batches as asking for one."""
    _, vocab, _, samples = corpus
    vocab_ids = dict(load_vocab(vocab))
    inline = first_batches(unbinned, vocab, 2, tmp_path / "inline", num_workers=0)
    worker = first_batches(unbinned, vocab, 2, tmp_path / "worker", num_workers=1)
    for batch, reference in zip(inline, worker):
        check_batch(batch, index_by_input(samples), vocab_ids)
        assert batch.keys() == reference.keys()
        for name, tensor in batch.items():
            assert torch.equal(tensor, reference[name]), name


def test_shards_in_several_folders_are_refused_by_name(unbinned, binned):
    # LDDL would read one folder while the checks counted both (phase 2 beside phase 1).
    parent = unbinned.parents[2]
    assert binned.parents[2] == parent
    with pytest.raises(ValueError, match=f"--input_dir {parent} holds LDDL .parquet shards in "
                                         "2 folders .*: pass the one to train on"):
        find_input_files(parent)


def test_a_tokenizer_json_vocabulary_is_refused_for_lddl(unbinned, tmp_path):
    # LDDL reads --vocab_file line by line: a tokenizer.json would be a vocabulary of JSON.
    _, files = find_input_files(unbinned)
    with pytest.raises(ValueError, match="LDDL reads a vocab.txt .*, not a tokenizer.json"):
        LddlBatches(files, tmp_path / "tokenizer.json", BATCH, local_rank=-1, world_size=1,
                    seed=7, position=Position(), num_workers=1, log_dir=tmp_path)


# What Slurm does at pre-emption or the time limit: TERM to every process of the job step,
# the loader's workers included. The rank must see its flag and go on loading, then stop
# the workers (they ignore TERM) when it closes, or at exit after an error.
SIGNALLED_RANK = """
import os, signal, sys
from pathlib import Path
import utils
from pretraining_data import LddlBatches, Position, find_input_files
_, files = find_input_files(sys.argv[1])
source = LddlBatches(files, sys.argv[2], 8, local_rank=-1, world_size=1, seed=7,
                     position=Position(), num_workers=2, log_dir=Path(sys.argv[3]))
flag = utils.PreemptionFlag()
stream = iter(source)
next(stream)
workers = [w.pid for w in source.loader._iterator._workers]
for pid in workers + [os.getpid()]:
    os.kill(pid, signal.SIGTERM)
for _ in range(4):
    next(stream)  # still loading: the rank can save its checkpoint
print("flag", flag.received, flush=True)
if sys.argv[4] == "close":
    source.close()
    print("alive", [pid for pid in workers if os.path.exists(f"/proc/{pid}")], flush=True)
else:
    raise ValueError("an error before close(): the exit must not wait for the workers")
"""


@pytest.mark.parametrize("ending", ["close", "error"])
def test_a_rank_signalled_with_its_loader_workers_keeps_loading(corpus, unbinned, tmp_path,
                                                                ending):
    _, vocab, _, _ = corpus
    result = subprocess.run([sys.executable, "-c", SIGNALLED_RANK, str(unbinned), str(vocab),
                             str(tmp_path), ending], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert "flag SIGTERM" in result.stdout, result.stderr
    if ending == "close":
        assert result.returncode == 0 and "alive []" in result.stdout, result.stderr
    else:
        assert result.returncode == 1 and "ValueError: an error before close()" in result.stderr
