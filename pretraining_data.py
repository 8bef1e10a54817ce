"""Pre-training batches for run_pretraining.py: HDF5 shards (create_pretraining_data.py's
or NVIDIA's) with an exact, resumable position, or LDDL's Parquet shards.

HDF5 order: epoch e visits the shard files in an order drawn from (seed, e) and each file's
instances in an order drawn from (seed, e, file). Global batch k of a file is the next
`micro_batch * world_size` instances of that order; rank r takes the r-th slice. The order is
thus the same for any number of ranks, which makes N processes equal to one process with the
N-fold batch. A resume continues at the same instance only with the same global batch
(number of GPUs x micro-batch); with another one it continues at the same batch number of
the same file. A file's last partial global batch is dropped. The next file is read and
decompressed by a background process while the current one trains.

Deliberate deviations from NVIDIA's loader:
- The position (epoch, file, batch) is three integers in the checkpoint, not a pickled
  DataLoader; resume continues exactly at the next batch.
- Every rank reads every file and keeps its own rows (BERT's input rate is a few MB/s, far
  below what a core decompresses), instead of each rank owning whole files.
- LDDL shards resume at epoch granularity (as NVIDIA's LDDL path does).
"""

import ctypes
import logging
import multiprocessing
import os
import re
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

KEYS = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
        "next_sentence_labels")


def find_input_files(input_dir):
    """('hdf5', files) or ('parquet', files) found in input_dir; a clear error otherwise.
    HDF5 files named *training* are taken alone when there are any (NVIDIA's layout)."""
    folder = Path(input_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"--input_dir {input_dir} is not a directory")
    hdf5 = sorted(p for p in folder.iterdir() if p.suffix in (".hdf5", ".h5") and p.is_file())
    training = [p for p in hdf5 if "training" in p.name]
    if training:  # NVIDIA's bertPrep writes its test shards beside them; its loader skips them
        return "hdf5", training
    if hdf5:
        return "hdf5", hdf5
    # LDDL names binned (phase 2) shards shard-<i>.parquet_<bin>.
    parquet = sorted(p for p in folder.rglob("*") if re.search(r"\.parquet(_\d+)?$", p.name))
    if parquet:
        return "parquet", parquet
    raise FileNotFoundError(f"--input_dir {input_dir} holds no .hdf5 files (from "
                            f"create_pretraining_data.py) and no LDDL .parquet shards")


def read_shard(path, max_pred_length=None):
    """All six arrays of one HDF5 shard as int64 numpy arrays; errors name the file."""
    try:
        with h5py.File(path, "r") as f:
            missing = [key for key in KEYS if key not in f]
            if missing:
                raise ValueError(f"pre-training shard {path} lacks datasets {missing}")
            arrays = {key: np.asarray(f[key][:], dtype=np.int64) for key in KEYS}
    except OSError as e:
        raise ValueError(f"pre-training shard {path} cannot be read (truncated or not "
                         f"HDF5?): {e}") from None
    count = len(arrays["input_ids"])
    if any(len(a) != count for a in arrays.values()):
        raise ValueError(f"pre-training shard {path}: datasets have different lengths")
    width = arrays["masked_lm_positions"].shape[1]
    if max_pred_length is not None and width > max_pred_length:
        raise ValueError(f"pre-training shard {path} has {width} predictions per sequence, "
                         f"more than --max_predictions_per_seq {max_pred_length}")
    return arrays


def masked_lm_labels(input_ids, positions, ids):
    """Labels [B, T]: the original token at masked positions, -1 elsewhere. Padding in
    `positions` is 0, which never is a real mask ([CLS] sits there)."""
    labels = np.full_like(input_ids, -1)
    valid = positions > 0
    rows = np.nonzero(valid)[0]
    labels[rows, positions[valid]] = ids[valid]
    return labels


@dataclass
class Position:
    """Where the data stream stands: the next batch to yield."""
    epoch: int = 0
    file_index: int = 0
    batch_index: int = 0


class PretrainingBatches:
    """Iterator of this rank's micro-batches (dicts of tensors) over HDF5 shards."""

    def __init__(self, files, micro_batch, rank, world_size, seed, position=None,
                 max_pred_length=None):
        self.files = list(files)
        self.micro_batch, self.rank, self.world_size = micro_batch, rank, world_size
        self.seed, self.max_pred_length = seed, max_pred_length
        self.position = position or Position()
        self.pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"),
                                        initializer=follow_rank, initargs=(os.getpid(),))
        self.prefetched = None

    def file_order(self, epoch):
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.files))

    def _submit(self, epoch, file_index):
        path = self.files[self.file_order(epoch)[file_index]]
        return (epoch, file_index), self.pool.submit(read_shard, path, self.max_pred_length)

    def _next_file(self, epoch, file_index):
        return (epoch, file_index + 1) if file_index + 1 < len(self.files) else (epoch + 1, 0)

    def _load(self, epoch, file_index):
        """This file's arrays (prefetched when possible) and its instance order; starts
        reading the following file in the background."""
        if self.prefetched is None or self.prefetched[0] != (epoch, file_index):
            self.prefetched = self._submit(epoch, file_index)
        arrays = self.prefetched[1].result()
        self.prefetched = self._submit(*self._next_file(epoch, file_index))
        order = np.random.default_rng([self.seed, epoch, file_index]).permutation(
            len(arrays["input_ids"]))
        return arrays, order

    def __iter__(self):
        global_batch = self.micro_batch * self.world_size
        files_without_batch = 0
        while True:
            position = self.position
            arrays, order = self._load(position.epoch, position.file_index)
            batches_in_file = len(order) // global_batch
            files_without_batch = 0 if batches_in_file else files_without_batch + 1
            if files_without_batch == len(self.files):  # it would read the files forever
                raise ValueError(f"no input file holds a full global batch of {global_batch} "
                                 f"instances ({self.micro_batch} per micro-batch x "
                                 f"{self.world_size} process(es)); the first is "
                                 f"{self.files[0]}: lower --train_batch_size or write larger "
                                 "shards")
            for batch_index in range(position.batch_index, batches_in_file):
                start = batch_index * global_batch + self.rank * self.micro_batch
                rows = order[start:start + self.micro_batch]
                self.position = Position(position.epoch, position.file_index, batch_index + 1)
                yield to_batch({key: array[rows] for key, array in arrays.items()})
            epoch, file_index = self._next_file(position.epoch, position.file_index)
            self.position = Position(epoch, file_index, 0)

    def close(self):
        self.pool.shutdown(wait=False, cancel_futures=True)


def follow_rank(rank_pid):
    """Initializer of the background reader, forked from its rank: it leaves the signals
    the rank handles to the rank (Slurm sends TERM/USR1 to every process of a job step), and
    dies with the rank (Linux PR_SET_PDEATHSIG) instead of living on as an orphan that holds
    the job's output open when the rank is killed."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != rank_pid:  # the rank was gone before prctl
        os._exit(1)


def to_batch(arrays):
    """Numpy arrays of a shard's rows -> the tensors BertForPreTraining takes."""
    labels = masked_lm_labels(arrays["input_ids"], arrays["masked_lm_positions"],
                              arrays["masked_lm_ids"])
    return {"input_ids": torch.from_numpy(arrays["input_ids"]),
            "token_type_ids": torch.from_numpy(arrays["segment_ids"]),
            "attention_mask": torch.from_numpy(arrays["input_mask"]),
            "masked_lm_labels": torch.from_numpy(labels),
            "next_sentence_labels": torch.from_numpy(arrays["next_sentence_labels"])}


class LddlBatches:
    """Batches from LDDL's balanced Parquet shards through lddl.torch (pip install
    --no-deps lddl==0.1.0 pyarrow), renamed to BertForPreTraining's arguments. The position
    counts finished passes (LDDL resumes at epoch granularity)."""

    def __init__(self, files, vocab_file, micro_batch, local_rank, world_size, seed,
                 position, num_workers, log_dir):
        try:
            from lddl.torch import get_bert_pretrain_data_loader
        except ImportError:
            raise ImportError(f"{files[0].parent} holds Parquet shards, which need LDDL: "
                              f"pip install --no-deps lddl==0.1.0 pyarrow") from None
        if vocab_file is None:
            raise ValueError("LDDL Parquet shards need --vocab_file (LDDL tokenizes at load time)")
        # LDDL keeps its workers alive between epochs, which needs at least one.
        num_workers = max(1, num_workers)
        shard_sets = {re.sub(r"_\d+$", "", f.name) for f in files}
        if len(shard_sets) % (world_size * num_workers):
            raise ValueError(f"{files[0].parent}: LDDL needs the number of shards "
                             f"({len(shard_sets)}) to be divisible by processes x loader "
                             f"workers ({world_size} x {num_workers}); change --num_workers "
                             f"or re-balance the shards")
        self.position = Position(epoch=position.epoch)
        self.loader = get_bert_pretrain_data_loader(
            str(files[0].parent), local_rank=max(local_rank, 0), vocab_file=str(vocab_file),
            data_loader_kwargs={"batch_size": micro_batch, "num_workers": num_workers,
                                "pin_memory": torch.cuda.is_available()},
            base_seed=seed, log_dir=str(log_dir), log_level=logging.WARNING,
            start_epoch=position.epoch)

    def __iter__(self):
        while True:
            for batch in self.loader:
                yield {"input_ids": batch["input_ids"],
                       "token_type_ids": batch["token_type_ids"],
                       "attention_mask": batch["attention_mask"],
                       "masked_lm_labels": batch["labels"],
                       "next_sentence_labels": batch["next_sentence_labels"]}
            self.position = Position(epoch=self.position.epoch + 1)

    def close(self):
        pass
