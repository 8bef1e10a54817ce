"""Wrappers, Slurm script, configurations and entry points: they parse and explain themselves."""

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import utils
from conftest import REPO

SHELL_SCRIPTS = sorted([*REPO.glob("scripts/*.sh"), *REPO.glob("data/**/*.sh"),
                        *REPO.glob("tests/slurm/*.sh"), *REPO.glob("triton/*.sh"),
                        *REPO.glob("bench/*.sh"),
                        REPO / "run.sub", REPO / ".ci" / "run"])
# Each entry script and flags its --help must explain.
ENTRY_SCRIPTS = {
    "create_pretraining_data.py": ["--input_file", "--vocab_file", "--max_predictions_per_seq"],
    "run_pretraining.py": ["--input_dir", "--phase2", "--resume_from_checkpoint"],
    "run_squad.py": ["--train_file", "--doc_stride", "--version_2_with_negative"],
    "run_glue.py": ["--task_name", "--data_dir", "--do_eval"],
    "inference.py": ["--question", "--context_file", "--n_best_size"],
    "data/bertPrep.py": ["--action", "--dataset"],
    "data/build_vocab.py": ["--input_file", "--vocab_size"],
    "bench/gpu_check.py": ["--output", "--budget_seconds"],
}


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_parse(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck"):
        result = subprocess.run(["shellcheck", "--severity=warning", str(script)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script", ENTRY_SCRIPTS)
def test_entry_scripts_explain_their_arguments(script):
    """--help opens with the module docstring's first paragraph and names the key flags."""
    result = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True,
                            text=True, check=True)
    source = (REPO / script).read_text()
    summary = source.split('"""')[1].split("\n\n")[0]
    assert " ".join(summary.split()) in " ".join(result.stdout.split())
    for flag in ENTRY_SCRIPTS[script]:
        assert f"  {flag} " in result.stdout or f"  {flag}\n" in result.stdout, flag


def test_configurations_parse_and_every_job_splits_its_batch():
    jobs = yaml.safe_load((REPO / "configurations.yml").read_text())["jobs"]
    assert len(jobs) >= 24
    for name, job in jobs.items():
        variables = job["variables"]
        assert variables["BATCHSIZE"] % variables["GRADIENT_STEPS"] == 0, name
        assert variables["PRECISION"] in ("fp16", "bf16", "tf32"), name
        assert variables["PHASE"] in (1, 2), name


@pytest.mark.parametrize("job, gpus_per_node", [("dgxh100_1gpu_bf16_phase1", "GPUS_PER_NODE=1"),
                                                ("dgxh100_8gpu_bf16_phase1", None)])
def test_a_job_on_part_of_a_node_says_how_many_gpus_it_uses(job, gpus_per_node):
    """run.sub refuses fewer tasks than the GPUs it finds, unless GPUS_PER_NODE says so."""
    result = subprocess.run([sys.executable, "scripts/configuration.py", job], cwd=REPO,
                            capture_output=True, text=True, check=True)
    words = result.stdout.split()
    assert "BATCHSIZE=8192" in words
    assert [w for w in words if w.startswith("GPUS_PER_NODE=")] == (
        [gpus_per_node] if gpus_per_node else [])
    tasks = 1 if gpus_per_node else 8
    assert f"--ntasks-per-node={tasks} run.sub" in result.stderr
    assert f"--gpus-per-node={tasks}" in result.stderr


def test_pretraining_wrapper_lists_21_positional_arguments():
    text = (REPO / "scripts" / "run_pretraining.sh").read_text()
    assert re.findall(r"\$\{(\d+):-", text) == [str(i) for i in range(1, 22)]


def test_no_package_shadows_the_triton_library():
    assert not (REPO / "triton" / "__init__.py").exists()
    probe = ("import utils\n"
             "try:\n    import triton\nexcept ImportError:\n    print('absent')\n"
             "else:\n    print(triton.__file__)")
    found = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.strip()
    # Either no Triton library at all, or the real one from site-packages: never our folder.
    assert found == "absent" or (found != "None" and "site-packages" in found), found


def test_every_torch_load_refuses_pickled_code():
    for path in REPO.glob("**/*.py"):
        if ".venv" in path.parts:
            continue
        for line in path.read_text().splitlines():
            if "torch.load" + "(" in line and "def " not in line:  # split: not a call
                assert "weights_only=True" in line, f"{path}: {line.strip()}"


def test_atomic_writes_keep_the_umask_permissions_and_leave_nothing_on_failure(tmp_path):
    previous = os.umask(0o022)
    try:
        utils.atomic_write_text(tmp_path / "shared.txt", "readable by the group")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "shared.txt").stat().st_mode) == 0o644  # not mkstemp's 0600
    with pytest.raises(RuntimeError), utils.atomic_path(tmp_path / "shared.txt") as temporary:
        temporary.write_text("half")
        raise RuntimeError("interrupted")
    assert (tmp_path / "shared.txt").read_text() == "readable by the group"
    assert [p.name for p in tmp_path.iterdir()] == ["shared.txt"]


def test_atomic_writes_sync_the_data_then_rename_then_sync_the_folder(tmp_path, monkeypatch):
    """The order a machine crash needs: data synced, renamed, the folder's entry synced."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(
        ("fsync", os.readlink(f"/proc/self/fd/{fd}"))) or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda source, target: events.append(
        ("replace", str(target))) or real_replace(source, target))
    utils.atomic_write_text(tmp_path / "results.json", "{}")
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    folder = tmp_path.resolve()
    assert Path(events[0][1]).parent == folder and Path(events[0][1]).name.endswith(".tmp")
    assert events[1:] == [("replace", str(tmp_path / "results.json")), ("fsync", str(folder))]


MMAPPED_BYTES_AFTER_A_64_MB_TENSOR = """
import ctypes, sys, torch, utils
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
if sys.argv[1] == "entry-script":
    utils.init_distributed(no_cuda=True)
before = libc.mallinfo2().hblkhd
tensor = torch.empty(2**24)
print(libc.mallinfo2().hblkhd - before)
"""


@pytest.mark.skipif(not utils._runs_on_glibc(), reason="malloc tuning is for glibc only")
@pytest.mark.parametrize("process", ["plain", "entry-script"])
def test_cpu_entry_scripts_serve_large_tensors_from_the_heap(process):
    """glibc maps a block over 32 MB afresh and unmaps it when freed (page faults on every
    step's big tensors); after init_distributed on the CPU it comes from the reusable heap."""
    result = subprocess.run([sys.executable, "-c", MMAPPED_BYTES_AFTER_A_64_MB_TENSOR, process],
                            capture_output=True, text=True, cwd=REPO, check=True)
    mmapped = int(result.stdout.split()[-1])
    assert mmapped == 0 if process == "entry-script" else mmapped >= 2**26


ZEN3_FLAGS = "flags\t\t: fpu sse2 avx avx2 fma f16c sha_ni vaes vpclmulqdq\n"
SAPPHIRE_RAPIDS_FLAGS = "flags\t\t: avx2 avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile\n"
GRAVITON3_FEATURES = "Features\t: fp asimd asimdhp sve bf16 i8mm\n"


@pytest.mark.parametrize("cpuinfo, precision, native", [
    (ZEN3_FLAGS, "bf16", False), (ZEN3_FLAGS, "fp16", False), (ZEN3_FLAGS, "fp32", True),
    (SAPPHIRE_RAPIDS_FLAGS, "bf16", True), (SAPPHIRE_RAPIDS_FLAGS, "fp16", True),
    (GRAVITON3_FEATURES, "bf16", True), (GRAVITON3_FEATURES, "fp16", True),
    ("processor\t: 0\nmodel name\t: bf16 avx512_bf16 in a name is no flag\n", "bf16", False),
])
def test_cpu_native_precision_is_read_from_the_flags(tmp_path, monkeypatch, cpuinfo, precision,
                                                      native):
    monkeypatch.setattr(utils, "CPUINFO", tmp_path / "cpuinfo")
    utils.CPUINFO.write_text(cpuinfo)
    assert utils.cpu_runs_natively(precision) is native


def test_cpu_native_precision_is_unknown_without_cpuinfo(tmp_path, monkeypatch):
    monkeypatch.setattr(utils, "CPUINFO", tmp_path / "missing")
    assert utils.cpu_runs_natively("bf16") is None


def test_emulated_mixed_precision_is_warned_about(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(utils, "CPUINFO", tmp_path / "cpuinfo")
    utils.CPUINFO.write_text(ZEN3_FLAGS)
    with caplog.at_level("WARNING", logger="bert"):
        utils.init_distributed(no_cuda=True, precision="bf16")
        utils.init_distributed(no_cuda=True, precision="fp32")
    [record] = caplog.records
    assert "--bf16 on a CPU without bf16 matrix instructions" in record.getMessage()
    assert "leave out --bf16" in record.getMessage()


@pytest.mark.parametrize("capability, warned", [((7, 0), True), ((8, 0), False)])
def test_bf16_on_a_gpu_before_ampere_is_warned_about(monkeypatch, caplog, capability,
                                                     warned):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Tesla V100")
    with caplog.at_level("WARNING", logger="bert"):
        utils.warn_if_emulated("bf16", torch.device("cuda", 0))
        utils.warn_if_emulated("fp16", torch.device("cuda", 0))
    messages = [record.getMessage() for record in caplog.records]
    assert messages == (["--bf16 on Tesla V100 (compute capability 7.0): bf16 tensor cores "
                         "came with Ampere (8.0), and torch emulates bf16 here, slower than "
                         "fp32; use --fp16 on this GPU"] if warned else [])


def test_rng_states_come_back_per_rank_or_are_seeded_afresh(caplog):
    """Saved by as many ranks, each rank takes its own state; by another number, sharing
    them out would give two ranks one dropout stream: each seeds afresh instead."""
    cpu = torch.device("cpu")
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append(utils.rng_state(cpu))
    utils.restore_rng_states(states, utils.Distributed(1, 1, 2, cpu), seed=7, step=10)
    after_own = torch.rand(3)
    torch.set_rng_state(states[1]["torch"])
    assert torch.equal(after_own, torch.rand(3))

    draws = []
    for rank in range(4):
        utils.restore_rng_states(states, utils.Distributed(rank, rank, 4, cpu), seed=7, step=10)
        draws.append(torch.rand(3))
    assert all(not torch.equal(draws[0], other) for other in draws[1:])
    assert "the checkpoint holds the random state of 2 rank(s), this run has 4" in caplog.text


def test_ranks_that_disagree_stop_with_each_ranks_view(monkeypatch):
    def gathered(values, value):
        values[:] = [value, ("resume", 4, False)]
    monkeypatch.setattr(utils.dist, "all_gather_object", gathered)
    two_ranks = utils.Distributed(0, 0, 2, torch.device("cpu"), in_group=True)
    utils.check_same_on_all_ranks(("resume", 4, False), two_ranks, "where to start")
    with pytest.raises(RuntimeError, match=r"the ranks disagree on where to start: rank 0: "
                                           r"\('resume', 8, False\), rank 1: \('resume', 4"):
        utils.check_same_on_all_ranks(("resume", 8, False), two_ranks, "where to start")


def test_the_preemption_flag_gives_the_signals_back():
    before = signal.getsignal(signal.SIGUSR1)
    with utils.PreemptionFlag() as flag:
        assert signal.getsignal(signal.SIGUSR1) == flag._handle
    assert signal.getsignal(signal.SIGUSR1) == before


def test_pretraining_catches_signals_until_its_end_and_then_gives_them_back(monkeypatch):
    """Through end_distributed (the other ranks wait there for rank 0's last checkpoint),
    also when the run fails."""
    import run_pretraining
    seen = {}

    def failing_run(args, preemption):
        seen["during"] = signal.getsignal(signal.SIGTERM)
        raise RuntimeError("failed")
    monkeypatch.setattr(run_pretraining, "pretrain", failing_run)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RuntimeError, match="failed"):
        run_pretraining.main(None)
    assert seen["during"] not in (before, signal.SIG_DFL)
    assert signal.getsignal(signal.SIGTERM) == before
