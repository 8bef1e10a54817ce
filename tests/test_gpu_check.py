"""bench/gpu_check.py, the prepared GPU check: its FLOPs formula, its guards and time budget,
and one end-to-end --cpu_smoke run of every section on the CPU through bench/gpu_check.sh."""

import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO
from model import BertConfig

spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def test_model_flops_of_bert_large_at_seq_128():
    config = BertConfig.from_json_file(REPO / "bert_configs" / "large.json")
    config.pad_vocab_to_multiple_of = 8                      # 30522 -> 30528 rows
    # 6*128*24*(4*1024^2 + 2*1024*4096)  = 231,928,233,984   encoder matrix products
    # 12*24*128^2*1024                  =   4,831,838,208   attention
    # 6*20*(1024^2 + 1024*30528)        =   3,877,109,760   masked-LM head, 20 positions
    # 6*1024^2                          =       6,291,456   pooler
    assert gpu_check.flops_per_sequence(config, 128, 20) == 240_643_473_408


@pytest.mark.parametrize("name, peak", [("NVIDIA H200", 989.4), ("NVIDIA H100 80GB HBM3", 989.4),
                                        ("NVIDIA H100 PCIe", 756.0),
                                        ("NVIDIA A100-SXM4-80GB", 312.0), ("Tesla T4", None)])
def test_mfu_uses_the_dense_bf16_peak_of_the_gpu(name, peak):
    assert gpu_check.peak_tflops(name) == peak


def check_for(tmp_path, budget=60.0):
    options = gpu_check.parse_args(["--output", str(tmp_path / "figures.json"), "--work_dir",
                                    str(tmp_path / "work"), "--budget_seconds", str(budget),
                                    "--cpu_smoke"])
    return gpu_check.Check(options, gpu_check.CPU_SMOKE_SETTINGS)


def test_a_failing_section_is_recorded_and_the_next_one_runs(tmp_path):
    check = check_for(tmp_path)

    def broken(_):
        raise FileNotFoundError("no shards in /nowhere")

    check.run("broken", broken, reserve=0)
    check.run("fine", lambda _: {"answer": 42}, reserve=0)
    written = json.loads((tmp_path / "figures.json").read_text())["sections"]
    assert written["broken"]["status"] == "error"
    assert written["broken"]["error"] == "FileNotFoundError: no shards in /nowhere"
    assert "raise FileNotFoundError" in "\n".join(written["broken"]["traceback"])
    assert written["fine"]["status"] == "ok" and written["fine"]["answer"] == 42
    assert all(entry["seconds"] >= 0 for entry in written.values())


def test_the_time_budget_skips_sections_and_interrupts_one_that_overruns(tmp_path):
    check = check_for(tmp_path, budget=1.0)
    started = time.monotonic()
    check.run("slow", lambda _: time.sleep(30), reserve=0)
    assert time.monotonic() - started < 10
    check.run("later", lambda _: {}, reserve=5)
    sections = json.loads((tmp_path / "figures.json").read_text())["sections"]
    assert sections["slow"]["status"] == "error"
    assert sections["slow"]["error"].startswith("SectionTimeout: the time budget (1 s) ran out")
    assert sections["later"]["status"] == "skipped"
    assert sections["later"]["reason"].startswith("time budget: ")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One run of bench/gpu_check.sh --cpu_smoke: (its output, the JSON of figures)."""
    folder = tmp_path_factory.mktemp("gpu_check")
    result = subprocess.run(["bash", "bench/gpu_check.sh", "--cpu_smoke", "--work_dir",
                             str(folder / "work")], cwd=REPO, capture_output=True, text=True,
                            timeout=600, check=False,
                            env={**os.environ, "PYTHON": sys.executable, "OUT": str(folder)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert (folder / "gpu_check.log").read_text().strip() in result.stdout
    return result.stdout, json.loads((folder / "gpu_check.json").read_text())


def test_every_section_runs_on_the_cpu(smoke):
    _, figures = smoke
    sections = figures["sections"]
    assert list(sections) == [name for name, _, _ in gpu_check.SECTIONS]
    failed = {name: entry.get("error") for name, entry in sections.items()
              if entry["status"] != "ok" and name != "export_onnx"}
    assert failed == {}
    onnx = sections["export_onnx"]  # onnx, onnxscript, onnxruntime may be absent here
    assert onnx["status"] == "ok" or onnx["error"].startswith("ModuleNotFoundError: No module "
                                                              "named 'onnx")
    assert figures["total_seconds"] < figures["budget_seconds"]


def test_the_figures_are_measured(smoke):
    _, figures = smoke
    sections = figures["sections"]
    assert sections["environment"]["torch"] and sections["environment"]["apex"] in (True, False)
    assert sections["data"]["phase1"]["instances"] >= 8
    for name in ("phase1_bf16", "phase1_fp16", "phase2_bf16"):
        entry = sections[name]
        assert entry["sequences_per_second"] > 0 and entry["timed_steps"] == 2, entry
        assert entry["mfu"] is None  # no peak known for a CPU
    assert sections["phase2_bf16"]["max_seq_length"] == 64
    assert sections["squad_bf16"]["steps_per_second"] > 0
    assert sections["squad_bf16"]["steps"] == 3
    differences = sections["export_torchscript"]["max_abs_difference"]
    assert set(differences) == {"output__0", "output__1"}
    assert all(d <= 1e-3 for d in differences.values())


def test_the_ddp_run_resumes_exactly(smoke):
    _, figures = smoke
    ddp = figures["sections"]["ddp_resume"]
    assert [ddp[f"{run}_exit_status"] for run in ("first_4", "resumed_to_8",
                                                  "uninterrupted_8")] == [0, 0, 0]
    assert ddp["resumed_at_step_4"] and ddp["checkpoints"] == ["ckpt_4.pt", "ckpt_8.pt"]
    assert len(ddp["losses_split"]) == 8
    assert ddp["losses_split"] == ddp["losses_uninterrupted"]  # CPU, gloo: bit for bit
    assert ddp["max_loss_difference"] == 0.0
    assert ddp["destroy_process_group_warning"] is False
