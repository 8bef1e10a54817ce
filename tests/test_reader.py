"""pretraining_data's HDF5 reader: each rank reads only its contiguous share and together
the ranks yield one process' batches, rows stay in their on-disk types in memory shared
with the rank, shards are checked against the run, the reader process closes cleanly
(also with a read in flight, and at exit without close) and dies with its rank, and
batches are page-locked when asked."""

import json
import mmap
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

import run_pretraining
from conftest import REPO
from pretraining_data import (
    LddlBatches,
    Position,
    PretrainingBatches,
    ReadRequest,
    ShardLimits,
    ShardReader,
    read_shard,
)

SEQ, PREDICTIONS, VOCAB = 16, 3, 1000
FIRST_ID = 5  # ids below are special tokens


def write_shard(path, rows, file_number=0, seq=SEQ, predictions=PREDICTIONS, chunk=16):
    """A shard in create_pretraining_data.py's dtypes whose rows say where they come from:
    input_ids[:, 1] = FIRST_ID + row, input_ids[:, 2] = FIRST_ID + file_number. Chunks
    of `chunk` rows, gzip and shuffle, as the real ones (smaller)."""
    rng = np.random.default_rng(file_number)
    ids = rng.integers(FIRST_ID, VOCAB, (rows, seq)).astype(np.int32)
    ids[:, 0], ids[:, 1], ids[:, 2] = 2, FIRST_ID + np.arange(rows), FIRST_ID + file_number
    positions = np.sort(rng.permuted(np.tile(np.arange(3, seq), (rows, 1)), axis=1)
                        [:, :predictions], axis=1).astype(np.int32)
    positions[::4, -1] = 0  # some rows with fewer predictions
    arrays = {"input_ids": ids, "input_mask": np.ones((rows, seq), np.int8),
              "segment_ids": (np.arange(seq) >= seq // 2).astype(np.int8)[None].repeat(rows, 0),
              "masked_lm_positions": positions,
              "masked_lm_ids": np.where(positions > 0, rng.integers(FIRST_ID, VOCAB,
                                                                    positions.shape), 0),
              "next_sentence_labels": rng.integers(0, 2, rows).astype(np.int8)}
    with h5py.File(path, "w") as f:
        for name, array in arrays.items():
            f.create_dataset(name, data=array.astype(np.int8 if array.dtype == np.int8 else
                                                     np.int32),
                             compression="gzip", compression_opts=1, shuffle=True,
                             chunks=(min(rows, chunk),) + array.shape[1:])
    return path


@pytest.fixture
def files(tmp_path):
    """Three shards of 150, 131 and 256 rows."""
    return [write_shard(tmp_path / f"part_training_{i}.hdf5", rows, i)
            for i, rows in enumerate((150, 131, 256))]


def origin(batch):
    """(file number, row) of each row of a batch."""
    ids = batch["input_ids"]
    return list(zip((ids[:, 2] - FIRST_ID).tolist(), (ids[:, 1] - FIRST_ID).tolist()))


def take(batches, count):
    stream = iter(batches)
    taken = [(next(stream), batches.position) for _ in range(count)]
    batches.close()
    return taken


# ----------------------------------------------------------------------------- order

@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_together_yield_the_batches_of_one_process(files, world_size):
    """Over two epochs (file boundaries and a new file order included): rank r's micro-batch
    is the r-th slice of one process' batch, at the same position."""
    micro_batch = 8 // world_size
    count = 2 * sum(len(read_shard(p)["input_ids"]) // 8 for p in files)
    alone = take(PretrainingBatches(files, 8, 0, 1, seed=5), count)
    ranks = [take(PretrainingBatches(files, micro_batch, rank, world_size, seed=5), count)
             for rank in range(world_size)]
    for step, (batch, position) in enumerate(alone):
        for key, tensor in batch.items():
            assert tensor.dtype == torch.int64
            assert torch.equal(torch.cat([ranks[r][step][0][key] for r in range(world_size)]),
                               tensor), (step, key)
        assert all(ranks[r][step][1] == position for r in range(world_size))
    assert (alone[-1][1].epoch, alone[-1][1].file_index) == (1, 2)  # the last of epoch 1


def rows_of_each_file(batches, count):
    """{(epoch, file number): [rows in the order taken]} of the first `count` batches."""
    seen = {}
    for batch, position in take(batches, count):
        for file_number, row in origin(batch):
            seen.setdefault((position.epoch, file_number), []).append(row)
    return seen


def test_each_rank_reads_one_contiguous_share_and_each_row_once(files):
    """Rank r of 4 takes, in every file and epoch, one run of consecutive rows (cyclically)
    of 1/4 of the file's whole global batches; the ranks' runs are disjoint and leave out
    only the N mod G rows; the left-out rows move between epochs."""
    batches_per_epoch = sum(len(read_shard(p)["input_ids"]) // 8 for p in files)
    shares = [rows_of_each_file(PretrainingBatches(files, 2, rank, 4, seed=1),
                                2 * batches_per_epoch) for rank in range(4)]
    left_out = {}
    for epoch, file_number in shares[0]:
        count = len(read_shard(files[file_number])["input_ids"])
        used = 8 * (count // 8)
        all_rows = []
        for share in shares:
            rows = sorted(share[(epoch, file_number)])
            assert len(rows) == used // 4
            gaps = np.diff(rows)  # consecutive, except one jump where the run wraps around
            assert (gaps == 1).sum() >= len(rows) - 2 and (gaps > 1).sum() <= 1
            all_rows += rows
        assert len(set(all_rows)) == used
        left_out[epoch, file_number] = set(range(count)) - set(all_rows)
    assert left_out[0, 0] != left_out[1, 0] and len(left_out[0, 0]) == 150 % 8


def test_a_rank_reads_a_quarter_of_the_file_with_four_ranks(tmp_path):
    path = write_shard(tmp_path / "large.hdf5", 4096, chunk=128)
    reads = []
    for world_size in (1, 4):
        batches = PretrainingBatches([path], 2, 1, world_size, seed=0)
        next(iter(batches))
        reads.append(batches.bytes_read)
        batches.close()
    if not reads[0]:
        pytest.skip("no /proc/self/io: read bytes are not counted here")
    size = path.stat().st_size
    assert 0.6 * size < reads[0] < 1.5 * size
    assert reads[1] < 0.45 * reads[0]  # 1/4 plus at most a chunk at each end


def test_resume_at_a_position_continues_the_stream(files):
    whole = take(PretrainingBatches(files, 4, 0, 2, seed=3), 100)
    start = whole[79][1]  # a position inside the second epoch
    assert start.epoch == 1 and start.batch_index > 0
    resumed = take(PretrainingBatches(files, 4, 0, 2, seed=3, position=start), 20)
    for (expected, position), (batch, resumed_position) in zip(whole[80:], resumed):
        assert origin(batch) == origin(expected) and resumed_position == position


def test_shared_rows_keep_their_on_disk_types_in_shared_memory(files):
    """The reader process hands over mapped memory, not pickled int64 copies."""
    reader = ShardReader(ShardLimits())
    request = ReadRequest(files[0], seed=0, epoch=0, file_index=0, micro_batch=3, rank=1,
                          world_size=2)
    reader.send(request)
    shard = reader.receive(request)
    reader.close()
    batches, ranges = request.row_ranges(150)
    assert shard.batches == batches == 150 // 6
    assert {key: shard.arrays[key].dtype.name for key in ("input_ids", "input_mask",
                                                          "next_sentence_labels")} == {
        "input_ids": "int32", "input_mask": "int8", "next_sentence_labels": "int8"}
    for array in shard.arrays.values():
        root = array
        while isinstance(root, np.ndarray):
            root = root.base
        assert isinstance(root.obj, mmap.mmap)  # a memoryview of the mapping
    rows = np.concatenate([np.arange(start, stop) for start, stop in ranges])
    assert (shard.arrays["input_ids"][:, 1] - FIRST_ID).tolist() == rows.tolist()
    # every micro-batch takes one row of each of its 3 runs of 25 rows
    assert sorted(shard.arrays["slots"][:, 1].tolist()) == list(range(25, 50))


# ----------------------------------------------------------------------------- checks

@pytest.mark.parametrize("limits, message", [
    (ShardLimits(max_seq_length=32), "holds sequences of 16 tokens, but --max_seq_length is "
                                     "32: point --input_dir at shards made with "
                                     "--max_seq_length 32"),
    (ShardLimits(max_predictions_per_seq=2), "has 3 predictions per sequence "
                                             r"\(masked_lm_positions\), more than "
                                             "--max_predictions_per_seq 2"),
    (ShardLimits(max_position_embeddings=12), "holds sequences of 16 tokens, more than the "
                                              "model's max_position_embeddings 12"),
    (ShardLimits(vocab_size=600), r"holds token id \d+ \(input_ids\), but the model's "
                                  "vocab_size is 600"),
])
def test_shards_that_do_not_fit_the_run_are_named(files, limits, message):
    batches = PretrainingBatches(files[:1], 4, 0, 1, seed=0, limits=limits)
    with pytest.raises(ValueError, match=f"pre-training shard {files[0]} {message}"):
        next(iter(batches))
    batches.close()


def test_fitting_limits_pass(files):
    limits = ShardLimits(SEQ, PREDICTIONS, VOCAB, SEQ)
    batches = PretrainingBatches(files, 4, 0, 1, seed=0, limits=limits)
    assert len(take(batches, 100)) == 100


@pytest.mark.parametrize("key, row, value, message", [
    ("masked_lm_ids", 7, VOCAB, rf"holds token id {VOCAB} \(masked_lm_ids\)"),
    ("input_ids", 140, -3, r"holds token id -3 \(input_ids\)"),
    ("masked_lm_positions", 3, SEQ, f"masked_lm_positions holds {SEQ}, outside its "
                                    f"sequences of {SEQ} tokens"),
])
def test_bad_values_are_found_by_the_reader(files, key, row, value, message):
    with h5py.File(files[0], "r+") as f:
        f[key][row, 1] = value
    batches = PretrainingBatches(files[:1], 150, 0, 1, seed=0, limits=ShardLimits(
        vocab_size=VOCAB))
    with pytest.raises(ValueError, match=message):
        next(iter(batches))
    batches.close()
    with pytest.raises(ValueError, match=message):
        read_shard(files[0], ShardLimits(vocab_size=VOCAB))


def tiny_run(tmp_path, data, *extra):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"vocab_size": VOCAB, "hidden_size": 32,
                                  "num_hidden_layers": 2, "num_attention_heads": 4,
                                  "intermediate_size": 37, "max_position_embeddings": 64}))
    return ["--input_dir", str(data), "--config_file", str(config), "--output_dir",
            str(tmp_path / "out"), "--max_seq_length", str(SEQ), "--max_predictions_per_seq",
            str(PREDICTIONS), "--train_batch_size", "4", "--learning_rate", "1e-3",
            "--max_steps", "2", "--disable_progress_bar", *extra]


def test_run_pretraining_refuses_phase1_shards_for_a_longer_max_seq_length(files, tmp_path):
    args = run_pretraining.parse_args(tiny_run(tmp_path, files[0].parent) +
                                      ["--max_seq_length", "32"])
    with pytest.raises(ValueError, match=f"{files[0].parent}.* holds sequences of 16 tokens, "
                                         f"but --max_seq_length is 32"):
        run_pretraining.main(args)


def test_run_pretraining_refuses_token_ids_beyond_the_config_vocabulary(files, tmp_path):
    args = run_pretraining.parse_args(tiny_run(tmp_path, files[0].parent))
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "vocab_size": 99}))
    with pytest.raises(ValueError, match=r"holds token id \d+ \(input_ids\), but the model's "
                                         r"vocab_size is 99 \(--config_file\)"):
        run_pretraining.main(args)


def test_make_batches_passes_the_limits_and_pins_for_cuda(files, tmp_path, monkeypatch):
    made = []
    monkeypatch.setattr(run_pretraining, "PretrainingBatches",
                        lambda *args, **kwargs: made.append((args, kwargs)))
    args = run_pretraining.parse_args(tiny_run(tmp_path, files[0].parent))
    for device in ("cpu", "cuda"):
        distributed = SimpleNamespace(rank=0, world_size=1, local_rank=-1,
                                      device=torch.device(device))
        run_pretraining.make_batches(args, distributed, 4, Position())
    assert [kwargs["pin_memory"] for _, kwargs in made] == [False, True]
    assert made[0][0][6] == ShardLimits(SEQ, PREDICTIONS, VOCAB, 64)


def test_lddl_batches_are_checked_for_width_and_vocabulary():
    source = object.__new__(LddlBatches)  # the check alone: LDDL itself is not needed
    source.folder, source.vocab_file = "phase2/parquet", "vocab.txt"
    source.limits = ShardLimits(max_seq_length=32, vocab_size=100, max_position_embeddings=64)
    ids = torch.zeros(2, 32, dtype=torch.int64)
    source._check({"input_ids": ids, "labels": ids - 1})
    with pytest.raises(ValueError, match="phase2/parquet gave a batch of 40 tokens per "
                                         "sequence, more than --max_seq_length 32"):
        source._check({"input_ids": torch.zeros(2, 40, dtype=torch.int64),
                       "labels": torch.zeros(2, 40, dtype=torch.int64)})
    ids[1, 3] = 100
    with pytest.raises(ValueError, match="gave token id 100, but the model's vocab_size is "
                                         "100 .*--vocab_file vocab.txt"):
        source._check({"input_ids": ids, "labels": ids})


# ----------------------------------------------------------------------------- processes

SLOW_READER = """
import os, sys, time
from pathlib import Path
import pretraining_data
if sys.argv[1] == "slow":  # every read after the first takes a minute
    fast = pretraining_data.read_share
    def slow(request, *options):
        if request.file_index:
            time.sleep(60)
        return fast(request, *options)
    pretraining_data.read_share = slow
batches = pretraining_data.PretrainingBatches([Path(p) for p in sys.argv[3:]], 4, 0, 1, 0)
next(iter(batches))  # the second file is being read now
print(batches.reader.process.pid, flush=True)
if sys.argv[2] == "close":
    batches.close()
    batches.close()
elif sys.argv[2] == "kill":
    os.kill(os.getpid(), 9)
"""


def run_script(*argv, timeout=30):
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", SLOW_READER, *map(str, argv)], cwd=REPO,
                            capture_output=True, text=True, timeout=timeout, check=False)
    return result, time.monotonic() - started


def gone(pid, within=5.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("ending", ["close", "exit"])
def test_the_reader_stops_at_once_with_a_read_in_flight(files, ending):
    """close() with the next file half read (or interpreter exit without close) kills and
    reaps the reader at once, and nothing is printed."""
    for _ in range(2):
        result, seconds = run_script("slow", ending, *files[:2])
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert seconds < 20  # not the minute the read would take
        assert gone(int(result.stdout))


def test_the_reader_dies_with_its_rank(files):
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    result, _ = run_script("slow", "kill", *files[:2])
    assert result.returncode == -signal.SIGKILL
    assert gone(int(result.stdout))


def test_short_runs_exit_without_a_traceback(files, tmp_path):
    """The 2-step run that once printed 'OSError: [Errno 9] Bad file descriptor' at exit."""
    for attempt in range(3):
        output = tmp_path / f"run{attempt}"
        argv = tiny_run(output.parent, files[0].parent)
        argv[argv.index("--output_dir") + 1] = str(output)
        result = subprocess.run([sys.executable, "run_pretraining.py", *argv], cwd=REPO,
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        for sign in ("Traceback", "Error", "Exception ignored"):
            assert sign not in result.stderr, result.stderr


# ----------------------------------------------------------------------------- pinning

@pytest.mark.skipif(not torch.cuda.is_available(), reason="page-locked memory needs CUDA")
def test_batches_are_page_locked_when_asked(files):
    batch, _ = take(PretrainingBatches(files, 4, 0, 1, seed=0, pin_memory=True), 1)[0]
    assert all(tensor.is_pinned() for tensor in batch.values())
    on_gpu = {key: tensor.to("cuda", non_blocking=True) for key, tensor in batch.items()}
    torch.cuda.synchronize()
    assert all(torch.equal(on_gpu[key].cpu(), batch[key]) for key in batch)


def test_batches_are_not_page_locked_by_default(files):
    batch, _ = take(PretrainingBatches(files, 4, 0, 1, seed=0), 1)[0]
    assert not any(tensor.is_pinned() for tensor in batch.values())
