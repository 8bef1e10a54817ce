"""GPU and cluster paths that a CPU machine can check: a rank's GPU index, the launcher's
--local-rank, the four precisions and TF32, leaving the process group, run.sub's decisions
(with stand-ins for srun, scontrol and nvidia-smi) and the wrappers' checks before launch.

run.sub under a real Slurm cluster is tests/test_slurm.py; these run in the default suite.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import inference
import run_glue
import run_pretraining
import run_squad
import utils
from conftest import REPO, write_pretraining_inputs

PYTHON_FIRST = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
OUTER_RANKS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def clean_env(**variables):
    """This environment without an outer launcher's ranks or an outer Slurm job's variables."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLURM_") and k not in OUTER_RANKS}
    env.update(PYTHON_FIRST)
    env.update({k: str(v) for k, v in variables.items()})
    return env


# ----------------------------------------------------------------------------- GPU index

@pytest.mark.parametrize("local_rank, visible, expected", [
    (0, 8, 0), (5, 8, 5), (7, 8, 7),    # every rank of the node sees every GPU
    (0, 1, 0), (5, 1, 0), (7, 1, 0),    # one GPU bound to each task: always its device 0
    (3, 2, 1), (6, 4, 2),               # a few GPUs per task
])
def test_a_rank_drives_its_local_rank_modulo_the_gpus_it_sees(local_rank, visible, expected):
    assert utils.cuda_device_index(local_rank, visible) == expected


def test_a_rank_that_sees_no_gpu_is_told_what_to_do(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ValueError, match=r"local rank 2 sees no GPU \(CUDA_VISIBLE_DEVICES=\): "
                                         r"start one task per GPU, or pass --no_cuda"):
        utils.cuda_device_index(2, 0)


def test_slurm_ranks_are_read_when_srun_starts_the_processes(monkeypatch):
    for name in OUTER_RANKS[:3]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "13")
    monkeypatch.setenv("SLURM_LOCALID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "32")  # the job's; srun's step has 16 of them
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "16")
    monkeypatch.setenv("MASTER_ADDR", "node1")
    assert utils._environment_ranks() == (13, 5, 16)
    # Python run by the job's batch script itself (Slurm sets no step variables there): alone
    monkeypatch.delenv("SLURM_STEP_NUM_TASKS")
    assert utils._environment_ranks() == (0, 0, 1)


def test_srun_tasks_without_an_address_are_refused_not_run_alone(monkeypatch, caplog):
    for name in OUTER_RANKS:
        monkeypatch.delenv(name, raising=False)
    for name, value in dict(SLURM_PROCID=3, SLURM_NTASKS=16, SLURM_STEP_NUM_TASKS=16).items():
        monkeypatch.setenv(name, str(value))
    with pytest.raises(ValueError, match="srun started 16 tasks, but MASTER_ADDR is not set"):
        utils.init_distributed(no_cuda=True)
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")  # `srun -n1 python ...` in a larger job
    assert not utils.init_distributed(no_cuda=True).enabled
    assert "runs alone" not in caplog.text
    monkeypatch.delenv("SLURM_STEP_NUM_TASKS")  # the batch script itself, or another launcher
    monkeypatch.setenv("MASTER_ADDR", "node1")
    assert not utils.init_distributed(no_cuda=True).enabled
    assert "runs alone, outside the 16 tasks of its Slurm job" in caplog.text


# ----------------------------------------------------------------------------- arguments

@pytest.mark.parametrize("spelling", [["--local-rank=3"], ["--local_rank", "3"],
                                      ["--local-rank", "3"], ["--local_rank=3"]])
def test_both_spellings_of_the_launchers_local_rank_are_accepted(spelling, tmp_path):
    args = run_pretraining.parse_args(["--input_dir", "x", "--config_file", "c.json",
                                       "--output_dir", str(tmp_path), *spelling])
    assert args.local_rank == 3
    squad_args = run_squad.parse_args(["--output_dir", str(tmp_path), *spelling])
    assert squad_args.local_rank == 3


@pytest.mark.parametrize("flags, precision", [
    ([], "fp32"), (["--tf32"], "tf32"), (["--bf16"], "bf16"), (["--fp16"], "fp16"),
    (["--amp"], "fp16"),
])
def test_every_script_names_one_of_four_precisions(flags, precision, tmp_path):
    parsed = [run_pretraining.parse_args(["--input_dir", "x", "--config_file", "c.json",
                                          "--output_dir", str(tmp_path), *flags]),
              run_squad.parse_args(["--output_dir", str(tmp_path), *flags]),
              run_glue.parse_args(["--output_dir", str(tmp_path), "--task_name", "mrpc",
                                   "--data_dir", "x", *flags]),
              inference.parse_args(["--init_checkpoint", "x", "--question", "q",
                                    "--context", "c", *flags])]
    assert [utils.precision_of(args) for args in parsed] == [precision] * 4


def test_two_precisions_at_once_are_refused_by_name(tmp_path):
    args = run_squad.parse_args(["--output_dir", str(tmp_path), "--bf16", "--tf32"])
    with pytest.raises(ValueError, match="choose one of --fp16/--amp, --bf16 and --tf32, not "
                                         "--bf16 and --tf32"):
        utils.check_precision_args(args)


@pytest.fixture
def matmul_flags():
    """Restores torch's TF32 flags after the test."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("precision, tf32", [("tf32", True), ("fp32", False),
                                             ("bf16", False), ("fp16", False)])
def test_tf32_is_on_for_tf32_alone(matmul_flags, precision, tf32):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not tf32
    utils.init_distributed(no_cuda=True, precision=precision)
    assert torch.backends.cuda.matmul.allow_tf32 is tf32
    assert torch.backends.cudnn.allow_tf32 is tf32
    assert torch.backends.cuda.matmul.fp32_precision == ("tf32" if tf32 else "ieee")


def test_an_unknown_precision_is_named(matmul_flags):
    with pytest.raises(ValueError, match="precision must be one of fp16, bf16, tf32, fp32, "
                                         "not 'fp64'"):
        utils.set_matmul_precision("fp64")


def test_tf32_runs_like_fp32_on_cpu(matmul_flags):
    with utils.autocast("tf32", torch.device("cpu")):
        product = torch.ones(2, 2) @ torch.ones(2, 2)
    assert product.dtype == torch.float32


@pytest.mark.parametrize("script", ["run_pretraining.py", "run_squad.py", "run_glue.py",
                                    "inference.py", "triton/export_model.py"])
def test_help_states_what_tf32_and_fp32_mean(script):
    result = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True,
                            text=True, check=True, env=clean_env(COLUMNS=200))
    assert "--tf32" in result.stdout
    assert "NVIDIA's default on Ampere and later" in result.stdout
    assert "true fp32" in result.stdout


# ----------------------------------------------------------------------------- process group

END_OF_RUN = textwrap.dedent("""
    import sys, time
    import torch.distributed as dist
    import utils
    distributed = utils.init_distributed(no_cuda=True, timeout_minutes=1)
    if distributed.rank == 0:
        time.sleep(2.0)  # rank 0 still writing its checkpoint
    print(f"ready at {time.time():.3f}")
    utils.end_distributed(distributed)
    print(f"left at {time.time():.3f}, initialized {dist.is_initialized()}")
""")


def time_of(output, event):
    return float(output.split(f"{event} at ")[1].split()[0].rstrip(","))


def test_every_rank_waits_for_rank_0_then_leaves_the_process_group(tmp_path):
    env = clean_env(WORLD_SIZE=2, MASTER_ADDR="127.0.0.1", MASTER_PORT=29000 + os.getpid() % 1000)
    ranks = [subprocess.Popen([sys.executable, "-c", END_OF_RUN], cwd=REPO, text=True,
                              env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for rank in (0, 1)]
    outputs = [rank.communicate(timeout=120)[0] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], outputs
    assert all("initialized False" in output for output in outputs), outputs
    # Rank 1 was ready two seconds before rank 0, and left only once rank 0 was ready too.
    assert time_of(outputs[1], "left") >= time_of(outputs[0], "ready"), outputs


@pytest.fixture
def single_rank_launch(monkeypatch):
    """The environment torchrun --nproc_per_node=1 gives its one rank."""
    for name, value in dict(RANK=0, LOCAL_RANK=0, WORLD_SIZE=1, MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=29000 + (os.getpid() + 500) % 1000).items():
        monkeypatch.setenv(name, str(value))
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def test_a_launchers_single_rank_joins_a_group_of_one(single_rank_launch):
    distributed = utils.init_distributed(no_cuda=True)
    assert distributed.enabled and torch.distributed.get_world_size() == 1
    utils.end_distributed(distributed)
    assert not torch.distributed.is_initialized()


def flag_on_a_rank(rank, port, signalled_rank, results):
    """One of two gloo ranks: calls should_stop four times, `signalled_rank` receiving the
    signal before its second call."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    distributed = utils.init_distributed(no_cuda=True)
    with utils.PreemptionFlag(signals=()) as flag:
        seen = []
        for call in range(4):
            if rank == signalled_rank and call == 1:
                flag.received = "SIGTERM"
            seen.append(flag.should_stop(distributed))
    results.put((rank, seen))
    utils.end_distributed(distributed)


def test_all_ranks_stop_on_the_same_iteration_one_after_the_signal():
    """The combined flag is read a call late (no host wait on the device each step), the
    same call on every rank, whichever rank was signalled."""
    context = torch.multiprocessing.get_context("spawn")
    results = context.Queue()
    port = 29000 + (os.getpid() + 900) % 1000
    processes = [context.Process(target=flag_on_a_rank, args=(rank, port, 1, results))
                 for rank in range(2)]
    for process in processes:
        process.start()
    seen = dict(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    assert [process.exitcode for process in processes] == [0, 0]
    assert seen == {0: [False, False, True, True], 1: [False, False, True, True]}


def test_a_plain_process_runs_alone(monkeypatch):
    for name in OUTER_RANKS:
        monkeypatch.delenv(name, raising=False)
    distributed = utils.init_distributed(no_cuda=True)
    assert not distributed.enabled and not torch.distributed.is_initialized()


@pytest.fixture(scope="module")
def phase1_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp_data")
    _, config = write_pretraining_inputs(folder, {"phase1": (32, 5)})
    return folder / "phase1", config


def pretraining_args(inputs, output_dir, *extra):
    return run_pretraining.parse_args([
        "--input_dir", str(inputs[0]), "--config_file", str(inputs[1]), "--output_dir",
        str(output_dir), "--max_seq_length", "32", "--max_predictions_per_seq", "5",
        "--train_batch_size", "8", "--gradient_accumulation_steps", "2", "--max_steps", "3",
        "--learning_rate", "2e-3", "--seed", "3", "--allreduce_post_accumulation",
        "--disable_progress_bar", *extra])


@pytest.mark.parametrize("flags", [(), ("--no_nsp",)])  # --no_nsp: a head gets no gradient
def test_a_single_rank_under_ddp_trains_as_a_plain_process(phase1_inputs, tmp_path,
                                                           monkeypatch, flags):
    alone = run_pretraining.main(pretraining_args(phase1_inputs, tmp_path / "alone", *flags))
    for name, value in dict(RANK=0, LOCAL_RANK=0, WORLD_SIZE=1, MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=29000 + (os.getpid() + 700) % 1000).items():
        monkeypatch.setenv(name, str(value))
    grouped = run_pretraining.main(pretraining_args(phase1_inputs, tmp_path / "ddp", *flags))
    assert not torch.distributed.is_initialized()  # left at the end of main
    assert grouped == alone and alone["step"] == 3 and not alone["preempted"]
    weights = [torch.load(tmp_path / name / "ckpt_3.pt", weights_only=True)["model"]
               for name in ("alone", "ddp")]
    assert weights[0].keys() == weights[1].keys()  # saved without DDP's "module." prefix
    for key, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][key], tensor, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- run.sub

FAKES = {
    # srun: records its arguments, one a line, and exits with FAKE_SRUN_STATUS.
    "srun": 'printf "%s\\n" "$@" > "$FAKE_LOG/srun.args"; exit "${FAKE_SRUN_STATUS:-0}"',
    "scontrol": textwrap.dedent("""\
        case "$1 $2" in
          "show hostnames") echo node1 ;;
          "show node") echo "NodeName=node1 CPUTot=112 Gres=${FAKE_GRES:-(null)} State=ALLOCATED" ;;
          requeue*) echo "$2" >> "$FAKE_LOG/requeued" ;;
        esac"""),
    "nvidia-smi": 'for ((i = 0; i < ${FAKE_GPUS:-0}; i++)); do echo "GPU $i: NVIDIA H100 (UUID: GPU-$i)"; done',
}


@pytest.fixture
def batch_node(tmp_path):
    """Runs run.sub as the batch shell of a job on a node with FAKE_GPUS GPUs (nvidia-smi),
    Slurm's node record (FAKE_GRES) and an srun that exits with FAKE_SRUN_STATUS. Returns
    (completed process, srun's arguments or None, requeued job ids)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    for name, body in FAKES.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)

    def run(**variables):
        settings = dict(SLURM_JOB_ID=123, SLURM_JOB_NODELIST="node[1-4]", SLURMD_NODENAME="node1",
                        SLURM_TASKS_PER_NODE="8(x4)", SLURM_CPUS_ON_NODE=112,
                        RESULTS=tmp_path / "results", FAKE_LOG=log)
        settings.update(variables)
        env = clean_env(**settings)
        env["PATH"] = f"{bin_dir}:{env['PATH']}"
        for name in ("srun.args", "requeued"):
            (log / name).unlink(missing_ok=True)
        result = subprocess.run(["bash", str(REPO / "run.sub")], cwd=REPO, env=env, text=True,
                                capture_output=True, timeout=60, check=False)
        srun = log / "srun.args"
        requeued = log / "requeued"
        return (result, srun.read_text().splitlines() if srun.exists() else None,
                requeued.read_text().split() if requeued.exists() else [])
    return run


def test_run_sub_asks_for_eight_tasks_per_node_by_default():
    directives = [line.split()[1] for line in (REPO / "run.sub").read_text().splitlines()
                  if line.startswith("#SBATCH")]
    assert "--ntasks-per-node=8" in directives
    assert not any(d.startswith(("--gpus", "--gres")) for d in directives)  # see run.sub


def test_ranks_are_bound_to_blocks_of_cores(batch_node):
    result, srun, _ = batch_node(FAKE_GPUS=8)
    assert result.returncode == 0, result.stderr
    launcher = srun[:srun.index("python")]
    assert launcher == ["--kill-on-bad-exit=1", "--cpu-bind=cores", "--distribution=block:block",
                        "--cpus-per-task=14"]  # 112 CPUs / 8 tasks


@pytest.mark.parametrize("variables, expected", [
    ({"CPU_BIND": "none"}, ["--kill-on-bad-exit=1", "--cpu-bind=none"]),
    ({"CPU_BIND": "verbose,ldoms", "CPUS_PER_TASK": 7},
     ["--kill-on-bad-exit=1", "--cpu-bind=verbose,ldoms", "--distribution=block:block",
      "--cpus-per-task=7"]),
    ({"SLURM_CPUS_ON_NODE": 4}, ["--kill-on-bad-exit=1", "--cpu-bind=cores",
                                 "--distribution=block:block", "--cpus-per-task=1"]),
])
def test_cpu_binding_can_be_changed_or_turned_off(batch_node, variables, expected):
    result, srun, _ = batch_node(FAKE_GPUS=8, **variables)
    assert result.returncode == 0, result.stderr
    assert srun[:srun.index("python")] == expected


@pytest.mark.parametrize("precision, flags", [
    ("fp16", ["--fp16", "--allreduce_post_accumulation_fp16"]), ("bf16", ["--bf16"]),
    ("tf32", ["--tf32"]), ("fp32", []),
])
def test_run_sub_passes_the_precision(batch_node, precision, flags):
    result, srun, _ = batch_node(PRECISION=precision)
    assert result.returncode == 0, result.stderr
    given = [a for a in srun if a in ("--fp16", "--bf16", "--tf32",
                                      "--allreduce_post_accumulation_fp16")]
    assert given == flags


def test_run_sub_refuses_an_unknown_precision(batch_node):
    result, srun, _ = batch_node(PRECISION="fp8")
    assert result.returncode == 2 and srun is None
    assert "run.sub: PRECISION must be fp16, bf16, tf32 or fp32, not 'fp8'" in result.stderr


@pytest.mark.parametrize("variables, message", [
    (dict(FAKE_GPUS=8, SLURM_TASKS_PER_NODE="1(x4)"),
     "run.sub: 1 tasks per node, but 8 GPUs per node: pre-training runs one task per GPU; "
     "submit with --ntasks-per-node=8 (or with --gpus-per-node=1)"),
    (dict(SLURM_GPUS_ON_NODE=4),
     "run.sub: 8 tasks per node, but 4 GPUs per node"),
    (dict(FAKE_GRES="gpu:h100:8(S:0-1)"),
     "run.sub: node node1 has 8 GPUs in Slurm, but this job asked for none: submit with "
     "--gpus-per-node=8 (and --ntasks-per-node=8)"),
    (dict(FAKE_GRES="gpu:a100:4,gpu:v100:4,nic:2"), "has 8 GPUs in Slurm"),
    (dict(FAKE_GRES="gpu:8", SLURM_TASKS_PER_NODE="1", GPUS_PER_NODE=1),  # a 1-GPU job
     "has 8 GPUs in Slurm, but this job asked for none: submit with --gpus-per-node=1 (and "
     "--ntasks-per-node=1)"),
    (dict(SLURM_TASKS_PER_NODE="8,4"),
     "run.sub: uneven tasks per node (SLURM_TASKS_PER_NODE=8,4): give --ntasks-per-node"),
    (dict(GPUS_PER_NODE="eight"), "run.sub: GPUS_PER_NODE must be a number of GPUs, not 'eight'"),
])
def test_a_job_without_one_task_per_gpu_is_refused_before_it_starts(batch_node, variables,
                                                                     message):
    result, srun, requeued = batch_node(**variables)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert srun is None and requeued == []


@pytest.mark.parametrize("variables", [
    dict(FAKE_GPUS=8),                                        # GPUs visible, not in Slurm
    dict(FAKE_GRES="gpu:8", SLURM_GPUS_ON_NODE=8),            # GRES, asked for
    dict(FAKE_GPUS=8, SLURM_TASKS_PER_NODE="2", GPUS_PER_NODE=0),   # a CPU run on purpose
    dict(FAKE_GRES="gpu:8", SLURM_TASKS_PER_NODE="2", GPUS_PER_NODE=0),  # also under GRES
    dict(FAKE_GRES="gpu:8", SLURM_GPUS_ON_NODE=1, SLURM_TASKS_PER_NODE="1",
         GPUS_PER_NODE=1),                                    # a 1-GPU job, asked for
    dict(SLURM_TASKS_PER_NODE="2(x2)"),                       # no GPUs at all
])
def test_one_task_per_gpu_or_a_cpu_job_starts(batch_node, variables):
    result, srun, _ = batch_node(**variables)
    assert result.returncode == 0, result.stderr
    assert srun[srun.index("python") + 1] == "run_pretraining.py"


@pytest.mark.parametrize("status, requeued", [(75, True), (0, False), (1, False), (137, False)])
def test_the_preempted_status_of_the_ranks_requeues_the_job(batch_node, status, requeued):
    result, _, requeues = batch_node(FAKE_GPUS=8, FAKE_SRUN_STATUS=status)
    assert result.returncode == status
    assert requeues == (["123"] if requeued else [])
    assert ("stopped by a signal to the ranks before the last step (7038) of phase 1: "
            "requeueing job 123" in result.stdout) == requeued


def test_a_finished_phase_is_not_requeued(batch_node, tmp_path):
    checkpoints = tmp_path / "results" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "ckpt_7038.pt").touch()
    result, _, requeues = batch_node(FAKE_GPUS=8, FAKE_SRUN_STATUS=75)
    assert requeues == [] and "requeueing" not in result.stdout


# ----------------------------------------------------------------------------- wrappers

def wrapper(script, *arguments, timeout=300, **variables):
    return subprocess.run(["bash", f"scripts/{script}", *map(str, arguments)], cwd=REPO,
                          env=clean_env(CUDA_VISIBLE_DEVICES="", **variables), text=True,
                          capture_output=True, timeout=timeout, check=False)


def test_pretraining_wrapper_defaults_on_a_cpu_name_what_to_set(tmp_path):
    result = wrapper("run_pretraining.sh", RESULTS_DIR=tmp_path / "results")
    assert result.returncode == 2
    prep = "data/hdf5_lower_case_1_seq_len_{}_max_pred_{}_masked_lm_prob_0.15_random_seed_" \
           "12345_dupe_factor_5/wikicorpus_en"  # data/bertPrep.py's folders
    assert result.stderr.splitlines() == [
        f"run_pretraining.sh: error: DATA_DIR_PHASE1={prep.format(128, 20)} holds no "
        "pre-training shards: set DATA_DIR_PHASE1 to a folder of phase-1 .hdf5 (or LDDL "
        ".parquet) files (create_pretraining_data.py, or bash data/create_datasets_from_start.sh "
        "hdf5, which writes the default folders)",
        f"run_pretraining.sh: error: DATA_DIR_PHASE2={prep.format(512, 80)} holds no "
        "pre-training shards: set DATA_DIR_PHASE2 to a folder of phase-2 .hdf5 (or LDDL "
        ".parquet) files (create_pretraining_data.py, or bash data/create_datasets_from_start.sh "
        "hdf5, which writes the default folders)",
        "run_pretraining.sh: error: num_gpus (argument 4) is 8, but this machine has 0 GPUs: "
        "pass 1 (one process per GPU; 1 on a machine without one)"]
    assert result.stdout == "" and not (tmp_path / "results").exists()


def test_the_lddl_data_flow_ends_with_the_commands_that_make_its_shards(tmp_path):
    # PYTHON=true stands in for every download; the flow used to end there, silently.
    script = REPO / "data" / "create_datasets_from_start.sh"
    result = subprocess.run(["bash", str(script), "lddl"], text=True, capture_output=True,
                            timeout=60, env=clean_env(PYTHON="true",
                                                      BERT_PREP_WORKING_DIR=str(tmp_path)))
    assert result.returncode == 0, result.stderr
    for line in (f"--wikipedia {tmp_path}/wikipedia/source --sink "
                 f"{tmp_path}/pretrain/phase1/unbinned/parquet",
                 f"balance_dask_output --indir {tmp_path}/pretrain/phase1/unbinned/parquet",
                 f"'bash {script} hdf5' makes the HDF5"):
        assert line in result.stderr, result.stderr


def test_squad_wrapper_defaults_on_a_cpu_name_what_to_set():
    result = wrapper("run_squad.sh")
    assert result.returncode == 2 and result.stdout == ""
    errors = result.stderr.splitlines()
    assert errors[0].startswith("run_squad.sh: error: init_checkpoint (argument 1) "
                                "data/checkpoints/bert_uncased.pt does not exist")
    assert "run_squad.sh: error: squad_dir (argument 8) data/download/squad/v1.1 holds no " \
           "train-v1.1.json (data/squad/squad_download.sh)" in errors
    assert errors[-1] == "run_squad.sh: error: num_gpus (argument 6) is 8, but this machine " \
                         "has 0 GPUs: pass 1 (one process per GPU; 1 on a machine without one)"


def test_glue_wrapper_defaults_on_a_cpu_name_what_to_set():
    result = wrapper("run_glue.sh")
    assert result.returncode == 2 and result.stdout == ""
    errors = result.stderr.splitlines()
    assert "run_glue.sh: error: data_dir (argument 2) data/download/glue/MRPC is not a folder: " \
           "pass the task's GLUE folder (train.tsv, dev.tsv, ...; data/bertPrep.py --action " \
           "download --dataset mrpc)" in errors
    assert errors[-1].startswith("run_glue.sh: error: num_gpus (argument 7) is 8")


@pytest.fixture(scope="module")
def two_phase_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wrapper_data")
    _, config = write_pretraining_inputs(folder, {"phase1": (32, 5), "phase2": (64, 10)})
    return folder, config


def pretraining_wrapper(inputs, results, extra_args="", phase1_steps=2):
    """scripts/run_pretraining.sh on one CPU process: batch 8, `phase1_steps` steps of phase 1,
    then one of phase 2."""
    folder, config = inputs
    return wrapper("run_pretraining.sh", 8, "2e-3", "fp32", 1, 0.25, phase1_steps, 100, "false",
                   "true", "false", 1, 3, "tiny", "false", "false", 8, "2e-3", 0.25, 1, 1,
                   DATA_DIR_PHASE1=folder / "phase1", DATA_DIR_PHASE2=folder / "phase2",
                   BERT_CONFIG=config, RESULTS_DIR=results, SEQ_LENGTH_PHASE1=32,
                   MAX_PREDICTIONS_PHASE1=5, SEQ_LENGTH_PHASE2=64, MAX_PREDICTIONS_PHASE2=10,
                   EXTRA_ARGS=f"--disable_progress_bar {extra_args}".strip())


def test_phase2_waits_for_phase1s_final_checkpoint(two_phase_inputs, tmp_path):
    result = pretraining_wrapper(two_phase_inputs, tmp_path, "--steps_this_run 1")
    assert result.returncode == 75, result.stdout + result.stderr
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["ckpt_1.pt"]
    assert "run_pretraining.sh: phase 1 ended with status 0 before its last checkpoint " \
           f"({tmp_path}/checkpoints/ckpt_2.pt): phase 2 not started; resume_training=true " \
           "(argument 8) continues phase 1" in result.stderr
    assert "--phase2" not in (tmp_path / "tiny.log").read_text()


@pytest.mark.slow
def test_phase2_follows_a_finished_phase1(two_phase_inputs, tmp_path):
    result = pretraining_wrapper(two_phase_inputs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["ckpt_2.pt",
                                                                            "ckpt_3.pt"]
