"""Throughput of one rank's HDF5 reader (pretraining_data.PretrainingBatches) on CPU, with
world sizes 1, 8 and 64 simulated: the benchmark is rank W // 2 of W and reads that rank's
share of every file, exactly as it would in a job of W processes.

    python bench/bench_reader.py [--rows_per_file 131072] [--files 2] [--world_sizes 1 8 64]

How it is measured: synthetic shards are written first, in create_pretraining_data.py's
layout (NVIDIA's on-disk dtypes, gzip level 1 with the shuffle filter, chunks of 2048
rows), at seq 128 with 20 predictions: 90% of the rows full length and 10% shorter (BERT's
short_seq_prob), token ids drawn with Zipf-like frequencies over a 30522-token vocabulary so
that they compress about as real text does. For each world size a fresh reader (its
background process included) is started and iterated until at least --sequences of this
rank's micro-batches (--micro_batch rows each, seq 128) have been taken, whole epochs over
all files; the clock runs from the reader's construction to the first micro-batch of the
epoch after, so the first file's read, which nothing overlaps, counts. Sequences/s per rank = sequences taken /
that time. MB read per rank = bytes the reader process read from the shard files (rchar of
/proc/self/io around each read, Linux) per epoch; a reader without that count (the one
before this benchmark existed) read whole files, and the table then shows the files' sizes.
The page cache is warm (the files were just written): this measures decompression and batch
assembly, not the file system. Goal: at least 20,000 sequences/s per rank, independent of W.

Measured with the defaults and --sequences 8192 (2 shards, 69 MB; a 2-core machine shared
with other jobs, so the numbers are rough):

    world size   before: seq/s, MB read per rank   after: seq/s, MB read per rank
             1           23,459      69.0                  129,774      70.1
             8            1,342      69.0                   70,478       9.7
            64              187      69.0                   58,533       2.2

Before, every rank read, decompressed and pickled (as int64) every file; after, a rank
reads its 1/W (plus the chunks its share begins and ends in) and receives it in shared
memory. What still grows with W is the fixed cost per file (opening it, the reader's
answer), over fewer sequences.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from create_pretraining_data import SCHEMA  # noqa: E402
from pretraining_data import PretrainingBatches  # noqa: E402

VOCAB_SIZE, FIRST_WORDPIECE = 30522, 999  # BERT's uncased vocabulary: [unused*] come first


def synthetic_shard(path, rows, seq, predictions, rng):
    """One shard shaped like create_pretraining_data.py's output (see the docstring)."""
    lengths = np.where(rng.random(rows) < 0.9, seq, rng.integers(10, seq, rows))
    weights = 1.0 / np.arange(10, VOCAB_SIZE - FIRST_WORDPIECE + 10)
    ids = rng.choice(np.arange(FIRST_WORDPIECE, VOCAB_SIZE), size=(rows, seq),
                     p=weights / weights.sum()).astype(np.int32)
    columns = np.arange(seq)[None, :]
    real = columns < lengths[:, None]
    ids[~real] = 0
    ids[:, 0] = 101
    second = columns >= (lengths // 2)[:, None]
    masked = np.minimum(predictions, np.maximum(1, (lengths * 0.15).round().astype(int)))
    keys = rng.random((rows, seq)) + (~real | (columns == 0))  # [CLS] and padding last
    chosen = np.argsort(keys, axis=1)[:, :predictions]
    chosen[np.arange(predictions)[None, :] >= masked[:, None]] = seq  # unused slots
    positions = np.sort(chosen, axis=1).astype(np.int32)  # real positions first, sorted
    positions[positions == seq] = 0
    arrays = {"input_ids": ids, "input_mask": real.astype(np.int8),
              "segment_ids": (second & real).astype(np.int8),
              "masked_lm_positions": positions,
              "masked_lm_ids": np.where(positions > 0, np.take_along_axis(ids, positions, 1), 0),
              "next_sentence_labels": rng.integers(0, 2, rows)}
    with h5py.File(path, "w") as f:
        for name, dtype in SCHEMA.items():
            array = arrays[name]
            f.create_dataset(name, data=array.astype(dtype), compression="gzip",
                             compression_opts=1, shuffle=True, track_times=False,
                             chunks=(min(rows, 2048),) + array.shape[1:])
    return path


def measure(files, world_size, micro_batch, sequences):
    """(sequences/s, MB read per epoch) of rank world_size // 2 of world_size."""
    started = time.perf_counter()
    batches = PretrainingBatches(files, micro_batch, world_size // 2, world_size, seed=0)
    stream, taken, epochs, read = iter(batches), 0, 0, None
    while True:
        read = getattr(batches, "bytes_read", None)  # before the next epoch's first file
        batch = next(stream)
        if batches.position.epoch > epochs:  # the first micro-batch of the next epoch
            epochs = batches.position.epoch
            if taken >= sequences:
                break
        taken += len(batch["input_ids"])
    seconds = time.perf_counter() - started
    batches.close()
    if read is None:  # a reader without the count reads whole files
        read = epochs * sum(path.stat().st_size for path in files)
    return taken / seconds, read / epochs / 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows_per_file", type=int, default=131072)
    parser.add_argument("--files", type=int, default=2)
    parser.add_argument("--micro_batch", type=int, default=64)
    parser.add_argument("--sequences", type=int, default=32768,
                        help="take at least this many sequences (whole epochs)")
    parser.add_argument("--world_sizes", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--predictions", type=int, default=20)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        files = [synthetic_shard(Path(folder) / f"bench_training_{i}.hdf5", args.rows_per_file,
                                 args.seq, args.predictions, rng) for i in range(args.files)]
        megabytes = sum(path.stat().st_size for path in files) / 1e6
        print(f"{args.files} shards x {args.rows_per_file} rows, seq {args.seq}, "
              f"{megabytes:.1f} MB on disk; micro-batch {args.micro_batch}")
        print(f"{'world size':>10} {'sequences/s per rank':>21} {'MB read per rank':>17}")
        for world_size in args.world_sizes:
            rate, read = measure(files, world_size, args.micro_batch, args.sequences)
            print(f"{world_size:>10} {rate:>21,.0f} {read:>17.1f}")


if __name__ == "__main__":
    main()
