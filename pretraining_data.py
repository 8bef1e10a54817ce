"""Pre-training batches for run_pretraining.py: HDF5 shards (create_pretraining_data.py's
or NVIDIA's) with an exact, resumable position, or LDDL's Parquet shards.

HDF5 order: epoch e visits the shard files in an order drawn from (seed, e). A file of N
rows read with a global batch of G = micro_batch x world_size rows holds B = N // G global
batches; the other N mod G rows (the last partial global batch) are dropped. From an offset
drawn from (seed, e, file) on, the file's rows are cut into G contiguous runs of B rows
(wrapping around its end), one per slot of the global batch, and global batch k takes from
run j its row p_j(k), p_j a permutation drawn from (seed, e, file, j). Rank r's micro-batch
is slots r*micro_batch ... (r+1)*micro_batch - 1, so each rank reads one contiguous 1/W of
the file (two pieces where it wraps) and decompresses nothing else. The global batches
depend on G, not on the number of ranks, which makes N processes equal to one process with
the N-fold batch; gradient accumulation takes consecutive global batches (so 2 accumulated
micro-batches of 4 are other rows than one of 8). (create_pretraining_data.py, as NVIDIA's,
writes its instances shuffled, so neighbouring rows are a random sample already.) A resume
continues at the same instance only with the same global batch (number of GPUs x
micro-batch); with another one it continues at the same batch number of the same file. The
next file is read by a background process while the current one trains.

Deliberate deviations from NVIDIA's loader:
- The position (epoch, file, batch) is three integers in the checkpoint, not a pickled
  DataLoader; resume continues exactly at the next batch.
- Each rank reads only its own contiguous 1/W of every file. NVIDIA's ranks own whole
  files instead, which changes the order with the number of GPUs (and wants at least as
  many files as GPUs); here the order stays the same for any number of GPUs with the same
  global batch, at the cost of every rank opening every file. Within a file, a global
  batch takes one row of each of G runs of the shuffled rows rather than any G rows.
- The rows stay in their on-disk integer types (int32/int8) until a micro-batch is built,
  and the background process hands them over in memory shared with the rank (an anonymous
  file passed over a socket), not as pickled int64 arrays.
- Shards are checked against the run: their width must equal --max_seq_length and fit the
  model's max_position_embeddings, masked_lm_positions may be at most
  --max_predictions_per_seq wide, and token ids must be below the config's vocab_size
  (NVIDIA's loader trains whatever the shards hold; a bad id surfaces as a device-side
  assert).
- With dynamic masking (masking.DynamicMasking) the reader process masks its rows anew for
  each epoch, keyed by (file, row on disk), before the rank sees them.
- LDDL shards resume inside their epoch, skipping the batches already served (NVIDIA's
  LDDL path restarts the epoch: requeued runs shorter than one replay its start).
"""

import logging
import mmap
import multiprocessing
import multiprocessing.reduction
import multiprocessing.util
import os
import re
import signal
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

import utils
from tokenization import is_tokenizer_json

KEYS = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
        "next_sentence_labels")
SEQUENCE_KEYS = ("input_ids", "input_mask", "segment_ids")
PREDICTION_KEYS = ("masked_lm_positions", "masked_lm_ids")


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
    folders = sorted({str(p.parent) for p in parquet})
    if len(folders) > 1:  # LDDL is handed one folder: shards in others would be counted, unread
        raise ValueError(f"--input_dir {input_dir} holds LDDL .parquet shards in "
                         f"{len(folders)} folders ({', '.join(folders[:3])}"
                         f"{', ...' if len(folders) > 3 else ''}): pass the one to train on")
    if parquet:
        return "parquet", parquet
    raise FileNotFoundError(f"--input_dir {input_dir} holds no .hdf5 files (from "
                            f"create_pretraining_data.py) and no LDDL .parquet shards")


# ----------------------------------------------------------------------------- checks

@dataclass(frozen=True)
class ShardLimits:
    """What the run accepts from a shard; None leaves a limit unchecked."""
    max_seq_length: int | None = None           # --max_seq_length: the width must equal it
    max_predictions_per_seq: int | None = None  # --max_predictions_per_seq: at most
    vocab_size: int | None = None               # the config's: ids must be below it
    max_position_embeddings: int | None = None  # the config's: the width must fit


def check_layout(f, path, limits):
    """The six datasets of an open shard agree with each other and with the run's limits;
    returns the number of rows. Errors name the file and both numbers."""
    missing = [key for key in KEYS if key not in f]
    if missing:
        raise ValueError(f"pre-training shard {path} lacks datasets {missing}")
    shapes = {key: f[key].shape for key in KEYS}
    count = shapes["input_ids"][0]
    if any(shape[0] != count for shape in shapes.values()):
        raise ValueError(f"pre-training shard {path}: datasets have different lengths "
                         f"{ {key: shape[0] for key, shape in shapes.items()} }")
    not_integer = [key for key in KEYS if not np.issubdtype(f[key].dtype, np.integer)]
    if not_integer:
        raise ValueError(f"pre-training shard {path}: datasets {not_integer} do not hold "
                         f"integers")
    width, predictions = shapes["input_ids"][1:], shapes["masked_lm_positions"][1:]
    if len(width) != 1 or len(predictions) != 1 or shapes["next_sentence_labels"] != (count,) \
            or any(shapes[key] != shapes["input_ids"] for key in SEQUENCE_KEYS) \
            or shapes["masked_lm_ids"] != shapes["masked_lm_positions"]:
        raise ValueError(f"pre-training shard {path}: the datasets' shapes {shapes} are not "
                         f"create_pretraining_data.py's ([N, seq] x 3, [N, predictions] x 2, "
                         f"[N])")
    check_widths(path, width[0], predictions[0], limits)
    return count


def check_widths(path, width, predictions, limits):
    if limits.max_seq_length is not None and width != limits.max_seq_length:
        raise ValueError(f"pre-training shard {path} holds sequences of {width} tokens, but "
                         f"--max_seq_length is {limits.max_seq_length}: point --input_dir at "
                         f"shards made with --max_seq_length {limits.max_seq_length} (phase 1: "
                         f"128, phase 2: 512), or pass --max_seq_length {width}")
    if limits.max_position_embeddings is not None and width > limits.max_position_embeddings:
        raise ValueError(f"pre-training shard {path} holds sequences of {width} tokens, more "
                         f"than the model's max_position_embeddings "
                         f"{limits.max_position_embeddings} (--config_file)")
    if limits.max_predictions_per_seq is not None and \
            predictions > limits.max_predictions_per_seq:
        raise ValueError(f"pre-training shard {path} has {predictions} predictions per "
                         f"sequence (masked_lm_positions), more than --max_predictions_per_seq "
                         f"{limits.max_predictions_per_seq}: pass --max_predictions_per_seq "
                         f"{predictions} or use shards made with "
                         f"{limits.max_predictions_per_seq}")


def check_values(arrays, path, limits):
    """Token ids within the vocabulary and masked positions within the sequence, over the
    rows read (a min and a max per array: cheap next to decompressing them)."""
    if not len(arrays["input_ids"]):
        return
    width = arrays["input_ids"].shape[1]
    low, high = arrays["masked_lm_positions"].min(), arrays["masked_lm_positions"].max()
    if low < 0 or high >= width:
        raise ValueError(f"pre-training shard {path}: masked_lm_positions holds "
                         f"{low if low < 0 else high}, outside its sequences of {width} tokens")
    if limits.vocab_size is None:
        return
    for key in ("input_ids", "masked_lm_ids"):
        low, high = arrays[key].min(), arrays[key].max()
        if low < 0 or high >= limits.vocab_size:
            raise ValueError(f"pre-training shard {path} holds token id "
                             f"{low if low < 0 else high} ({key}), but the model's vocab_size "
                             f"is {limits.vocab_size} (--config_file): the shards were made with "
                             f"another vocabulary; use the config that goes with it")


def open_shard(path):
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"pre-training shard {path} cannot be read (truncated or not "
                         f"HDF5?): {e}") from None


def read_shard(path, limits=ShardLimits()):
    """All six arrays of one HDF5 shard in their on-disk integer types, checked against
    `limits`; errors name the file."""
    with open_shard(path) as f:
        check_layout(f, path, limits)
        arrays = {key: f[key][:] for key in KEYS}
    check_values(arrays, path, limits)
    return arrays


# ----------------------------------------------------------------------------- order

@dataclass
class Position:
    """Where the data stream stands: the next batch to yield."""
    epoch: int = 0
    file_index: int = 0
    batch_index: int = 0


@dataclass(frozen=True)
class ReadRequest:
    """One rank's share of the file_index-th file of an epoch (see the module docstring)."""
    path: Path
    seed: int
    epoch: int
    file_index: int
    micro_batch: int
    rank: int
    world_size: int
    file_id: int = 0  # the file's place among the run's input files: instances' identity

    def row_ranges(self, count):
        """(global batches in the file, [(start, stop)] rows of this rank on disk)."""
        batches = count // (self.micro_batch * self.world_size)
        if not batches:
            return 0, []
        offset = int(np.random.default_rng([self.seed, self.epoch, self.file_index])
                     .integers(count))
        start = (offset + self.rank * self.micro_batch * batches) % count
        stop = start + self.micro_batch * batches
        if stop <= count:
            return batches, [(start, stop)]
        return batches, [(start, count), (0, stop - count)]

    def slots(self, batches):
        """[batches, micro_batch]: the rows (indices into this rank's share) of each of its
        micro-batches; column i is run r*micro_batch + i of the file."""
        table = np.empty((batches, self.micro_batch), dtype=np.int64)
        first_slot = self.rank * self.micro_batch
        for i in range(self.micro_batch):
            rng = np.random.default_rng([self.seed, self.epoch, self.file_index, first_slot + i])
            table[:, i] = i * batches + rng.permutation(batches)
        return table


# ----------------------------------------------------------------------------- reader process

@dataclass
class SharedShard:
    """A rank's share of one file, as the reader process laid it out in shared memory:
    fields maps each dataset (and 'slots') to (dtype, shape, byte offset)."""
    path: Path
    batches: int
    size: int = 0
    fields: dict = field(default_factory=dict)
    bytes_read: int = 0
    arrays: dict = field(default_factory=dict, repr=False)  # filled in the rank

    def micro_batch(self, batch_index):
        """The on-disk arrays of this rank's rows of global batch batch_index."""
        rows = self.arrays["slots"][batch_index]
        return {key: self.arrays[key][rows] for key in KEYS}


def layout(datasets, rows, batches, micro_batch):
    """(fields, size) of a share: each array 64-byte aligned."""
    fields, offset = {}, 0
    shapes = {key: ((rows,) + dataset.shape[1:], dataset.dtype.newbyteorder("="))
              for key, dataset in datasets.items()}
    shapes["slots"] = ((batches, micro_batch), np.dtype(np.int64))
    for key, (shape, dtype) in shapes.items():
        fields[key] = (dtype.str, shape, offset)
        offset += -(-int(np.prod(shape)) * dtype.itemsize // 64) * 64
    return fields, offset


def views(memory, fields):
    return {key: np.frombuffer(memory, dtype=np.dtype(dtype), count=int(np.prod(shape)),
                               offset=offset).reshape(shape)
            for key, (dtype, shape, offset) in fields.items()}


def anonymous_file(size):
    """A file descriptor of `size` bytes of memory that no name refers to: it is freed when
    the last process holding it closes it or dies, so nothing can leak."""
    if hasattr(os, "memfd_create"):
        descriptor = os.memfd_create("bert-hdf5-shard")
    else:
        with tempfile.TemporaryFile() as named:
            descriptor = os.dup(named.fileno())
    os.ftruncate(descriptor, size)
    return descriptor


def bytes_read_so_far():
    """Bytes this process has read through read() calls (Linux), else 0."""
    try:
        with open("/proc/self/io") as io:
            return next(int(line.split()[1]) for line in io if line.startswith("rchar"))
    except (OSError, StopIteration):
        return 0


def read_share(request, limits, masking=None):
    """In the reader process: (SharedShard, file descriptor or None) of the request; with
    `masking` (masking.DynamicMasking), the rows are masked anew for the request's epoch."""
    started = bytes_read_so_far()
    with open_shard(request.path) as f:
        count = check_layout(f, request.path, limits)
        batches, ranges = request.row_ranges(count)
        if not batches:
            return SharedShard(request.path, 0), None
        fields, size = layout({key: f[key] for key in KEYS}, batches * request.micro_batch,
                              batches, request.micro_batch)
        descriptor = anonymous_file(size)
        try:  # the mapping goes with fill's views (a `with` could not close it under them)
            fill(mmap.mmap(descriptor, size), fields, f, ranges, request, batches, limits,
                 masking)
        except BaseException:
            os.close(descriptor)
            raise
    shard = SharedShard(request.path, batches, size, fields, bytes_read_so_far() - started)
    return shard, descriptor


def fill(memory, fields, f, ranges, request, batches, limits, masking=None):
    arrays = views(memory, fields)
    for key in KEYS:
        written = 0
        for start, stop in ranges:
            rows = stop - start
            f[key].read_direct(arrays[key], np.s_[start:stop], np.s_[written:written + rows])
            written += rows
    check_values(arrays, request.path, limits)
    if masking is not None:
        remask(arrays, np.concatenate([np.arange(a, b) for a, b in ranges]), request, masking)
    arrays["slots"][...] = request.slots(batches)


REMASK_ROWS = 8192  # rows re-masked at a time: bounds the int64 temporaries


def remask(arrays, rows_on_disk, request, masking):
    """Dynamic masking in place: each instance, identified by (its file, its row on disk),
    gets the mask of (seed, epoch, instance), whichever rank reads it and when."""
    instance_ids = (np.uint64(request.file_id) << np.uint64(32)) | rows_on_disk.astype(np.uint64)
    for start in range(0, len(rows_on_disk), REMASK_ROWS):
        block = slice(start, start + REMASK_ROWS)
        masked = masking({key: arrays[key][block] for key in KEYS}, request.epoch,
                         instance_ids[block])
        for key in ("input_ids", "masked_lm_positions", "masked_lm_ids"):
            arrays[key][block] = masked[key]


def serve_reads(connection, rank_pid, limits, masking=None):
    """The reader process: answers each ReadRequest with ('ok', SharedShard) and the
    memory's descriptor, or ('error', message) for a bad shard."""
    follow_rank(rank_pid)
    while True:
        try:
            request = connection.recv()
        except EOFError:  # the rank closed its end
            return
        try:
            shard, descriptor = read_share(request, limits, masking)
        except ValueError as error:
            connection.send(("error", str(error)))
            continue
        except Exception:
            connection.send(("failed", traceback.format_exc()))
            continue
        connection.send(("ok", shard))
        if descriptor is not None:
            multiprocessing.reduction.send_handle(connection, descriptor, rank_pid)
            os.close(descriptor)


def follow_rank(rank_pid):
    """Set-up of the background reader, forked from its rank: it leaves the signals the
    rank handles to the rank (Slurm sends TERM/USR1 to every process of a job step), and
    dies with the rank (Linux PR_SET_PDEATHSIG) instead of living on as an orphan that holds
    the job's output open when the rank is killed."""
    leave_signals_to_rank()
    utils.die_with_parent(rank_pid)


def leave_signals_to_rank():
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)


# Fork where there is one (Linux, as the HDF5 reader); Python 3.14's default there is
# forkserver, whose workers would die of a TERM that comes before worker_init_fn.
WORKER_START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else None


def leave_signals_to_rank_in_worker(worker_id):
    """worker_init_fn of LDDL's loader workers. torch's workers die of a TERM that is not
    from their rank, and the rank with them ("DataLoader worker exited unexpectedly"),
    before it could checkpoint; Slurm sends TERM to every process of the job step. (torch's
    workers end by themselves when their rank dies.)"""
    leave_signals_to_rank()


def stop_loader_workers(loader):
    """Ends the persistent workers of LDDL's loader (a torch DataLoader, or one per bin):
    torch's own shutdown first (it stops watching them, then asks them to finish), then a
    kill for any it left, as they ignore the TERM it would end them with."""
    for torch_loader in getattr(loader, "_dataloaders", [loader]):
        iterator = getattr(torch_loader, "_iterator", None)
        workers = list(getattr(iterator, "_workers", []))
        if hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        for worker in workers:
            if worker.is_alive():
                worker.kill()
                worker.join()


def stop_reader(process, connection):
    """Kills the reader (whatever it is reading is not needed: its memory belongs to no
    name), reaps it and closes the socket, in that order, in this thread: nothing is left
    to race with interpreter exit."""
    process.kill()
    process.join()
    process.close()
    connection.close()


class ShardReader:
    """The rank's end of the background reader: one request in flight at a time."""

    def __init__(self, limits, masking=None):
        context = multiprocessing.get_context("fork")
        self.connection, child_end = context.Pipe()
        self.process = context.Process(target=serve_reads, name="hdf5-reader",
                                       args=(child_end, os.getpid(), limits, masking))
        self.process.start()
        child_end.close()
        # Runs at close(), when this object is collected, or at exit before multiprocessing
        # joins its children (which would wait forever for a reader blocked in recv()).
        self._stop = multiprocessing.util.Finalize(self, stop_reader,
                                                   (self.process, self.connection),
                                                   exitpriority=100)

    def send(self, request):
        self.connection.send(request)

    def receive(self, request):
        """The SharedShard answering `request` (sent before), mapped into this process."""
        try:
            status, answer = self.connection.recv()
            if status == "ok" and answer.size:
                descriptor = multiprocessing.reduction.recv_handle(self.connection)
                try:
                    answer.arrays = views(mmap.mmap(descriptor, answer.size), answer.fields)
                finally:
                    os.close(descriptor)  # the mapping keeps the memory
        except (EOFError, ConnectionError):
            raise RuntimeError(f"the HDF5 reader process died (exit code "
                               f"{self.process.exitcode}) while reading {request.path}; "
                               f"was it killed for memory?") from None
        if status == "error":
            raise ValueError(answer)
        if status == "failed":
            raise RuntimeError(f"the HDF5 reader process failed on {request.path}:\n{answer}")
        return answer

    def close(self):
        self._stop()


class PretrainingBatches:
    """Iterator of this rank's micro-batches (dicts of int64 tensors) over HDF5 shards, in
    page-locked memory when pin_memory (so that copies to the GPU can overlap)."""

    def __init__(self, files, micro_batch, rank, world_size, seed, position=None,
                 limits=ShardLimits(), pin_memory=False, masking=None):
        self.files = list(files)
        self.micro_batch, self.rank, self.world_size = micro_batch, rank, world_size
        self.seed, self.limits, self.pin_memory = seed, limits, pin_memory
        self.position = position or Position()
        self.reader = ShardReader(limits, masking)
        self.in_flight = None  # the request the reader is working on
        self.bytes_read = 0    # from the shard files, by this rank's reader

    def file_order(self, epoch):
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.files))

    def _request(self, epoch, file_index):
        file_id = int(self.file_order(epoch)[file_index])
        return ReadRequest(self.files[file_id], self.seed, epoch, file_index, self.micro_batch,
                           self.rank, self.world_size, file_id)

    def _next_file(self, epoch, file_index):
        return (epoch, file_index + 1) if file_index + 1 < len(self.files) else (epoch + 1, 0)

    def _load(self, epoch, file_index):
        """This rank's share of the file (prefetched when possible); starts reading the
        following file in the background."""
        request = self._request(epoch, file_index)
        if self.in_flight != request:
            if self.in_flight is not None:
                self.reader.receive(self.in_flight)  # not the one needed: discarded
            self.reader.send(request)
        self.in_flight = None
        shard = self.reader.receive(request)
        self.bytes_read += shard.bytes_read
        self.in_flight = self._request(*self._next_file(epoch, file_index))
        self.reader.send(self.in_flight)
        return shard

    def __iter__(self):
        files_without_batch = 0
        while True:
            position = self.position
            shard = self._load(position.epoch, position.file_index)
            files_without_batch = 0 if shard.batches else files_without_batch + 1
            if files_without_batch == len(self.files):  # it would read the files forever
                global_batch = self.micro_batch * self.world_size
                raise ValueError(f"no input file holds a full global batch of {global_batch} "
                                 f"instances ({self.micro_batch} per micro-batch x "
                                 f"{self.world_size} process(es)); the first is "
                                 f"{self.files[0]}: lower --train_batch_size or write larger "
                                 "shards")
            for batch_index in range(position.batch_index, shard.batches):
                self.position = Position(position.epoch, position.file_index, batch_index + 1)
                yield to_batch(shard.micro_batch(batch_index), self.pin_memory)
            epoch, file_index = self._next_file(position.epoch, position.file_index)
            self.position = Position(epoch, file_index, 0)

    def close(self):
        self.reader.close()


def masked_lm_labels(input_ids, positions, ids):
    """Labels [B, T] (int64): the original token at masked positions, -1 elsewhere. Padding
    in `positions` is 0, which never is a real mask ([CLS] sits there)."""
    labels = np.full(input_ids.shape, -1, dtype=np.int64)
    valid = positions > 0
    rows = np.nonzero(valid)[0]
    labels[rows, positions[valid]] = ids[valid]
    return labels


def to_batch(arrays, pin_memory=False):
    """A shard's rows (numpy arrays of any integer type) -> the int64 tensors
    BertForPreTraining takes, page-locked when pin_memory."""
    sources = {"input_ids": arrays["input_ids"], "token_type_ids": arrays["segment_ids"],
               "attention_mask": arrays["input_mask"],
               "masked_lm_labels": masked_lm_labels(arrays["input_ids"],
                                                    arrays["masked_lm_positions"],
                                                    arrays["masked_lm_ids"]),
               "next_sentence_labels": arrays["next_sentence_labels"]}
    batch = {}
    for name, source in sources.items():
        tensor = torch.empty(source.shape, dtype=torch.int64, pin_memory=pin_memory)
        tensor.numpy()[...] = source
        batch[name] = tensor
    return batch


class LddlBatches:
    """Batches from LDDL's balanced Parquet shards through lddl.torch (pip install
    --no-deps lddl==0.1.0 pyarrow), renamed to BertForPreTraining's arguments. The position
    is the epoch and the batches served in it: LDDL starts an epoch only at its beginning,
    in an order fixed by (seed, epoch), so a resume loads the served ones again and skips
    them (else runs shorter than an epoch, requeued, would train on its first batches
    only). Each batch is checked against `limits` (its width and largest token id: LDDL
    tokenizes at load time)."""

    def __init__(self, files, vocab_file, micro_batch, local_rank, world_size, seed,
                 position, num_workers, log_dir, limits=ShardLimits()):
        try:
            from lddl.torch import get_bert_pretrain_data_loader
        except ImportError:
            raise ImportError(f"{files[0].parent} holds Parquet shards, which need LDDL: "
                              f"pip install --no-deps lddl==0.1.0 pyarrow") from None
        if vocab_file is None:
            raise ValueError("LDDL Parquet shards need --vocab_file (LDDL tokenizes at load time)")
        if is_tokenizer_json(vocab_file):
            raise ValueError(f"--vocab_file {vocab_file}: LDDL reads a vocab.txt (one token a "
                             "line), not a tokenizer.json")
        # LDDL keeps its workers alive between epochs, which needs at least one.
        num_workers = max(1, num_workers)
        shard_sets = {re.sub(r"_\d+$", "", f.name) for f in files}
        if len(shard_sets) % (world_size * num_workers):
            raise ValueError(f"{files[0].parent}: LDDL needs the number of shards "
                             f"({len(shard_sets)}) to be divisible by processes x loader "
                             f"workers ({world_size} x {num_workers}); change --num_workers "
                             f"or re-balance the shards")
        self.folder, self.vocab_file, self.limits = files[0].parent, vocab_file, limits
        self.position = Position(epoch=position.epoch, batch_index=position.batch_index)
        self.loader = get_bert_pretrain_data_loader(
            str(files[0].parent), local_rank=max(local_rank, 0), vocab_file=str(vocab_file),
            data_loader_kwargs={"batch_size": micro_batch, "num_workers": num_workers,
                                "pin_memory": torch.cuda.is_available(),
                                "worker_init_fn": leave_signals_to_rank_in_worker,
                                # Forked workers start with the rank's handlers (a flag
                                # only) until worker_init_fn: a TERM before it is harmless.
                                "multiprocessing_context": WORKER_START_METHOD},
            base_seed=seed, log_dir=str(log_dir), log_level=logging.WARNING,
            start_epoch=position.epoch)
        # Runs at close(), when this object is collected, or at exit before multiprocessing
        # terminates and joins its children (workers that ignore TERM: forever).
        self._stop = multiprocessing.util.Finalize(self, stop_loader_workers, (self.loader,),
                                                   exitpriority=100)

    def __iter__(self):
        served = self.position.batch_index
        if served:
            utils.logger.info("LDDL: loading the %d batches of epoch %d served before the "
                              "resume again, to skip them", served, self.position.epoch)
        while True:
            for index, batch in enumerate(self.loader):
                if index < served:
                    continue
                self.position = Position(epoch=self.position.epoch, batch_index=index + 1)
                self._check(batch)
                yield {"input_ids": batch["input_ids"],
                       "token_type_ids": batch["token_type_ids"],
                       "attention_mask": batch["attention_mask"],
                       "masked_lm_labels": batch["labels"],
                       "next_sentence_labels": batch["next_sentence_labels"]}
            served = 0
            self.position = Position(epoch=self.position.epoch + 1)

    def _check(self, batch):
        width, limits = batch["input_ids"].shape[1], self.limits
        for limit, what in ((limits.max_seq_length, "--max_seq_length"),
                            (limits.max_position_embeddings,
                             "the model's max_position_embeddings (--config_file)")):
            if limit is not None and width > limit:
                raise ValueError(f"LDDL shards in {self.folder} gave a batch of {width} tokens "
                                 f"per sequence, more than {what} {limit}: use shards made "
                                 f"with --target-seq-length {limit} or less")
        if limits.vocab_size is not None:
            largest = int(torch.maximum(batch["input_ids"].max(), batch["labels"].max()))
            if largest >= limits.vocab_size:
                raise ValueError(f"LDDL shards in {self.folder} gave token id {largest}, but "
                                 f"the model's vocab_size is {limits.vocab_size} "
                                 f"(--config_file): --vocab_file {self.vocab_file} does not "
                                 f"go with the config")

    def close(self):
        self._stop()
