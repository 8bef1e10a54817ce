"""Faults and bad input around pre-training: one-line errors, unreadable checkpoints, the
leftovers of killed saves, unwritable output folders, skipped fp16 steps, the fp16
all-reduce and the readable log line."""

import math
import os
import pickle
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import run_pretraining
import utils
from conftest import REPO
from test_run_pretraining import args_for, shards  # noqa: F401 - the module's fixture


def run_script(*arguments, env=None):
    return subprocess.run([sys.executable, *map(str, arguments)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


# ----------------------------------------------------------------------------- errors

def test_bad_input_prints_one_line_without_a_traceback(tmp_path):
    result = run_script("run_pretraining.py", "--input_dir", tmp_path, "--config_file",
                        tmp_path / "missing.json", "--output_dir", tmp_path / "out")
    assert result.returncode == 1
    assert result.stderr == (f"run_pretraining.py: error: BERT config file "
                             f"{tmp_path / 'missing.json'} does not exist\n")


def test_under_several_ranks_each_rank_names_itself_in_its_error(tmp_path):
    # An error can be one rank's alone (its shard, its GPU): none may stay silent.
    env = {**os.environ, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}
    result = run_script("create_pretraining_data.py", "--input_file", tmp_path / "none.txt",
                        "--output_file", tmp_path / "out", "--vocab_file", tmp_path / "v.txt",
                        env=env)
    assert result.returncode == 1
    assert result.stderr.startswith("rank 1: create_pretraining_data.py: error: ")
    assert result.stderr.count("\n") == 1


def test_errors_from_libraries_keep_their_traceback():
    def ours():
        raise ValueError("--flag is wrong")

    def in_c_code():
        int("not a number")

    for function, expected in ((ours, True), (in_c_code, False)):
        with pytest.raises(ValueError) as caught:
            function()
        assert utils.raised_in_repository(caught.value) is expected


# ----------------------------------------------------------------------------- checkpoints

def unreadable_files(folder):
    """Checkpoint-named files that torch.load(weights_only=True) cannot read."""
    (folder / "ckpt_9.pt").write_bytes(b"")
    (folder / "ckpt_8.pt").write_bytes(os.urandom(4096))
    (folder / "ckpt_7.pt").write_bytes(pickle.dumps({"model": {}}))
    torch.save({"hook": subprocess.Popen}, folder / "ckpt_6.pt")
    return {"ckpt_9.pt": "the file is empty", "ckpt_8.pt": "not a torch checkpoint",
            "ckpt_7.pt": "not a torch checkpoint", "ckpt_6.pt": "objects other than tensors"}


def test_resume_skips_unreadable_checkpoints_naming_each_and_why(shards, tmp_path, caplog):
    run_pretraining.main(args_for(*shards, tmp_path, "--steps_this_run", 2))
    reasons = unreadable_files(tmp_path)
    result = run_pretraining.main(args_for(*shards, tmp_path, "--resume_from_checkpoint",
                                           "--steps_this_run", 1))
    assert result["step"] == 3  # resumed from ckpt_2.pt, the newest readable one
    for name, reason in reasons.items():
        line = next(line for line in caplog.text.splitlines() if name in line)
        assert "skipping unreadable checkpoint" in line and reason in line, line
    assert "weights_only" not in caplog.text
    # The unreadable higher numbers do not count towards the newest three that are kept,
    # or the run's own checkpoints would be deleted as it writes them.
    assert utils.load_latest_checkpoint(tmp_path)[0].name == "ckpt_3.pt"
    assert {"ckpt_2.pt", *reasons} <= {p.name for p in tmp_path.glob("ckpt_*.pt")}


def test_an_unreadable_init_checkpoint_is_a_clear_error(shards, tmp_path):
    reasons = unreadable_files(tmp_path)
    for name, reason in reasons.items():
        with pytest.raises(ValueError, match=reason) as caught:
            run_pretraining.main(args_for(*shards, tmp_path / "run", "--init_checkpoint",
                                          tmp_path / name))
        assert str(tmp_path / name) in str(caught.value)
        assert "weights_only" not in str(caught.value)


def test_a_checkpoint_in_the_format_of_torch_before_1_6_loads(tmp_path):
    weights = {"model": {"bert.pooler.dense.bias": torch.arange(4.0)}, "step": 7}
    torch.save(weights, tmp_path / "ngc_2019.pt", _use_new_zipfile_serialization=False)
    loaded = utils.load_tensors(tmp_path / "ngc_2019.pt")
    assert loaded["step"] == 7
    assert torch.equal(loaded["model"]["bert.pooler.dense.bias"], torch.arange(4.0))


def test_leftovers_of_killed_saves_are_removed_and_nothing_else(shards, tmp_path, caplog):
    run_pretraining.main(args_for(*shards, tmp_path, "--steps_this_run", 1))
    leftover = tmp_path / ".ckpt_4.pt.k2j3h4.tmp"
    leftover.write_bytes(b"x" * 1000)
    others = [tmp_path / ".ckpt_notes.tmp", tmp_path / "ckpt_4.pt.tmp", tmp_path / "notes.txt"]
    for other in others:
        other.write_text("keep")
    run_pretraining.main(args_for(*shards, tmp_path, "--resume_from_checkpoint",
                                  "--steps_this_run", 1))
    assert not leftover.exists()
    assert all(other.read_text() == "keep" for other in others)
    assert sorted(p.name for p in tmp_path.glob("ckpt_*.pt")) == ["ckpt_1.pt", "ckpt_2.pt"]
    assert f"removed {leftover}" in caplog.text


def test_an_output_dir_that_cannot_be_written_fails_before_training(shards, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match=f"--output_dir {blocker / 'run'} is not a "
                                              "writable folder"):
        run_pretraining.main(args_for(*shards, blocker / "run"))
    assert blocker.read_text() == "not a folder"


# ----------------------------------------------------------------------------- fp16 steps

def test_a_scale_that_reached_zero_still_counts_the_step_as_skipped():
    parameter = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=0.0)  # where halving ends
    scaler.scale(parameter.sum()).backward()
    parameter.grad[0] = float("nan")
    assert utils.optimizer_step(optimizer, scheduler, scaler) is False
    assert torch.equal(parameter.detach(), torch.ones(3)) and scheduler.last_epoch == 0


def never_applied(trainer, stream):
    next(stream)
    return torch.zeros(3), 1e-3, False


def test_endless_skipped_steps_stop_with_an_error(shards, tmp_path, monkeypatch):
    monkeypatch.setattr(run_pretraining.Trainer, "step", never_applied)
    with pytest.raises(FloatingPointError, match="5 optimizer steps in a row were skipped after "
                                                 "step 0.*--max_skipped_steps"):
        run_pretraining.main(args_for(*shards, tmp_path, "--fp16", "--max_skipped_steps", 5))


def test_preemption_is_seen_while_steps_are_skipped(shards, tmp_path, monkeypatch):
    def skipped_then_signalled(trainer, stream):
        os.kill(os.getpid(), 10)  # SIGUSR1, as Slurm sends before pre-emption
        return never_applied(trainer, stream)

    monkeypatch.setattr(run_pretraining.Trainer, "step", skipped_then_signalled)
    result = run_pretraining.main(args_for(*shards, tmp_path, "--fp16"))
    assert result["step"] == 0
    assert [p.name for p in tmp_path.glob("ckpt_*.pt")] == ["ckpt_0.pt"]


def test_phase2_stopped_before_its_first_step_leaves_phase1s_checkpoint(shards, tmp_path,
                                                                       monkeypatch):
    run_pretraining.main(args_for(*shards, tmp_path))  # phase 1: ckpt_8.pt
    phase1 = (tmp_path / "ckpt_8.pt").read_bytes()

    def skipped_then_signalled(trainer, stream):
        os.kill(os.getpid(), 10)
        return never_applied(trainer, stream)

    monkeypatch.setattr(run_pretraining.Trainer, "step", skipped_then_signalled)
    result = run_pretraining.main(args_for(*shards, tmp_path, "--fp16", "--phase2",
                                           "--resume_from_checkpoint", "--phase1_end_step", 8))
    assert result["step"] == 0 and result["preempted"]
    assert [p.name for p in tmp_path.glob("ckpt_*.pt")] == ["ckpt_8.pt"]
    assert (tmp_path / "ckpt_8.pt").read_bytes() == phase1


def test_a_loss_that_is_not_finite_stops_before_a_checkpoint_of_it(shards, tmp_path,
                                                                  monkeypatch):
    """bf16 and fp32 have no scaler to skip the step: the run must stop, not save NaN
    weights over the last good checkpoint."""
    real_step = run_pretraining.Trainer.step

    def diverging_after_step_3(trainer, stream):
        losses, learning_rate, applied = real_step(trainer, stream)
        if trainer.scheduler.last_epoch > 3:
            losses = torch.full_like(losses, float("nan"))
        return losses, learning_rate, applied

    monkeypatch.setattr(run_pretraining.Trainer, "step", diverging_after_step_3)
    with pytest.raises(FloatingPointError, match="the loss at step 4 is not finite .*nothing "
                                                 "was saved from this point"):
        run_pretraining.main(args_for(*shards, tmp_path, "--num_steps_per_checkpoint", 2,
                                      "--log_freq", 1))
    assert sorted(p.name for p in tmp_path.glob("ckpt_*.pt")) == ["ckpt_2.pt"]


def test_a_bf16_checkpoint_resumes_under_fp16(shards, tmp_path):
    """A run without a loss scaler saves its empty state: an fp16 resume keeps its own."""
    run_pretraining.main(args_for(*shards, tmp_path, "--bf16", "--steps_this_run", 2))
    assert torch.load(tmp_path / "ckpt_2.pt", weights_only=True)["grad_scaler"] == {}
    result = run_pretraining.main(args_for(*shards, tmp_path, "--fp16", "--resume_from_checkpoint",
                                           "--steps_this_run", 1))
    assert result["step"] == 3
    before, after = (torch.load(tmp_path / f"ckpt_{step}.pt", weights_only=True)
                     for step in (2, 3))
    # The scaler starts from --init_loss_scale (2**20, halved per skipped step); LAMB goes on
    # from the checkpoint's moments, one update further.
    scale = after["grad_scaler"]["scale"]
    assert scale <= 2.0**20 and math.log2(scale).is_integer()
    for index, state in before["optimizer"]["state"].items():
        assert after["optimizer"]["state"][index]["step"] == state["step"] + 1


# ----------------------------------------------------------------------------- fp16 all-reduce

def _fp16_hook_rank(rank, store_file, results):
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=2)
    try:
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1, bias=False))
        model.register_comm_hook(None, run_pretraining.fp16_mean_allreduce_hook)
        # Rank 0's gradient overflows fp16 on its own (above 65504); the mean over the two
        # ranks fits, exactly (a multiple of fp16's spacing of 32 there).
        scale = 98304.0 if rank == 0 else 0.0
        (model(torch.ones(1, 4)).sum() * scale).backward()
        results[rank] = model.module.weight.grad.clone()
    finally:
        dist.destroy_process_group()


def test_fp16_allreduce_divides_before_the_cast(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_fp16_hook_rank, args=(str(tmp_path / "store"), results), nprocs=2)
    for rank in (0, 1):
        assert torch.equal(results[rank], torch.full((1, 4), 49152.0))


# ----------------------------------------------------------------------------- log line

def test_readable_log_line_names_phase_and_step(shards, tmp_path, caplog):
    run_pretraining.main(args_for(*shards, tmp_path, "--max_steps", 2))
    assert "phase 1 step 2/2: loss " in caplog.text
