"""run.sub under a real Slurm controller: two phases, two nodes, pre-emption and requeue,
cancelling, a failed rank, the default task layout and a job refused for its GPUs.

    BERT_SLURM_TESTS=require bash tests/slurm/run_slurm_tests.sh   # CI: a skip is a failure

run_slurm_tests.sh installs Debian's slurm-wlm and munge when they are missing and runs this
file; the `cluster` fixture starts a cluster on this machine with tests/slurm/cluster.sh (two
nodes, each a slurmd of its own; partitions `batch`, and `urgent`, whose jobs pre-empt batch
jobs) and stops it at the end. Jobs are `sbatch --nodes=1 --ntasks-per-node=2 run.sub` as a
user would submit them (or two nodes with one task each): two ranks on CPU with gloo, fp32,
the virtualenv this Python runs in, a tiny BERT on the sample text. The cluster has no GPUs
(no GRES: a GPU request is refused there), so jobs ask for none; run.sub's default CPU binding
is accepted and ignored (task/none). Without BERT_SLURM_TESTS (the default test run) the
module is skipped: it starts daemons as root.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO, write_pretraining_inputs

MODE = os.environ.get("BERT_SLURM_TESTS", "")
CLUSTER_SCRIPT = REPO / "tests" / "slurm" / "cluster.sh"
PHASE1_STEPS, PHASE2_STEPS = 80, 6
SHAPES = {1: (32, 5), 2: (64, 10)}  # phase: (max_seq_length, max_predictions_per_seq)
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "PREEMPTED", "BOOT_FAIL", "DEADLINE"}

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not MODE, reason="starts Slurm daemons as root: run "
                                                  "tests/slurm/run_slurm_tests.sh")]


def unavailable(reason):
    """Skip, or fail where the caller said the cluster must run (BERT_SLURM_TESTS=require)."""
    if MODE == "require":
        pytest.fail(f"BERT_SLURM_TESTS=require, but {reason}")
    pytest.skip(reason)


# ----------------------------------------------------------------------------- the cluster

class Cluster:
    """sbatch/scontrol against the cluster whose files are in `folder`."""

    def __init__(self, folder):
        self.folder = folder
        # The jobs inherit this environment (sbatch --export=ALL): no ranks of an outer
        # launcher, no variables of an outer Slurm job.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and
                    k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
        self.env["SLURM_CONF"] = str(folder / "slurm.conf")

    def run(self, *command, env=None):
        result = subprocess.run([str(c) for c in command], cwd=REPO, env=env or self.env,
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, f"{' '.join(map(str, command))}: {result.stderr}"
        return result.stdout

    def sbatch(self, *arguments, **variables):
        """Submits and returns the job id; `variables` go into the job's environment."""
        env = {**self.env, **{k: str(v) for k, v in variables.items()}}
        return self.run("sbatch", "--parsable", *arguments, env=env).strip().split(";")[0]

    def job(self, job_id):
        """scontrol's record of the job as a dict (JobState, Restarts, ExitCode, Reason...)."""
        return dict(re.findall(r"(\w+)=(\S*)", self.run("scontrol", "-o", "show", "job",
                                                          job_id)))

    def wait(self, job_id, until, what, timeout=180):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.job(job_id)
            if until(record):
                return record
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} not {what} after {timeout} s: {record}\n"
                             f"{self.log_tail()}")

    def wait_finished(self, job_id, timeout=180):
        return self.wait(job_id, lambda job: job["JobState"] in FINISHED, "finished", timeout)

    def wait_until_idle(self, waiting=(), timeout=120):
        """Returns once no job but those in `waiting` is left and the node is idle (jobs done
        and cleaned up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = self.run("squeue", "--noheader", "--format=%A").split()
            states = self.run("sinfo", "--noheader", "--Node", "--format=%T").split()
            if sorted(jobs) == sorted(waiting) and set(states) == {"idle"}:
                return
            time.sleep(0.2)
        raise AssertionError(f"jobs {jobs} and node states {states} after {timeout} s\n"
                             f"{self.log_tail()}")

    def log_tail(self, lines=20):
        tails = []
        for path in sorted(self.folder.glob("slurm*.log")):
            text = path.read_text(errors="replace").splitlines()
            tails.append(f"--- {path.name}\n" + "\n".join(text[-lines:]))
        return "\n".join(tails)


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        unavailable(f"Slurm's daemons need root; this is uid {os.geteuid()}")
    missing = [p for p in ("munged", "slurmctld", "slurmd", "sbatch") if not shutil.which(p)]
    if missing:
        unavailable(f"{', '.join(missing)} not found: tests/slurm/run_slurm_tests.sh installs "
                    f"slurm-wlm and munge with apt-get")
    folder = Path(tempfile.mkdtemp(prefix="bert-slurm-"))  # munged must reach it: not under
    try:                                                    # pytest's private folders
        started = subprocess.run(["bash", CLUSTER_SCRIPT, "start", folder], capture_output=True,
                                 text=True, timeout=120, check=False)
        if started.returncode:
            unavailable(f"the Slurm cluster did not start: {started.stderr.strip()[-2000:]}")
        yield Cluster(folder)
    finally:
        subprocess.run(["bash", CLUSTER_SCRIPT, "stop", folder], timeout=120, check=False)
        shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------- the jobs

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """HDF5 shards of the sample text for both phases, the vocabulary and a tiny config."""
    folder = tmp_path_factory.mktemp("slurm_data")
    write_pretraining_inputs(folder, {f"phase{phase}": shape for phase, shape in SHAPES.items()})
    return folder


def submit_pretraining(cluster, data, results, phase, *sbatch_args, nodes=1, **variables):
    """`sbatch run.sub` for a tiny run of `phase` on two ranks (on one node or two) writing to
    `results`; returns the job id. OMP_NUM_THREADS=1: the ranks share the machine's CPUs, and
    every run computes alike."""
    seq, predictions = SHAPES[phase]
    results.mkdir(parents=True, exist_ok=True)
    settings = dict(PHASE=phase, BATCHSIZE=32, GRADIENT_STEPS=2, LR="2e-3", WARMUP=0.25,
                    TRAIN_STEPS=PHASE1_STEPS if phase == 1 else PHASE2_STEPS,
                    PHASE1_END_STEP=PHASE1_STEPS, CKPT_STEPS=1000, SEQ=seq,
                    PREDICTIONS=predictions, PRECISION="fp32", SEED=3,
                    DATADIR=data / f"phase{phase}", CONFIG=data / "config.json",
                    RESULTS=results, VENV=sys.prefix, OMP_NUM_THREADS=1)
    settings.update(variables)
    return cluster.sbatch(f"--nodes={nodes}", f"--ntasks-per-node={2 // nodes}",
                          f"--output={results}/slurm-%j.out", *sbatch_args, REPO / "run.sub",
                          **settings)


def records(results):
    """The dllogger LOG records of RESULTS/dllogger.json: ([phase, step], data) pairs, with
    [] as the step of each run's closing summary."""
    path = results / "dllogger.json"
    if not path.exists():
        return []
    lines = [json.loads(line.removeprefix("DLLL ")) for line in path.read_text().splitlines()]
    return [(r["step"], r["data"]) for r in lines if r["type"] == "LOG"]


def step_losses(results, phase):
    return [(step[1], data["loss"]) for step, data in records(results) if step[:1] == [phase]]


def final_losses(results):
    return [data["final_loss"] for step, data in records(results) if not step]


def job_log(results, job_id):
    return (results / f"slurm-{job_id}.out").read_text(errors="replace")


def wait_for_step(cluster, results, job_id, step, timeout=180):
    """Returns once the job has logged optimizer step `step` of phase 1."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(s == step for s, _ in step_losses(results, 1)):
            return
        job = cluster.job(job_id)
        assert job["JobState"] not in FINISHED, f"job {job_id} ended before step {step}: " \
                                                f"{job}\n{job_log(results, job_id)}"
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not reach step {step} in {timeout} s:\n"
                         f"{job_log(results, job_id)}")


def assert_completed(cluster, job_id, results):
    job = cluster.wait_finished(job_id)
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), \
        f"{job}\n--- the job's output\n{job_log(results, job_id)}\n{cluster.log_tail()}"
    return job


@pytest.fixture(scope="module")
def two_phases(cluster, data, tmp_path_factory):
    """Phase 1, and phase 2 submitted at once behind it (--dependency=afterok), sharing
    RESULTS and so the checkpoint folder; both run to the end. Returns RESULTS and the ids."""
    results = tmp_path_factory.mktemp("two_phases")
    phase1 = submit_pretraining(cluster, data, results, 1)
    phase2 = submit_pretraining(cluster, data, results, 2, f"--dependency=afterok:{phase1}")
    assert_completed(cluster, phase1, results)
    assert_completed(cluster, phase2, results)
    return results, phase1, phase2


# ----------------------------------------------------------------------------- the tests

def test_two_phases_run_to_the_end(two_phases):
    results, phase1, phase2 = two_phases
    last = PHASE1_STEPS + PHASE2_STEPS
    checkpoints = sorted(p.name for p in (results / "checkpoints").glob("ckpt_*.pt"))
    assert checkpoints == [f"ckpt_{PHASE1_STEPS}.pt", f"ckpt_{last}.pt"]
    assert [s for s, _ in step_losses(results, 1)] == list(range(1, PHASE1_STEPS + 1))
    assert [s for s, _ in step_losses(results, 2)] == list(range(1, PHASE2_STEPS + 1))
    assert len(final_losses(results)) == 2
    losses = [loss for _, loss in step_losses(results, 1)]
    assert losses[-1] < losses[0]
    assert "start: scratch at step 0, fp32, 2 process(es)" in job_log(results, phase1)
    log = job_log(results, phase2)
    assert f"phase 2 starts from the weights of phase 1's {results}/checkpoints/ckpt_{PHASE1_STEPS}.pt" in log
    assert "start: weights at step 0, fp32, 2 process(es)" in log


def test_two_nodes_train_as_one(cluster, data, two_phases, tmp_path):
    """One rank on each of two nodes (MASTER_ADDR the first of them, LOCAL_RANK 0 on both):
    the same two-rank run as on one node, loss for loss."""
    job_id = submit_pretraining(cluster, data, tmp_path, 1, nodes=2)
    job = assert_completed(cluster, job_id, tmp_path)
    assert job["NumNodes"] == "2", job
    assert step_losses(tmp_path, 1) == step_losses(two_phases[0], 1)
    assert final_losses(tmp_path) == final_losses(two_phases[0])[:1]


def preempt_by_urgent_job(cluster, job_id, results):
    """A job in partition `urgent` needs both nodes: Slurm pre-empts the batch job and sends
    run.sub's own --signal=B:USR1 to its batch shell at once (preempt_send_user_signal)."""
    cluster.sbatch("--partition=urgent", "--nodes=2", "--exclusive",
                   f"--output={results}/urgent-%j.out", "--wrap=echo urgent job ran")


def signal_batch_shell(cluster, job_id, results):
    """USR1 to the batch shell only, as --signal=B:USR1@300 sends it before the time limit."""
    cluster.run("scancel", "--signal=USR1", "--batch", job_id)


def signal_ranks(cluster, job_id, results):
    """TERM to the job step alone, as pre-emption without preempt_send_user_signal sends it."""
    cluster.run("scancel", "--signal=TERM", job_id)


@pytest.mark.parametrize("interrupt, seen_by_run_sub, seen_by_ranks", [
    (preempt_by_urgent_job, "USR1", "SIGUSR1"),
    (signal_batch_shell, "USR1", "SIGUSR1"),
    (signal_ranks, "a signal to the ranks", "SIGTERM"),
], ids=["pre-emption", "batch-shell-USR1", "ranks-TERM"])
def test_interrupted_job_requeues_and_ends_as_if_uninterrupted(
        cluster, data, two_phases, tmp_path, interrupt, seen_by_run_sub, seen_by_ranks):
    """Both ranks checkpoint and exit, run.sub requeues the job, and the second run resumes
    from that checkpoint: its losses are those of the uninterrupted phase 1, bit for bit (same
    seed, same data order, each rank's RNG state restored, CPU fp32 with one thread)."""
    job_id = submit_pretraining(cluster, data, tmp_path, 1)
    wait_for_step(cluster, tmp_path, job_id, 3)
    interrupt(cluster, job_id, tmp_path)
    start_requeued_job_now(cluster, job_id)  # after the urgent job where there is one
    assert_completed(cluster, job_id, tmp_path)

    log = job_log(tmp_path, job_id)
    saved = re.findall(f"received {seen_by_ranks}: saved step (\\d+), exiting", log)
    assert len(saved) == 2 and saved[0] == saved[1], log  # one line per rank
    step = int(saved[0])
    assert 3 <= step < PHASE1_STEPS, log
    assert f"stopped by {seen_by_run_sub} before the last step ({PHASE1_STEPS}) of phase 1: " \
           f"requeueing job {job_id}" in log, log
    assert f"resuming from {tmp_path}/checkpoints/ckpt_{step}.pt" in log
    assert f"start: resume at step {step}" in log

    reference = two_phases[0]
    assert step_losses(tmp_path, 1) == step_losses(reference, 1)
    interrupted_final, resumed_final = final_losses(tmp_path)
    assert interrupted_final == dict(step_losses(reference, 1))[step]
    assert resumed_final == final_losses(reference)[0]


def start_requeued_job_now(cluster, job_id):
    """Slurm holds a requeued job back for two minutes (Reason=BeginTime), time for its first
    run to be cleaned up; start it once the node is idle instead (a start while the node
    still completes the first run fails the job). slurmd revoked the first run's credential
    when it ended, with a time stamp in whole seconds, and refuses a launch whose credential
    is from that same second ("Job credential revoked"): the early start waits two seconds
    more."""
    cluster.wait(job_id, lambda job: job["Restarts"] == "1" and job["JobState"] == "PENDING",
                 "requeued")
    cluster.wait_until_idle(waiting=[job_id])
    time.sleep(2)
    cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")


def test_steps_this_run_requeues_the_job_until_the_phase_is_done(cluster, data, two_phases,
                                                                tmp_path):
    """STEPS_THIS_RUN=50 of 80 steps: the first run ends with status 0 and no last
    checkpoint, so run.sub requeues (an `afterok` phase 2 must not start yet); the second
    run ends the phase with the uninterrupted run's losses."""
    job_id = submit_pretraining(cluster, data, tmp_path, 1, STEPS_THIS_RUN=50)
    start_requeued_job_now(cluster, job_id)
    assert_completed(cluster, job_id, tmp_path)
    log = job_log(tmp_path, job_id)
    assert f"ran STEPS_THIS_RUN=50 steps, before the last step ({PHASE1_STEPS}) of phase 1: " \
           f"requeueing job {job_id}" in log, log
    assert step_losses(tmp_path, 1) == step_losses(two_phases[0], 1)


def test_cancelled_job_stays_cancelled_and_resumes_when_submitted_again(cluster, data,
                                                                        two_phases, tmp_path):
    """scancel sends TERM to every process of the job: the ranks save what they can, run.sub
    does not requeue (a cancel is the user's decision), and the same sbatch again continues
    from the newest checkpoint to the losses of the uninterrupted run."""
    job_id = submit_pretraining(cluster, data, tmp_path, 1)
    wait_for_step(cluster, tmp_path, job_id, 3)
    cluster.run("scancel", job_id)
    cluster.wait_until_idle()
    job = cluster.job(job_id)
    assert (job["JobState"], job["Restarts"]) == ("CANCELLED", "0"), job
    log = job_log(tmp_path, job_id)
    assert "stopped by TERM before the last step" in log and "requeueing" not in log, log

    again = submit_pretraining(cluster, data, tmp_path, 1)
    assert_completed(cluster, again, tmp_path)
    reference = two_phases[0]
    # A step logged but not yet saved when the ranks were stopped is run and logged again.
    assert dict(step_losses(tmp_path, 1)) == dict(step_losses(reference, 1))
    assert final_losses(tmp_path)[-1] == final_losses(reference)[0]


def test_a_killed_rank_fails_the_job_quickly(cluster, data, tmp_path):
    """SIGKILL to rank 1, on the second node: srun --kill-on-bad-exit ends rank 0 as well (it
    would otherwise wait in an all-reduce), the job fails and is not requeued."""
    job_id = submit_pretraining(cluster, data, tmp_path, 1, nodes=2, TRAIN_STEPS=100000)
    try:
        wait_for_step(cluster, tmp_path, job_id, 2)
        rank1 = rank_pids(cluster, job_id)[1]
        killed = time.monotonic()
        os.kill(rank1, signal.SIGKILL)
        job = cluster.wait_finished(job_id, timeout=120)
        seconds = time.monotonic() - killed
    finally:
        subprocess.run(["scancel", job_id], env=cluster.env, capture_output=True, check=False)
    assert job["JobState"] == "FAILED" and job["ExitCode"] != "0:0", job
    assert job["Restarts"] == "0"
    assert seconds < 30, f"the job took {seconds:.0f} s to fail after rank 1 was killed (does " \
                         f"a process of the rank outlive it, holding the job's output open?)"
    assert "requeueing" not in job_log(tmp_path, job_id)


def rank_pids(cluster, job_id):
    """{global rank: PID} of the job's first step, from the slurmd of each of its nodes."""
    nodes = cluster.run("scontrol", "show", "hostnames", cluster.job(job_id)["NodeList"])
    ranks = {}
    for node in nodes.split():
        listing = cluster.run("scontrol", "listpids", job_id, node)
        for pid, _, step, _, rank in map(str.split, listing.splitlines()[1:]):
            if step == "0" and rank != "-":
                ranks[int(rank)] = int(pid)
    return ranks


def test_run_sub_asks_for_eight_tasks_per_node_by_default(cluster, data, tmp_path):
    """`sbatch -N2 run.sub` with no task count: 16 ranks, not one per node. (Held and then
    cancelled: two CPUs per node cannot run eight exclusive tasks, so --oversubscribe.)"""
    job_id = cluster.sbatch("--hold", "--oversubscribe", "--nodes=2",
                            f"--output={tmp_path}/slurm-%j.out", REPO / "run.sub")
    try:
        job = cluster.job(job_id)
    finally:
        cluster.run("scancel", job_id)
    assert job["NumNodes"] in ("2", "2-2") and job["NumTasks"] == "16", job  # 2-2: pending


def test_a_job_with_other_than_one_task_per_gpu_is_refused_with_a_message(cluster, data,
                                                                          tmp_path):
    """GPUS_PER_NODE=4 stands for a node with four GPUs: two tasks per node is refused before
    any rank starts, the job fails (status 2) and is not requeued."""
    job_id = submit_pretraining(cluster, data, tmp_path, 1, GPUS_PER_NODE=4)
    job = cluster.wait_finished(job_id)
    log = job_log(tmp_path, job_id)
    assert (job["JobState"], job["ExitCode"], job["Restarts"]) == ("FAILED", "2:0", "0"), job
    assert "run.sub: 2 tasks per node, but 4 GPUs per node: pre-training runs one task per " \
           "GPU; submit with --ntasks-per-node=4 (or with --gpus-per-node=2)" in log, log
    assert "run_pretraining.py" not in log and not records(tmp_path)


def test_a_batch_script_run_alone_is_one_rank_not_the_jobs_tasks(cluster, tmp_path):
    """A job of two tasks whose batch script runs Python itself, with MASTER_ADDR exported
    (a user's own script): that process is alone, world size 1, not one of the job's two
    ranks waiting for a second that never comes."""
    script = tmp_path / "alone.sh"
    script.write_text(f"#!/bin/bash\nexport MASTER_ADDR=localhost\ncd {REPO}\n"
                      f"{sys.executable} -c 'import utils; print(utils._environment_ranks())'\n")
    job_id = cluster.sbatch("--nodes=1", "--ntasks-per-node=2",
                            f"--output={tmp_path}/slurm-%j.out", script)
    job = cluster.wait_finished(job_id, timeout=60)
    log = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert job["JobState"] == "COMPLETED", (job, log)
    assert log.strip().splitlines()[-1] == "(0, 0, 1)", log
