"""The prepared GPU check: one run on one H100/H200, under 8 minutes, through the
repository's own code paths, that writes one JSON of figures.

    bash bench/gpu_check.sh                          # the device machine: $OUT/gpu_check.json
    python3 bench/gpu_check.py --output results/gpu_check.json [--budget_seconds 420]
    python3 bench/gpu_check.py --cpu_smoke --output /tmp/gpu_check.json   # tiny, on the CPU

It needs torch, numpy, h5py and tqdm (onnx, onnxscript and onnxruntime for the ONNX export),
no network and no data: the shards, vocabulary and questions are made from the sample text.

Sections, in order, each timed and guarded: an exception is recorded in the section's entry
(status "error", the message and the traceback's end) and the next section runs; a section
is skipped (status "skipped") when less than its reserve of the time budget is left, and the
budget's end interrupts one that overruns (a subprocess is killed at it).
  environment        Python, torch, CUDA, cuDNN, NCCL, the GPU and its driver, apex or not,
                     package versions, the peak used for MFU
  data               HDF5 shards for seq 128 and 512 from data/sample/sample_text.txt
                     (create_pretraining_data.py) and a WordPiece vocabulary of that text
  phase1_bf16/_fp16  BERT-large pre-training steps at seq 128 on one GPU: run_pretraining.main
                     with --steps_this_run; sequences/s is the median of the logged per-step
                     rates after the warm-up steps; MFU as below
  phase2_bf16        the same at seq 512 (--phase2)
  squad_bf16         run_squad.main fine-tuning steps (seq 384) on generated questions with
                     long contexts: steps/s from the logged step times after the warm-up
  export_torchscript triton/export_model.py on the GPU (BERT-base, random question-answering
  export_onnx        weights) with its parity check against PyTorch; the differences found
  ddp_resume         torchrun with one rank: NCCL, DDP with the fp16 all-reduce hook and
                     accumulation; 4 steps, a resume to 8, and 8 in one run: exit statuses,
                     the losses of both, NCCL's warning about destroy_process_group

Model FLOPs and MFU. MFU = model FLOPs per second / the GPU's dense bf16 peak (no sparsity;
989.4 TFLOP/s for the H100 SXM and the H200, also used for fp16). Per sequence of T tokens
(max_seq_length: the model computes padded positions as well when a batch is under 10%
padding; the entry gives the shards' real-token fraction), for L layers of hidden size H and
feed-forward size I, a vocabulary of V rows (padded to a multiple of 8, as the model computes
it) and P masked positions (the shards' mean; the decoder runs on the masked positions only):
    6 * T * L * (4 H^2 + 2 H I)    the encoder's matrix products: Q, K, V and the attention
                                   output (4 H^2), the feed-forward pair (2 H I) per token
  + 12 * L * T^2 * H               attention: the scores Q K^T and their weighted sum of V
  + 6 * P * (H^2 + H V)            the masked-LM head: transform and decoder, masked only
  + 6 * H^2                        the pooler on [CLS] (the next-sentence head's input)
6 = 2 FLOPs per multiply-add x 3 (forward, backward to the inputs, backward to the weights).
Embedding look-ups, layer norms, softmax, GELU, dropout and the optimizer are not counted
(model FLOPs, not hardware FLOPs: activation recomputation would not count either).
"""

import argparse
import collections
import contextlib
import gc
import importlib.metadata
import importlib.util
import io
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import utils  # noqa: E402 - first: hides triton/ from `import triton` (see utils)
import create_pretraining_data  # noqa: E402
import h5py  # noqa: E402
import numpy as np  # noqa: E402
import run_pretraining  # noqa: E402
import run_squad  # noqa: E402
import torch  # noqa: E402
from model import BertConfig, BertForPreTraining, BertForQuestionAnswering  # noqa: E402
from tokenization import BasicTokenizer  # noqa: E402

SAMPLE_TEXT = REPO / "data" / "sample" / "sample_text.txt"
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Dense (no sparsity) bf16 peaks in TFLOP/s, the first name found in the GPU's name wins.
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0),
                    ("L40S", 362.1)]
TINY_CONFIG = {"vocab_size": 0, "hidden_size": 32, "num_hidden_layers": 2,
               "num_attention_heads": 4, "intermediate_size": 37,
               "max_position_embeddings": 128}


@dataclass
class Settings:
    """Sizes of one run: the real check on a GPU, or --cpu_smoke's tiny one on the CPU."""
    config: str                 # pre-training and SQuAD
    small_config: str           # exports and the DDP run
    phase1: tuple               # (max_seq_length, max_predictions_per_seq, batch per step)
    phase2: tuple
    squad: tuple                # (max_seq_length, doc_stride, max_query_length, batch)
    steps: int                  # timed steps per section, after the warm-up
    warmup_steps: int
    text_characters: int        # of the sample text used (0: all of it)
    dupe_factor: int
    questions: int
    context_words: int
    export: tuple               # (max_seq_length, batch)
    ddp_batch: int
    no_cuda: bool


GPU_SETTINGS = Settings(
    config="bert_configs/large.json", small_config="bert_configs/base.json",
    phase1=(128, 20, 256), phase2=(512, 80, 32), squad=(384, 128, 64, 32), steps=20,
    warmup_steps=3, text_characters=0, dupe_factor=3, questions=96, context_words=330,
    export=(128, 4), ddp_batch=64, no_cuda=False)
CPU_SMOKE_SETTINGS = Settings(
    config="tiny", small_config="tiny", phase1=(32, 5, 8), phase2=(64, 10, 4),
    squad=(64, 16, 16, 8), steps=2, warmup_steps=1, text_characters=40_000, dupe_factor=1,
    questions=12, context_words=60, export=(16, 2), ddp_batch=8, no_cuda=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="the JSON of figures")
    parser.add_argument("--work_dir", default="/tmp/bert_gpu_check",
                        help="data, checkpoints and exports (emptied first)")
    parser.add_argument("--budget_seconds", type=float, default=420.0,
                        help="for all sections together")
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="dense bf16 peak for MFU (default: from the GPU's name)")
    parser.add_argument("--cpu_smoke", action="store_true",
                        help="tiny config on the CPU: checks that every section runs")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- model FLOPs

def flops_per_sequence(config, seq, masked_positions):
    """Model FLOPs of one training sequence (forward and backward), as the docstring says."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    encoder = 6 * seq * layers * (4 * hidden**2 + 2 * hidden * config.intermediate_size)
    attention = 12 * layers * seq**2 * hidden
    masked_lm = 6 * masked_positions * (hidden**2 + hidden * config.padded_vocab_size)
    pooler = 6 * hidden**2
    return encoder + attention + masked_lm + pooler


def peak_tflops(device_name):
    for name, tflops in PEAK_BF16_TFLOPS:
        if name in device_name:
            return tflops
    return None


# ----------------------------------------------------------------------------- sections

class SectionTimeout(Exception):
    pass


class Check:
    """The run: settings, folders, the time budget and the figures, written after every
    section so that a killed run leaves what it had."""

    def __init__(self, options, settings):
        self.options, self.settings = options, settings
        self.work = Path(options.work_dir)
        self.output = Path(options.output)
        self.deadline = time.monotonic() + options.budget_seconds
        self.device = "cpu" if settings.no_cuda or not torch.cuda.is_available() else "cuda"
        self.peak = options.peak_tflops
        self.figures = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        "cpu_smoke": options.cpu_smoke, "budget_seconds": options.budget_seconds,
                        "settings": asdict(settings), "sections": {}}

    def left(self):
        return self.deadline - time.monotonic()

    def run(self, name, section, reserve):
        """Runs section(self) -> dict of figures, guarded and timed."""
        entry = {"status": "ok"}
        started = time.monotonic()
        if self.left() < reserve:
            entry = {"status": "skipped",
                     "reason": f"time budget: {self.left():.0f} s left, {reserve} s needed"}
        else:
            print(f"== {name} ({self.left():.0f} s of the budget left)", flush=True)
            try:
                with self.time_limit():
                    entry.update(section(self))
            except Exception as e:  # noqa: BLE001 - recorded, and the next section runs
                entry = {"status": "error", "error": f"{type(e).__name__}: {e}",
                         "traceback": traceback.format_exc().splitlines()[-12:]}
                print(f"{name}: {entry['error']}", flush=True)
            finally:
                release_memory()
        entry["seconds"] = round(time.monotonic() - started, 2)
        self.figures["sections"][name] = entry
        self.figures["total_seconds"] = round(self.options.budget_seconds - self.left(), 2)
        utils.atomic_write_text(self.output, json.dumps(self.figures, indent=2) + "\n")
        return entry

    @contextlib.contextmanager
    def time_limit(self):
        """Raises SectionTimeout in this process when the budget runs out (a section stuck in
        C code is interrupted when it returns to Python)."""
        def expire(signum, frame):
            raise SectionTimeout(f"the time budget ({self.options.budget_seconds:.0f} s) "
                                 "ran out in this section")
        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, max(self.left(), 0.01))
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    def config_path(self, which):
        return Path(which) if which != "tiny" else self.work / "tiny_config.json"


def release_memory():
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib():
    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def version_of(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(check):
    from optimization import _apex_fused_lamb
    info = {"python": sys.version.split()[0], "torch": torch.__version__,
            "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "cudnn": torch.backends.cudnn.version(), "cpu_count": os.cpu_count(),
            "apex": importlib.util.find_spec("apex") is not None,
            "apex_fused_lamb": _apex_fused_lamb() is not None,
            "packages": {name: version_of(name) for name in (
                "numpy", "h5py", "tqdm", "onnx", "onnxscript", "onnxruntime", "transformers",
                "triton")}}
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info.update(gpu=properties.name, gpu_count=torch.cuda.device_count(),
                    gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                    capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                    bf16_supported=torch.cuda.is_bf16_supported(),
                    nccl=nccl_version(),
                    driver=nvidia_smi("driver_version"))
        check.peak = check.peak or peak_tflops(properties.name)
    info["peak_bf16_tflops"] = check.peak
    return info


def nccl_version():
    version = torch.cuda.nccl.version()  # (2, 27, 3); an int in older torch
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def nvidia_smi(field):
    try:
        return subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30,
                              check=True).stdout.split("\n")[0].strip()
    except (OSError, subprocess.SubprocessError):
        return None


def write_vocab(path, text):
    """Words seen at least twice, every character alone and as a '##' piece, and the
    special tokens: enough WordPieces for any word of the text."""
    words = collections.Counter(BasicTokenizer(do_lower_case=True).tokenize(text))
    characters = sorted({c for word in words for c in word})
    tokens = SPECIAL_TOKENS + sorted(w for w, n in words.items() if n >= 2 and len(w) > 1)
    tokens += characters + [f"##{c}" for c in characters]
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return len(tokens)


def make_data(check):
    """The sample text, its vocabulary, the shards of both phases (and the tiny config)."""
    settings = check.settings
    text = SAMPLE_TEXT.read_text(encoding="utf-8")
    if settings.text_characters:
        text = text[:text.rfind("\n\n", 0, settings.text_characters)] + "\n"
    (check.work / "text.txt").write_text(text, encoding="utf-8")
    vocab_size = write_vocab(check.work / "vocab.txt", text)
    if settings.config == "tiny":
        (check.work / "tiny_config.json").write_text(json.dumps(
            {**TINY_CONFIG, "vocab_size": vocab_size}))
    shards = {}
    for phase, (seq, predictions, _) in ((1, settings.phase1), (2, settings.phase2)):
        create_pretraining_data.main(create_pretraining_data.parse_args([
            "--input_file", str(check.work / "text.txt"), "--vocab_file",
            str(check.work / "vocab.txt"), "--do_lower_case",
            "--output_file", str(check.work / f"phase{phase}" / "sample.hdf5"),
            "--max_seq_length", str(seq), "--max_predictions_per_seq", str(predictions),
            "--dupe_factor", str(settings.dupe_factor), "--num_workers",
            str(min(8, os.cpu_count() or 1)), "--disable_progress_bar"]))
        shards[f"phase{phase}"] = shard_statistics(check.work / f"phase{phase}")
    return {"vocab_size": vocab_size, "text_characters": len(text), **shards}


def shard_statistics(folder):
    """Instances, mean masked positions and real-token fraction of a folder's shards."""
    instances, masked, real, total = 0, 0, 0, 0
    for path in sorted(folder.glob("*.hdf5")):
        with h5py.File(path, "r") as f:
            instances += len(f["input_ids"])
            masked += int((np.asarray(f["masked_lm_positions"]) > 0).sum())
            mask = np.asarray(f["input_mask"])
            real, total = real + int(mask.sum()), total + mask.size
    return {"instances": instances, "mean_masked_positions": masked / max(instances, 1),
            "real_token_fraction": real / max(total, 1)}


def logged_steps(dllogger_file):
    """The dllogger LOG records of training steps: (timestamp, data) pairs in order."""
    steps = []
    for line in Path(dllogger_file).read_text().splitlines():
        record = json.loads(line.removeprefix("DLLL "))
        if record["type"] == "LOG" and record["step"]:
            steps.append((float(record["timestamp"]), record["data"]))
    return steps


def phase2_args(check, config_name):
    """Phase 2 starts from weights (run_pretraining refuses random ones): phase 1 writes no
    checkpoint here, so random weights saved once stand in for its last one."""
    path = check.work / "phase2_init.pt"
    if not path.exists():
        model = BertForPreTraining(BertConfig.from_json_file(check.config_path(config_name)))
        torch.save({"model": model.state_dict()}, path)
    return ["--phase2", "--init_checkpoint", str(path)]


def pretraining(precision, phase):
    """A section: BERT pre-training steps of one phase in one precision."""
    def section(check):
        settings = check.settings
        seq, predictions, batch = settings.phase1 if phase == 1 else settings.phase2
        output_dir = check.work / f"phase{phase}_{precision}"
        steps = settings.warmup_steps + settings.steps
        args = run_pretraining.parse_args([
            "--input_dir", str(check.work / f"phase{phase}"), "--config_file",
            str(check.config_path(settings.config)), "--output_dir", str(output_dir),
            "--max_seq_length", str(seq), "--max_predictions_per_seq", str(predictions),
            "--train_batch_size", str(batch), "--learning_rate", "6e-3" if phase == 1 else "4e-3",
            "--warmup_proportion", "0.2843", "--max_steps", "7038", "--steps_this_run",
            str(steps), "--skip_checkpoint", "--log_freq", "1", "--disable_progress_bar",
            f"--{precision}", *(phase2_args(check, settings.config) if phase == 2 else []),
            *(["--no_cuda"] if settings.no_cuda else [])])
        result = run_pretraining.main(args)
        logged = logged_steps(output_dir / "dllogger.json")
        timed = [data["sequences_per_second"] for _, data in logged[settings.warmup_steps:]]
        rate = statistics.median(timed)
        config = BertConfig.from_json_file(args.config_file)
        config.pad_vocab_to_multiple_of = args.pad_vocab_to_multiple_of
        shards = check.figures["sections"].get("data", {}).get(f"phase{phase}", {})
        flops = flops_per_sequence(config, seq, shards.get("mean_masked_positions",
                                                           predictions))
        return {"config": settings.config, "precision": precision, "max_seq_length": seq,
                "batch": batch, "steps": result["step"], "timed_steps": len(timed),
                "sequences_per_second": round(rate, 2),
                "sequences_per_second_range": [round(min(timed), 2), round(max(timed), 2)],
                "model_gflops_per_sequence": round(flops / 1e9, 3),
                "model_tflops_per_second": round(rate * flops / 1e12, 2),
                "mfu": round(rate * flops / (check.peak * 1e12), 4) if check.peak else None,
                "skipped_steps": logged[-1][1]["skipped_steps"],  # fp16 overflows: time counted
                "real_token_fraction": shards.get("real_token_fraction"),
                "final_loss": result["final_loss"], "peak_memory_gib": peak_memory_gib()}
    return section


def write_squad_file(path, text, questions, context_words, seed=0):
    """SQuAD v1.1-style questions on long contexts of the sample text (several windows each,
    as SQuAD's are): "which words follow <four words>?", answered by the next three words."""
    rng = random.Random(seed)
    words = text.split()
    articles = []
    for number in range(questions):
        start = rng.randrange(0, len(words) - context_words)
        context_words_list = words[start:start + context_words]
        at = rng.randrange(4, context_words - 3)
        context = " ".join(context_words_list)
        answer = " ".join(context_words_list[at:at + 3])
        answer_start = len(" ".join(context_words_list[:at])) + 1
        question = f"Which words follow \"{' '.join(context_words_list[at - 4:at])}\"?"
        articles.append({"title": f"sample {number}", "paragraphs": [{"context": context, "qas": [
            {"id": f"q{number}", "question": question,
             "answers": [{"text": answer, "answer_start": answer_start}]}]}]})
    path.write_text(json.dumps({"version": "1.1", "data": articles}), encoding="utf-8")


def squad(check):
    settings = check.settings
    seq, stride, query, batch = settings.squad
    squad_file, output_dir = check.work / "squad.json", check.work / "squad_bf16"
    write_squad_file(squad_file, (check.work / "text.txt").read_text(encoding="utf-8"),
                     settings.questions, settings.context_words)
    steps = settings.warmup_steps + settings.steps
    results = run_squad.main(run_squad.parse_args([
        "--do_train", "--train_file", str(squad_file), "--vocab_file",
        str(check.work / "vocab.txt"), "--config_file", str(check.config_path(settings.config)),
        "--do_lower_case", "--output_dir", str(output_dir), "--max_seq_length", str(seq),
        "--doc_stride", str(stride), "--max_query_length", str(query), "--train_batch_size",
        str(batch), "--max_steps", str(steps), "--learning_rate", "3e-5", "--bf16",
        "--skip_cache", "--skip_checkpoint", "--log_freq", "1", "--disable_progress_bar",
        *(["--no_cuda"] if settings.no_cuda else [])]))
    # Step n's record is written when it ends: the steps after the warm-up run between the
    # records of the warm-up's last step and of the last step.
    times = [timestamp for timestamp, _ in logged_steps(output_dir / "dllogger.json")]
    timed = len(times) - settings.warmup_steps
    seconds = times[-1] - times[settings.warmup_steps - 1]
    steps_per_second = timed / seconds if seconds > 0 else None
    return {"config": settings.config, "precision": "bf16", "max_seq_length": seq,
            "batch": batch, "steps": results["train_steps"], "timed_steps": timed,
            "steps_per_second": round(steps_per_second, 3) if steps_per_second else None,
            "sequences_per_second": round(steps_per_second * batch, 2) if steps_per_second
            else None, "final_loss": results["final_loss"], "peak_memory_gib": peak_memory_gib()}


def import_script(path):
    """A script of triton/ as a module (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def export(fmt):
    """A section: triton/export_model.py to one format on this device, with its parity check
    (it raises past --atol); the differences it printed are the figures."""
    def section(check):
        settings = check.settings
        config_path = check.config_path(settings.small_config)
        checkpoint = check.work / "qa_random.pt"
        if not checkpoint.exists():
            torch.manual_seed(0)
            model = BertForQuestionAnswering(BertConfig.from_json_file(config_path))
            torch.save({"model": model.state_dict()}, checkpoint)
        export_model = import_script(REPO / "triton" / "export_model.py")
        seq, batch = settings.export
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            export_model.main(export_model.parse_args([
                "--task", "squad", "--init_checkpoint", str(checkpoint), "--config_file",
                str(config_path), "--vocab_file", str(check.work / "vocab.txt"),
                "--output_dir", str(check.work / f"export_{fmt}"), "--format", fmt,
                "--max_seq_length", str(seq), "--batch_size", str(batch),
                "--device", check.device]))
        print(printed.getvalue(), end="")
        differences = {m.group(1): float(m.group(2)) for m in re.finditer(
            r"^\w+: (\w+) \(\w+\) max abs diff (\S+)", printed.getvalue(), re.MULTILINE)}
        file = check.work / f"export_{fmt}" / export_model.FILE_NAMES[fmt]
        return {"config": settings.small_config, "device": check.device,
                "max_abs_difference": differences, "atol": 1e-3,
                "file_mib": round(file.stat().st_size / 2**20, 1)}
    return section


def ddp_resume(check):
    """Three torchrun launches of one rank: 4 steps; a resume to 8; 8 in one run."""
    settings = check.settings
    seq, predictions, _ = settings.phase1
    common = ["--input_dir", str(check.work / "phase1"), "--config_file",
              str(check.config_path(settings.small_config)), "--max_seq_length", str(seq),
              "--max_predictions_per_seq", str(predictions), "--train_batch_size",
              str(settings.ddp_batch), "--gradient_accumulation_steps", "2", "--learning_rate",
              "2e-3", "--warmup_proportion", "0.25", "--max_steps", "8", "--fp16",
              "--allreduce_post_accumulation", "--allreduce_post_accumulation_fp16",
              "--log_freq", "1", "--disable_progress_bar",
              *(["--no_cuda"] if settings.no_cuda else [])]
    runs = {"first_4": (check.work / "ddp_split", ["--steps_this_run", "4"]),
            "resumed_to_8": (check.work / "ddp_split", ["--resume_from_checkpoint"]),
            "uninterrupted_8": (check.work / "ddp_whole", [])}
    figures, outputs = {}, {}
    for name, (output_dir, extra) in runs.items():
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc_per_node=1", "run_pretraining.py", *common, "--output_dir",
                   str(output_dir), *extra]
        status, outputs[name] = run_process_group(command, timeout=max(check.left(), 1))
        figures[f"{name}_exit_status"] = status
        if status:
            raise RuntimeError(f"{name} exited with status {status}: "
                               + "\n".join(outputs[name].splitlines()[-15:]))
    split = [data["loss"] for _, data in logged_steps(check.work / "ddp_split" / "dllogger.json")]
    whole = [data["loss"] for _, data in logged_steps(check.work / "ddp_whole" / "dllogger.json")]
    return {**figures, "config": settings.small_config,
            "backend": "gloo" if settings.no_cuda else "nccl",
            "resumed_at_step_4": "start: resume at step 4" in outputs["resumed_to_8"],
            "checkpoints": sorted(p.name for p in (check.work / "ddp_split").glob("ckpt_*.pt")),
            "losses_split": split, "losses_uninterrupted": whole,
            "max_loss_difference": max(abs(a - b) for a, b in zip(split, whole))
            if len(split) == len(whole) == 8 else None,
            "destroy_process_group_warning": any("destroy_process_group" in text
                                                 for text in outputs.values())}


def run_process_group(command, timeout):
    """(exit status, output) of a command run in a process group of its own, all of whose
    processes (torchrun's ranks too) are killed when it outlives `timeout` or this section
    is interrupted. The group stays in this session: the device tool ends a command's
    session when it returns, so ranks cannot outlive a killed gpu_check (a session of
    their own would run on and share the GPU with a rerun)."""
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               preexec_fn=os.setpgrp)  # process_group=0 needs Python 3.11
    try:
        output = process.communicate(timeout=timeout)[0]
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return process.returncode, output


SECTIONS = [  # (name, section, reserve in seconds: less left than this skips it)
    ("environment", environment, 0),
    ("data", make_data, 10),
    ("phase1_bf16", pretraining("bf16", 1), 20),
    ("phase1_fp16", pretraining("fp16", 1), 20),
    ("phase2_bf16", pretraining("bf16", 2), 20),
    ("squad_bf16", squad, 20),
    ("export_torchscript", export("torchscript"), 15),
    ("export_onnx", export("onnx"), 30),
    ("ddp_resume", ddp_resume, 45),
]


def main(options):
    settings = CPU_SMOKE_SETTINGS if options.cpu_smoke else GPU_SETTINGS
    check = Check(options, settings)
    if check.work.exists():
        subprocess.run(["rm", "-rf", str(check.work)], check=True)
    check.work.mkdir(parents=True)
    utils.setup_logging()
    for name, section, reserve in SECTIONS:
        check.run(name, section, reserve)
    statuses = {name: entry["status"] for name, entry in check.figures["sections"].items()}
    print(json.dumps({"total_seconds": check.figures["total_seconds"], **statuses}))
    return check.figures


if __name__ == "__main__":
    main(parse_args())
