"""Pieces shared by the entry scripts: distributed set-up, seeding, precision, the metric
logger, checkpoint files, the pre-emption flag, progress reporting and atomic writes.

Deliberate deviations from NVIDIA's utils/run scripts:
- One logger writes dllogger's `DLLL {json}` lines itself, dllogger installed or not (it
  is not on PyPI): a resumed run appends to the file, which dllogger 1.0.0's JSON backend
  would truncate at each start.
- Ranks come from torchrun (RANK, LOCAL_RANK, WORLD_SIZE) or directly from Slurm
  (SLURM_PROCID, SLURM_LOCALID, SLURM_STEP_NUM_TASKS) when srun starts the processes
  itself; a rank drives GPU local_rank modulo the GPUs it sees (one GPU per Slurm task
  works), and the process group is left at the end (end_distributed) after a barrier. A
  launcher's single rank joins a group of one and trains under DDP (as NVIDIA's under
  torch.distributed.launch).
- Precision is one of fp16, bf16, tf32 (--tf32: TF32 matrix products, what NVIDIA's scripts
  get on Ampere and later for both "tf32" and "fp32") and fp32, which here is true IEEE fp32.
- --local-rank (torch.distributed.launch's spelling) is accepted beside --local_rank.
- Checkpoints are written atomically (temporary file, then rename) and hold tensors and
  plain values only, so they load with torch.load(weights_only=True).
"""

import argparse
import codecs
import contextlib
import ctypes
import datetime
import functools
import importlib.util
import json
import linecache
import logging
import os
import pickle
import re
import signal
import sys
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path


def _hide_deployment_folder_from_import():
    """Our triton/ folder (deployment scripts, no __init__.py) would be imported as a
    namespace package named `triton` by any process started from the repository root when
    the real Triton library is not installed (CPU machines); torch would then take it for
    the compiler and fail. Mark the name as absent in that case; the real library, where
    installed, is a regular package and is found first, so it is never hidden."""
    spec = importlib.util.find_spec("triton")
    ours = Path(__file__).resolve().parent / "triton"
    if spec is not None and spec.origin in (None, "namespace") and all(
            Path(location).resolve() == ours for location in spec.submodule_search_locations):
        sys.modules["triton"] = None


_hide_deployment_folder_from_import()

import torch  # noqa: E402 - after the guard above
import torch.distributed as dist
from tqdm import tqdm

logger = logging.getLogger("bert")


# ----------------------------------------------------------------------------- files

@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; renames it onto `path` only if the block
    succeeds, so an interrupted write never leaves a half-written file under the final name.
    The data reach the disk before the rename and the rename before the return: a crash of
    the machine (not only of the process) leaves the old file or the new one, never an empty
    one, even where the caller then deletes older checkpoints."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(temporary, 0o666 & ~current_umask())  # mkstemp makes it owner-only (0600)
    try:
        yield Path(temporary)
        _flush_to_disk(temporary)
        os.replace(temporary, path)
        _flush_to_disk(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _flush_to_disk(path):
    """fsync of a file, or of a folder (its entries: a rename); filesystems that cannot sync
    a folder are left as they are."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if not os.path.isdir(path):
            raise
    finally:
        os.close(fd)


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_utf8_text(path, what):
    """The text of the file at `path`: UTF-8, a byte-order mark (MRPC's files have one)
    dropped. `what` names the file in errors (a flag or a role). A missing file, a binary
    one or one in another encoding is an error naming the file and the line of the first
    bad byte, not a bare UnicodeDecodeError."""
    try:
        data = Path(path).read_bytes().removeprefix(codecs.BOM_UTF8)
    except OSError as error:
        raise type(error)(f"{what} {path}: {error.strerror or error}") from None
    if b"\0" in data:
        raise ValueError(f"{what} {path}, line {_line_of(data, data.index(0))}: a NUL byte: "
                         "it is a binary file, not text; pass a UTF-8 text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{what} {path}, line {_line_of(data, error.start)}: byte "
                         f"0x{data[error.start]:02x} is not UTF-8; convert the file (e.g. "
                         "iconv -f LATIN1 -t UTF-8) or pass the right file") from None


def read_json_object(path, what, expected="a JSON object"):
    """The JSON object (a dict) in the file at `path`, or an error naming `what`, the file
    and what was `expected`."""
    try:
        content = json.loads(read_utf8_text(path, what))
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} {path}: not valid JSON ({error})") from None
    if not isinstance(content, dict):
        raise ValueError(f"{what} {path}: expected {expected}, got a "
                         f"{type(content).__name__}")
    return content


def _line_of(data, offset):
    return data.count(b"\n", 0, offset) + 1


def atomic_write_text(path, text):
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def check_writable_dir(path, flag):
    """Creates the folder if needed and proves it writable with a throw-away file, so a run
    that could not save its results fails before any work, naming the argument."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise PermissionError(f"{flag} {path} is not a writable folder: "
                              f"{e.strerror or e}") from None
    return folder


# ----------------------------------------------------------------------------- arguments

def whole_number(text):
    """An argparse type for counts that NVIDIA's scripts take as floats ("1.0")."""
    value = float(text)
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(value)


def positive_int(text):
    """An argparse type for sizes and counts that must be at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_precision_args(parser):
    """--fp16/--amp, --bf16 and --tf32: the precision of every script, one at most; without
    any of them the model runs in true fp32 (IEEE float32 matrix products, no TF32)."""
    parser.add_argument("--fp16", "--amp", dest="fp16", action="store_true",
                        help="mixed precision with fp16 (training: dynamic loss scaling)")
    parser.add_argument("--bf16", action="store_true", help="mixed precision with bfloat16")
    parser.add_argument("--tf32", action="store_true",
                        help="fp32 with TF32 tensor-core matrix products and convolutions "
                             "(NVIDIA's default on Ampere and later GPUs); without --fp16, "
                             "--bf16 or --tf32 the model runs in true fp32")
    return parser


def add_common_args(parser):
    """Flags that every training script has, with one meaning everywhere."""
    parser.add_argument("--seed", type=int, default=42, help="random seed (rank r uses seed + r)")
    add_precision_args(parser)
    parser.add_argument("--loss_scale", type=float, default=0.0,
                        help="fp16 loss scale: 0 = dynamic from --init_loss_scale; S > 0 "
                             "starts at S and never grows")
    parser.add_argument("--init_loss_scale", type=float, default=2.0**20,
                        help="fp16: the first dynamic loss scale")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1,
                        help="micro-batches per optimizer step")
    # torch.distributed.launch passes --local-rank=N (torch 2), older launchers --local_rank.
    parser.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int,
                        default=int(os.environ.get("LOCAL_RANK", "-1")),
                        help="set by the launcher; torchrun's LOCAL_RANK is read as well")
    parser.add_argument("--json-summary", dest="json_summary", default=None,
                        help="dllogger-format metrics file (default: <output_dir>/dllogger.json)")
    parser.add_argument("--log_freq", type=whole_number, default=1,
                        help="log every N optimizer steps")
    parser.add_argument("--disable_progress_bar", "--disable-progress-bar",
                        dest="disable_progress_bar", action="store_true")
    parser.add_argument("--no_cuda", action="store_true", help="run on CPU even with a GPU")
    return parser


def check_precision_args(args):
    chosen = [flag for flag, name in (("--fp16/--amp", "fp16"), ("--bf16", "bf16"),
                                      ("--tf32", "tf32")) if getattr(args, name, False)]
    if len(chosen) > 1:
        raise ValueError(f"choose one of --fp16/--amp, --bf16 and --tf32, not "
                         f"{' and '.join(chosen)}")
    if getattr(args, "gradient_accumulation_steps", 1) < 1:
        raise ValueError("--gradient_accumulation_steps must be at least 1")


# ----------------------------------------------------------------------------- entry points

REPOSITORY = Path(__file__).resolve().parent
INPUT_ERRORS = (ValueError, OSError, ImportError)  # what our checks raise for bad input


def run_entry_point(main, parse_args):
    """The `__main__` block of every entry script: main(parse_args()).

    Bad input that our own code reports (one of INPUT_ERRORS raised in a file of this
    repository, not inside a library) prints as one line, `<script>: error: <message>`,
    with status 1 and no traceback; under several ranks each rank prints its own, prefixed
    `rank <N>: `. Any other exception keeps its traceback, as does every exception with
    BERT_TRACEBACK=1 in the environment.
    """
    try:
        return main(parse_args())
    except INPUT_ERRORS as e:
        if os.environ.get("BERT_TRACEBACK") or not raised_in_repository(e):
            raise
        rank, _, world_size = _environment_ranks()
        who = f"rank {rank}: " if world_size > 1 else ""  # an error may be one rank's alone
        print(f"{who}{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        sys.exit(1)


def raised_in_repository(error):
    """True when the error comes from a raise statement in our code (not in a library, not
    in a virtual environment inside the repository)."""
    frame = error.__traceback__
    if frame is None:
        return False
    while frame.tb_next is not None:
        frame = frame.tb_next
    path = Path(frame.tb_frame.f_code.co_filename).resolve()
    if not path.is_relative_to(REPOSITORY) or any(
            part.startswith(".") or part == "site-packages"
            for part in path.relative_to(REPOSITORY).parts):
        return False
    # A C function called from our code (int("x"), a numpy cast) adds no frame of its own:
    # only a raise statement of ours counts.
    line = linecache.getline(str(path), frame.tb_lineno).lstrip()
    return line.startswith("raise ")


# ----------------------------------------------------------------------------- distributed

@dataclass
class Distributed:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    in_group: bool = False  # a launcher started this process: collectives, DDP, sampler

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def enabled(self):
        return self.in_group


def _launcher_ranks():
    """(rank, local_rank, world_size) from torchrun's variables, else from Slurm's; None for a
    process that no launcher started."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"])
    # srun's tasks, counted by their step: the job's batch script has the job's SLURM_NTASKS
    # but no step variables, and a process it runs itself is alone
    if "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env and "MASTER_ADDR" in env:
        return (int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0)),
                int(env["SLURM_STEP_NUM_TASKS"]))
    return None


def check_alone_in_slurm():
    """A process no launcher made a rank, inside a Slurm job. srun's tasks without
    MASTER_ADDR (which run.sub sets) would each train alone into the same --output_dir: an
    error. A process of a job of several tasks that srun did not start (no step variables:
    the batch script, or another launcher) runs alone: a warning, in case it should not."""
    env = os.environ
    step_tasks = int(env.get("SLURM_STEP_NUM_TASKS", 1))
    if step_tasks > 1:
        raise ValueError(f"srun started {step_tasks} tasks, but MASTER_ADDR is not set, so "
                         "they cannot find each other: export MASTER_ADDR (the first node, "
                         "e.g. $(scontrol show hostnames | head -n1)) or submit run.sub")
    job_tasks = int(env.get("SLURM_NTASKS", 1))
    if "SLURM_STEP_NUM_TASKS" not in env and job_tasks > 1:
        logger.warning("this process runs alone, outside the %d tasks of its Slurm job (srun "
                       "did not start it): start the ranks with srun (run.sub) or torchrun "
                       "to train on all of them", job_tasks)


def _environment_ranks():
    """(rank, local_rank, world_size); (0, 0, 1) without a launcher."""
    return _launcher_ranks() or (0, 0, 1)


def cuda_device_index(local_rank, visible_devices):
    """The GPU a rank drives: its local rank modulo the GPUs it sees. Sites that bind one GPU
    to each Slurm task show every task a single device 0, whatever its SLURM_LOCALID; a node
    whose ranks all see every GPU gives rank r GPU r."""
    if visible_devices < 1:
        raise ValueError(f"local rank {local_rank} sees no GPU (CUDA_VISIBLE_DEVICES="
                         f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): start one task "
                         "per GPU, or pass --no_cuda to run on the CPU")
    return local_rank % visible_devices


def init_distributed(no_cuda=False, precision="fp32", timeout_minutes=30):
    """Joins the process group when a launcher (torchrun, srun) started the process, also as
    its only rank, as NVIDIA's scripts do (NCCL on GPUs, gloo on CPU; a plain `python` runs
    alone, without DDP), picks this rank's device and sets fp32 matrix products to TF32 for
    'tf32' only (set_matmul_precision). A rank that dies makes the others fail after
    `timeout_minutes` instead of hanging forever."""
    launched = _launcher_ranks() is not None
    if not launched:
        check_alone_in_slurm()
    rank, local_rank, world_size = _environment_ranks()
    use_cuda = torch.cuda.is_available() and not no_cuda
    device = torch.device("cpu")
    if use_cuda:
        visible = torch.cuda.device_count()
        device = torch.device("cuda", cuda_device_index(local_rank, visible))
        if local_rank >= visible > 1:
            logger.warning("local rank %d sees %d GPUs and takes GPU %d: if the ranks of this "
                           "node share these GPUs, two of them now train on one; start one "
                           "task per GPU", local_rank, visible, device.index)
        torch.cuda.set_device(device)
    set_matmul_precision(precision)
    warn_if_emulated(precision, device)
    if device.type == "cpu":
        reuse_freed_memory()
    if launched and not dist.is_initialized():
        os.environ.setdefault("MASTER_PORT", "29500")
        dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://",
                                rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return Distributed(rank, local_rank, world_size, device, in_group=dist.is_initialized())


GLIBC_M_TRIM_THRESHOLD, GLIBC_M_MMAP_MAX = -1, -4  # mallopt's parameter numbers


def reuse_freed_memory():
    """Makes glibc's malloc keep large freed blocks for the next allocation instead of
    handing them back to the kernel; returns whether it could (Linux with glibc only).

    glibc serves a block above its mmap threshold (32 MB at most) with fresh pages and
    unmaps it when it is freed, so a tensor that size made anew every step (a 384-wide
    model's word-embedding gradient and its optimizer temporaries, masked-LM logits) faults
    all its pages in again each time: on the 2-core benchmark machine a new 47 MB tensor
    took 18 ms to fill, a reused one 1.2 ms, and a 6-layer/384 bf16 training step ran 15%
    faster. With mmap off (M_MMAP_MAX 0) large blocks come from the heap, and a trim
    threshold of 2 GB (the most mallopt takes) keeps freed ones there. Resident memory
    then stays at the peak of the process, which training reaches in its first steps
    anyway; the CPU processes of the entry scripts call this (init_distributed).

    torch allocates with 64-byte alignment, for which glibc splits small slivers off each
    large block; its per-thread cache (tcache) keeps them, so a freed block cannot merge
    with them and is too small for the next request of the same size: on that machine a
    30522x384 fp32 zeros still faulted in all its pages each time (9.5 ms, against 1.1
    with the cache off). The cache can be turned off only before the process starts, by
    GLIBC_TUNABLES=glibc.malloc.tcache_count=0, as scripts/run_*.sh do."""
    if not _runs_on_glibc():
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(GLIBC_M_MMAP_MAX, 0)
                and libc.mallopt(GLIBC_M_TRIM_THRESHOLD, 2**31 - 1))


def _runs_on_glibc():
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):  # not a name this platform's confstr knows
        return False


def end_distributed(distributed):
    """Waits for every rank (rank 0 may still be writing a checkpoint that the others must
    not exit before: srun --kill-on-bad-exit ends the step at the first non-zero exit), then
    leaves the process group, which NCCL otherwise warns about at exit."""
    if not (distributed.enabled and dist.is_initialized()):
        return
    if distributed.device.type == "cuda":
        dist.barrier(device_ids=[distributed.device.index])
    else:
        dist.barrier()
    dist.destroy_process_group()


def all_reduce_mean(values, distributed):
    """Mean over ranks of a 1-d float tensor (identity for one process)."""
    if distributed.enabled:
        values = values.clone()
        dist.all_reduce(values)
        values /= distributed.world_size
    return values


def seed_everything(seed, rank=0):
    torch.manual_seed(seed + rank)


# ----------------------------------------------------------------------------- precision

PRECISIONS = ("fp16", "bf16", "tf32", "fp32")


def autocast(precision, device):
    """torch.autocast for 'fp16'/'bf16', a no-op context for 'tf32' and 'fp32' (their
    difference is set once per process by set_matmul_precision)."""
    if precision in ("fp32", "tf32"):
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def precision_of(args):
    """One of PRECISIONS from --fp16/--amp, --bf16, --tf32 (fp32 without any)."""
    if getattr(args, "fp16", False):
        return "fp16"
    if getattr(args, "bf16", False):
        return "bf16"
    return "tf32" if getattr(args, "tf32", False) else "fp32"


# CPU flags (CPUINFO's x86 "flags", Arm "Features") that give a precision's matrix products
# hardware support; without one torch emulates them.
CPUINFO = Path("/proc/cpuinfo")
NATIVE_CPU_FLAGS = {"bf16": {"avx512_bf16", "amx_bf16", "bf16"},
                    "fp16": {"avx512_fp16", "amx_fp16", "asimdhp"}}


def cpu_runs_natively(precision):
    """Whether this CPU multiplies 'bf16'/'fp16' matrices in hardware (True for the fp32
    precisions); None where the CPU's flags cannot be read (no /proc/cpuinfo)."""
    if precision not in NATIVE_CPU_FLAGS:
        return True
    try:
        text = CPUINFO.read_text()
    except OSError:
        return None
    flags = {word for line in text.splitlines()
             if line.split(":")[0].strip().lower() in ("flags", "features")
             for word in line.split(":", 1)[-1].split()}
    return bool(flags & NATIVE_CPU_FLAGS[precision])


FIRST_NATIVE_BF16_CUDA_CAPABILITY = 8  # Ampere (A100); V100 is 7.0, T4 7.5


def warn_if_emulated(precision, device):
    """Mixed precision on a CPU without matrix instructions for it is emulated: on a 2-core
    AVX2 EPYC (Zen 3) a BERT-base feed-forward product (1024x768 by 768x3072) ran at 1.0
    GFLOP/s in bf16 and in fp16 against 161 in fp32. Say so instead of letting a run crawl;
    likewise for bf16 on a GPU older than Ampere."""
    if device.type == "cpu" and cpu_runs_natively(precision) is False:
        logger.warning("--%s on a CPU without %s matrix instructions (none of %s in "
                       "/proc/cpuinfo): torch emulates them and matrix products run over "
                       "100x slower than in fp32; leave out --%s on this machine",
                       precision, precision, ", ".join(sorted(NATIVE_CPU_FLAGS[precision])),
                       precision)
    # torch.cuda.is_bf16_supported() says yes on these since torch 2.3, and autocast runs.
    if device.type == "cuda" and precision == "bf16":
        major, minor = torch.cuda.get_device_capability(device)
        if major < FIRST_NATIVE_BF16_CUDA_CAPABILITY:
            logger.warning("--bf16 on %s (compute capability %d.%d): bf16 tensor cores came "
                           "with Ampere (8.0), and torch emulates bf16 here, slower than "
                           "fp32; use --fp16 on this GPU", torch.cuda.get_device_name(device),
                           major, minor)


class CompiledOrEager:
    """`function`, compiled by inductor (dynamic shapes, on first use, once per process)
    when called with compile=True; uncompiled (`eager`, by default `function` itself) when
    called with compile=False and, once compiling has failed (no C++ compiler, an inductor
    error), from then on, after one warning naming `what` and the error. A compile error
    comes before anything is written, so the eager call redoes the same work."""

    def __init__(self, function, what, eager=None):
        self.function, self.what = function, what
        self.eager = eager or function
        self.error = None  # why compiling failed, once it has

    @functools.cached_property
    def compiled(self):
        return torch.compile(self.function, dynamic=True)

    def __call__(self, *args, compile=True):
        if compile and self.error is None:
            try:
                return self.compiled(*args)
            except Exception as e:  # torch.compile raises many exception types
                self.error = e
                logger.warning("%s: torch.compile failed (%s: %s); eager from now on, slower",
                               self.what, type(e).__name__, e)
        return self.eager(*args)


def set_matmul_precision(precision):
    """TF32 tensor cores for float32 matrix products and convolutions with 'tf32' only:
    'fp32' means IEEE float32 on every GPU, and mixed precision leaves little in float32.
    (torch's legacy allow_tf32 flags: torch >= 2.9 keeps them in step with fp32_precision,
    while mixing the two interfaces makes torch refuse to read the setting.)"""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def make_grad_scaler(precision, device, loss_scale=0.0, init_loss_scale=2.0**20):
    """GradScaler for fp16 (dynamic from init_loss_scale, 2**20 as NVIDIA, or starting at a
    fixed loss_scale that never grows); disabled, a pass-through, for fp32 and bf16."""
    if precision != "fp16":
        return torch.amp.GradScaler(device.type, enabled=False)
    if loss_scale > 0:
        return torch.amp.GradScaler(device.type, init_scale=loss_scale, growth_interval=2**30)
    return torch.amp.GradScaler(device.type, init_scale=init_loss_scale)


def optimizer_step(optimizer, scheduler, scaler, model=None, max_grad_norm=0.0):
    """Unscale, optionally clip the global gradient norm, step, advance the schedule.
    Returns False when the fp16 scaler skipped the step (inf/NaN gradients); the schedule
    then stays where it is, as NVIDIA's "dynamic step"."""
    if scaler.is_enabled():
        scaler.unscale_(optimizer)  # finds inf/NaN gradients, read below
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    skipped = scaler.is_enabled() and found_inf(scaler, optimizer)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()  # frees the gradients; apex's FusedLAMB.zero_grad takes no arguments
    if skipped:
        return False
    scheduler.step()
    return True


def found_inf(scaler, optimizer):
    """Whether the unscaled gradients hold inf/NaN: the scaler's own verdict, which decides
    whether it skips the step (comparing loss scales instead fails once the scale reaches 0
    under a loss that is never finite). One host sync."""
    flags = scaler._found_inf_per_device(optimizer)  # noqa: SLF001 - no public accessor
    return bool(sum(flag.item() for flag in flags.values()))


# ----------------------------------------------------------------------------- logging

def setup_logging(is_main=True, level=logging.INFO):
    """Readable lines of the project's logger on stdout; other ranks show warnings only."""
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s",
                                               datefmt="%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(level if is_main else logging.WARNING)


class MetricLogger:
    """Metrics as dllogger does it: `DLLL {json}` lines in a file, flushed per line, plus a
    readable line on stdout. Only rank 0 writes."""

    def __init__(self, path, enabled=True):
        self.enabled = enabled and path is not None
        self.start = time.time()
        self.file = None
        if self.enabled:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def _write(self, kind, step, data):
        if not self.enabled:
            return
        now = time.time()
        record = {"timestamp": f"{now:.6f}", "datetime": datetime.datetime.now().isoformat(),
                  "elapsedtime": round(now - self.start, 6), "type": kind, "step": step,
                  "data": data}
        self.file.write("DLLL " + json.dumps(record) + "\n")
        self.file.flush()

    def parameters(self, values):
        self._write("PARAMETER", "PARAMETER", values)

    def log(self, step, values, label=None):
        """step: a tuple such as (phase, step) or () for the final summary; label: how the
        readable line names the step (default: the tuple's items, e.g. "train 50")."""
        self._write("LOG", list(step), values)
        if self.enabled:
            where = label or (" ".join(map(str, step)) if step else "summary")
            logger.info(where + ": " + ", ".join(f"{k} {_fmt(v)}" for k, v in values.items()))

    def close(self):
        if self.file is not None:
            self.file.close()


def _fmt(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ----------------------------------------------------------------------------- checkpoints

CHECKPOINT_PATTERN = re.compile(r"^ckpt_(\d+)\.pt$")


def checkpoint_path(output_dir, step):
    return Path(output_dir) / f"ckpt_{step}.pt"


def checkpoint_number(path):
    """N of a ckpt_<N>.pt file, None for any other name."""
    match = CHECKPOINT_PATTERN.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir, first_number=0):
    """Checkpoint files in output_dir numbered first_number or later, newest (highest
    number) first."""
    numbered = [(checkpoint_number(path), path) for path in Path(output_dir).glob("ckpt_*.pt")]
    kept = [(number, path) for number, path in numbered
            if number is not None and number >= first_number]
    return [path for _, path in sorted(kept, reverse=True)]


def save_checkpoint(state, path, keep=3, first_number=0):
    """Writes state atomically to ckpt_<N>.pt, then deletes all but the `keep` newest
    checkpoints numbered from first_number (an earlier phase's checkpoints stay) to N;
    keep=0 keeps all. A higher number than N can only be a file that the resume skipped as
    unreadable: it is left for this run to overwrite, and counting it would delete the
    checkpoints this run writes."""
    with atomic_path(path) as temporary:
        torch.save(state, temporary)
    if keep > 0:
        number = checkpoint_number(path)
        older = [old for old in list_checkpoints(Path(path).parent, first_number)
                 if checkpoint_number(old) <= number]
        for old in older[keep:]:
            old.unlink(missing_ok=True)


def load_latest_checkpoint(output_dir):
    """(path, state) of the newest readable checkpoint, or (None, None). An unreadable file
    (truncated by a crash or a full disk, empty, not a checkpoint at all) is skipped with a
    warning that names it and says why."""
    for path in list_checkpoints(output_dir):
        try:
            return path, load_tensors(path)
        except UnreadableCheckpoint as e:
            logger.warning("skipping unreadable checkpoint %s", e)
    return None, None


class UnreadableCheckpoint(ValueError):
    """A checkpoint file that torch.load(weights_only=True) cannot read; the message names
    the file and the reason in plain words."""


def load_tensors(path):
    """torch.load(path, weights_only=True) on the CPU: tensors and plain values only, never
    pickled code. Failures raise UnreadableCheckpoint without torch's advice to retry with
    weights_only=False, which is exactly the unsafe thing."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise UnreadableCheckpoint(f"{path}: the file is empty (0 bytes)")
    if not (zipfile.is_zipfile(path) or _in_legacy_torch_format(path)):
        raise UnreadableCheckpoint(f"{path}: not a torch checkpoint (torch saves a zip "
                                   "archive, before torch 1.6 a pickle; this file is "
                                   "truncated, or another format)")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of bad files
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = re.search(r"WeightsUnpickler error: ([^\n]*)", str(e))
        raise UnreadableCheckpoint(
            f"{path}: it holds objects other than tensors and plain values, which are "
            f"refused because loading them could run code"
            + (f" ({detail.group(1).strip()})" if detail else "")) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnreadableCheckpoint(f"{path}: corrupted or truncated ({first_line})") from None


LEGACY_TORCH_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)


def _in_legacy_torch_format(path):
    """The format torch saved in before 1.6 (NGC checkpoints of 2019-2020): a run of
    pickles, the first of them torch's magic number."""
    with open(path, "rb") as file:
        return file.read(len(LEGACY_TORCH_MAGIC)) == LEGACY_TORCH_MAGIC


TEMPORARY_CHECKPOINT = re.compile(r"^\.ckpt_\d+\.pt\..+\.tmp$")  # atomic_path's names


def remove_partial_checkpoints(output_dir):
    """Deletes the temporary files of checkpoint saves that were killed half-way (only
    names atomic_path gives ckpt_<N>.pt), which nothing else would ever remove; says so."""
    leftovers = [p for p in Path(output_dir).glob(".ckpt_*.tmp")
                 if TEMPORARY_CHECKPOINT.match(p.name) and p.is_file()]
    for path in leftovers:
        size = path.stat().st_size
        path.unlink(missing_ok=True)
        logger.warning("removed %s (%.1f MB), left by a checkpoint save that was interrupted",
                       path, size / 1e6)
    return leftovers


def rng_state(device):
    """The CPU generator's state and, when this rank runs on a GPU, that GPU's only: a
    resume may see the GPUs differently (torchrun shows each rank all of a node's, Slurm
    sites one). A CPU rank (--no_cuda on a GPU node) never touches CUDA: reading a GPU's
    state would start a CUDA context on it."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device):
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def gather_from_ranks(value, distributed):
    """Every rank's `value` (a picklable object), on every rank, in rank order."""
    if not distributed.enabled:
        return [value]
    values = [None] * distributed.world_size
    dist.all_gather_object(values, value)
    return values


def gather_rng_states(distributed):
    """Every rank's RNG state, on every rank (dropout differs per rank, so resume restores
    each rank's own)."""
    return gather_from_ranks(rng_state(distributed.device), distributed)


def restore_rng_states(states, distributed, seed, step):
    """This rank's generators from a checkpoint's `states` (one per rank). Saved by another
    number of ranks, they cannot be shared out (two ranks would draw the same dropout
    masks): each rank then seeds afresh from (seed + step, rank), and the run is not the
    bit-exact continuation of the one that saved them."""
    if len(states) == distributed.world_size:
        set_rng_state(states[distributed.rank], distributed.device)
        return
    logger.warning("the checkpoint holds the random state of %d rank(s), this run has %d: "
                   "the generators are seeded afresh", len(states), distributed.world_size)
    seed_everything(seed + step, distributed.rank)


def check_same_on_all_ranks(value, distributed, what):
    """Raises on every rank when the ranks' `value`s differ: each rank decides from its own
    view of shared files (one that cannot read the newest checkpoint takes an older one),
    and ranks that disagree would hang in their collectives or save a mix."""
    values = gather_from_ranks(value, distributed)
    if any(other != values[0] for other in values):
        raise RuntimeError(f"the ranks disagree on {what}: " + ", ".join(
            f"rank {rank}: {other}" for rank, other in enumerate(values)))


# ----------------------------------------------------------------------------- pre-emption

class PreemptionFlag:
    """Set by SIGTERM (what Slurm sends before pre-emption or at the time limit) or SIGUSR1;
    `should_stop` agrees across ranks, so that all of them checkpoint and exit together."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGUSR1)):
        self.received, self._pending = None, None
        self.previous = {signum: signal.signal(signum, self._handle) for signum in signals}

    def close(self):
        """Gives the signals back to the handlers they had (a caller that trains in-process,
        such as a benchmark, keeps its own)."""
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def should_stop(self, distributed):
        """Whether any rank received the signal. With several ranks this call's flags are
        combined by an all-reduce that the next call reads, so all ranks stop on the same
        iteration, one after the signal: reading it at once would make the host wait for
        the device to finish the step, every step. One flag serves one training loop."""
        if not distributed.enabled:
            return self.received is not None
        previous = self._pending
        self._pending = AnyRankFlag(self.received is not None, distributed.device)
        return previous is not None and previous.read()


class AnyRankFlag:
    """A flag all-reduced (max) over the ranks without a host wait: on CUDA the result is
    copied to pinned host memory behind an event, and `read` waits for that event only
    (TORCH_NCCL_BLOCKING_WAIT=1 makes the all-reduce itself wait, as every collective)."""

    def __init__(self, raised, device):
        flag = torch.full((1,), 1.0 if raised else 0.0, device=device)  # a fill, not a copy
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # NCCL: queued on the stream, no host wait
        self.copied = None
        if device.type == "cuda":
            self.host = torch.empty(1, pin_memory=True)
            self.host.copy_(flag, non_blocking=True)
            self.copied = torch.cuda.Event()
            self.copied.record()
        else:
            self.host = flag

    def read(self):
        if self.copied is not None:
            self.copied.synchronize()
        return bool(self.host.item())


def die_with_parent(parent_pid):
    """Makes this (forked) process die with its parent: Linux sends it SIGKILL when the
    parent ends (PR_SET_PDEATHSIG), so a killed run (kill -9, an OOM kill) leaves no orphan
    working on. Elsewhere it does nothing."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent was gone before prctl
        os._exit(1)


# ----------------------------------------------------------------------------- progress

class Progress:
    """A tqdm bar on an interactive terminal; otherwise a log line every `log_seconds`.

    Batch jobs (Slurm, CI) capture stderr into files where a redrawn bar is noise.
    """

    def __init__(self, total, desc, unit="it", disable=False, log_seconds=30.0):
        interactive = sys.stderr.isatty() and not disable
        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=not interactive,
                        unit_scale=True, dynamic_ncols=True)
        self.log = not interactive and not disable
        self.total, self.desc, self.unit = total, desc, unit
        self.done, self.log_seconds = 0, log_seconds
        self.start = self.last_log = time.monotonic()

    def update(self, amount, **postfix):
        self.done += amount
        self.bar.update(amount)
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        now = time.monotonic()
        if self.log and now - self.last_log >= self.log_seconds:
            self.last_log = now
            share = f" ({100 * self.done / self.total:.1f}%)" if self.total else ""
            extra = "".join(f", {k} {v}" for k, v in postfix.items())
            logger.info("%s: %s %s%s after %.0f s%s", self.desc, f"{self.done:,.0f}", self.unit,
                        share, now - self.start, extra)

    def close(self):
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
