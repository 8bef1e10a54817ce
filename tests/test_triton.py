"""triton/: exports that match PyTorch, model configurations Triton would accept, and the real
Triton server answering like inference.py.

The deployment scripts run as subprocesses in the deployment environment (triton/.venv, or
$TRITON_VENV; bash triton/setup_env.sh builds it; nvidia-pytriton pins numpy<2, so it cannot
share .venv), while this process computes the expected results with the main environment.
Without that environment those tests skip with the reason (under CI, with CI set, they fail);
the end-to-end test also skips where triton/server.py says the bundled server cannot run
(e.g. glibc older than 2.35).
"""

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

import inference
from conftest import REPO, write_vocab
from model import BertConfig, BertForQuestionAnswering, BertForSequenceClassification


def import_script(path):
    """A script of triton/ as a module, without putting triton/ on sys.path."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# TorchScript is deprecated in torch 2.13 but is still what Triton's libtorch backend loads.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

TRITON = REPO / "triton"
export_model = import_script(TRITON / "export_model.py")  # runs in this environment too
SQUAD_FILE = REPO / "tests" / "fixtures" / "squad" / "tiny-v1.1.json"
VENV = Path(os.environ.get("TRITON_VENV", TRITON / ".venv"))
PARITY_ATOL = 1e-4
SERVER_START_TIMEOUT = 60
# Several windows per question (max_batch_size 2 below makes them several requests), and an
# n-best list whose probabilities are not near ties for the tiny random model.
WINDOW_ARGS = ["--max_seq_length", "48", "--doc_stride", "16", "--max_query_length", "12",
               "--n_best_size", "5"]


def deployment_python():
    """The deployment environment's python, or a skip (a failure under CI) saying why not."""
    python = VENV / "bin" / "python"
    if not python.is_file():
        reason = f"deployment environment {VENV} absent: run bash triton/setup_env.sh"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return str(python)


def run_deployment(*args, check=True):
    """Runs a triton/ script with the deployment python; returns the CompletedProcess."""
    result = subprocess.run([deployment_python(), *map(str, args)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Random tiny question-answering and 3-label classification models, saved as
    {'model': state_dict}, with a vocabulary covering the SQuAD fixture's words."""
    folder = tmp_path_factory.mktemp("triton_models")
    text = SQUAD_FILE.read_text()
    vocab = write_vocab(folder / "vocab.txt", text + text)
    config = BertConfig(vocab_size=len(vocab.read_text().split()), hidden_size=32,
                        num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                        max_position_embeddings=64)
    config.to_json_file(folder / "config.json")
    torch.manual_seed(0)
    qa = BertForQuestionAnswering(config).eval()
    classifier = BertForSequenceClassification(config, num_labels=3).eval()
    torch.save({"model": qa.state_dict()}, folder / "qa.pt")
    torch.save({"model": classifier.state_dict()}, folder / "classifier.pt")
    return {"folder": folder, "config": folder / "config.json", "vocab": vocab,
            "qa": qa, "classifier": classifier}


def export(tiny_models, output_dir, task, checkpoint, *extra, check=True):
    return run_deployment(
        TRITON / "export_model.py", "--task", task, "--init_checkpoint", checkpoint,
        "--config_file", tiny_models["config"], "--vocab_file", tiny_models["vocab"],
        "--output_dir", output_dir, "--max_seq_length", 32, "--batch_size", 2,
        "--atol", PARITY_ATOL, *extra, check=check)


@pytest.fixture(scope="module")
def qa_export(tiny_models, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("qa_export")
    # Cased, against the lower-case vocabulary: a client that lower-cased all the same
    # would answer from other tokens than inference.py.
    result = export(tiny_models, output_dir, "squad", tiny_models["folder"] / "qa.pt",
                    "--no-do_lower_case")
    return output_dir, result.stdout


def reported_diffs(stdout):
    """{(format, output name): max abs diff} from export_model.py's report."""
    return {(fmt, name): float(diff) for fmt, name, diff in
            re.findall(r"^(\w+): (output__\d) \(\w+\) max abs diff (\S+)", stdout, re.M)}


# ----------------------------------------------------------------------------- export

def test_qa_exports_match_pytorch_and_name_tensors_as_nvidia(qa_export, tiny_models):
    output_dir, stdout = qa_export
    diffs = reported_diffs(stdout)
    assert set(diffs) == {(fmt, name) for fmt in ("onnx", "torchscript")
                          for name in ("output__0", "output__1")}
    assert all(diff <= PARITY_ATOL for diff in diffs.values()), diffs
    # One self-contained ONNX file: no external weight files beside it.
    assert sorted(p.name for p in output_dir.iterdir()) == [
        "config.json", "model.onnx", "model.pt", "signature.json", "tokenizer_config.json",
        "vocab.txt"]
    signature = json.loads((output_dir / "signature.json").read_text())
    assert [(t["name"], t["field"], t["data_type"]) for t in signature["inputs"]] == [
        ("input__0", "input_ids", "TYPE_INT64"), ("input__1", "segment_ids", "TYPE_INT64"),
        ("input__2", "input_mask", "TYPE_INT64")]
    assert [(t["name"], t["field"], t["dims"]) for t in signature["outputs"]] == [
        ("output__0", "start_logits", [-1]), ("output__1", "end_logits", [-1])]


def test_torchscript_export_matches_eager_in_the_main_environment(qa_export, tiny_models):
    """Checked again here, outside the exporting process, at a batch size and length the
    export never saw."""
    output_dir, _ = qa_export
    traced = torch.jit.load(str(output_dir / "model.pt"))
    inputs = export_model.random_inputs(tiny_models["qa"].config.vocab_size, batch=5, seq=19,
                                        dtype=torch.int64, seed=7)
    with torch.no_grad():
        expected = tiny_models["qa"](*inputs)
        found = traced(*inputs)
    for want, got in zip(expected, found):
        torch.testing.assert_close(got, want, atol=PARITY_ATOL, rtol=0)


def test_classification_export_with_int32_inputs(tiny_models, tmp_path):
    result = export(tiny_models, tmp_path, "classification",
                    tiny_models["folder"] / "classifier.pt", "--input_dtype", "int32")
    diffs = reported_diffs(result.stdout)
    assert set(diffs) == {("onnx", "output__0"), ("torchscript", "output__0")}
    assert all(diff <= PARITY_ATOL for diff in diffs.values()), diffs
    signature = json.loads((tmp_path / "signature.json").read_text())
    assert {t["data_type"] for t in signature["inputs"]} == {"TYPE_INT32"}
    assert signature["outputs"] == [{"name": "output__0", "field": "logits",
                                     "data_type": "TYPE_FP32", "dims": [3]}]


def test_exports_into_one_folder_list_the_formats_of_one_model(tiny_models, tmp_path):
    """A second run's format is listed beside the first's when both export the same
    checkpoint; the model files of another checkpoint's export are removed."""
    qa = tiny_models["folder"] / "qa.pt"
    export(tiny_models, tmp_path, "squad", qa, "--format", "torchscript")
    export(tiny_models, tmp_path, "squad", qa, "--format", "onnx")
    listed = json.loads((tmp_path / "signature.json").read_text())["files"]
    assert listed == {"torchscript": "model.pt", "onnx": "model.onnx"}
    result = export(tiny_models, tmp_path, "classification",
                    tiny_models["folder"] / "classifier.pt", "--format", "torchscript")
    assert json.loads((tmp_path / "signature.json").read_text())["files"] == {
        "torchscript": "model.pt"}
    assert not (tmp_path / "model.onnx").exists()
    assert f"removed {tmp_path / 'model.onnx'}: exported earlier" in result.stdout


def test_a_failed_export_leaves_only_checked_files_listed(tiny_models, tmp_path):
    """--atol 0 fails ONNX's check (its float sums differ from PyTorch's in the last bits)."""
    qa = tiny_models["folder"] / "qa.pt"
    export(tiny_models, tmp_path, "squad", qa)
    before = {name: (tmp_path / name).read_bytes() for name in ("model.onnx", "model.pt")}
    failed = export(tiny_models, tmp_path, "squad", qa, "--format", "onnx", "--atol", 0,
                    check=False)
    assert failed.returncode == 1 and "does not match PyTorch within --atol 0" in failed.stderr
    assert "Traceback" not in failed.stderr, failed.stderr  # one line, as every entry script
    # The same checkpoint's earlier export stays whole and listed; nothing half-made is left.
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert json.loads((tmp_path / "signature.json").read_text())["files"] == {
        "onnx": "model.onnx", "torchscript": "model.pt"}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    # Another checkpoint's failed export: the earlier files go, and nothing is listed.
    torch.save({"model": BertForQuestionAnswering(tiny_models["qa"].config).state_dict()},
               tmp_path / "other.pt")
    export(tiny_models, tmp_path, "squad", tmp_path / "other.pt", "--format", "onnx",
           "--atol", 0, check=False)
    signature = json.loads((tmp_path / "signature.json").read_text())
    assert signature["files"] == {} and signature["init_checkpoint"] == str(tmp_path / "other.pt")
    assert not (tmp_path / "model.onnx").exists() and not (tmp_path / "model.pt").exists()


def test_a_casing_change_or_an_export_by_the_earlier_script_keeps_the_other_format(
        tiny_models, tmp_path):
    qa = tiny_models["folder"] / "qa.pt"
    export(tiny_models, tmp_path, "squad", qa, "--format", "torchscript", "--do_lower_case")
    export(tiny_models, tmp_path, "squad", qa, "--format", "onnx")  # casing: not the model
    path = tmp_path / "signature.json"
    assert json.loads(path.read_text())["files"] == {"torchscript": "model.pt",
                                                     "onnx": "model.onnx"}
    # As the script wrote it before it recorded the checkpoint's stamp and the casing.
    earlier = json.loads(path.read_text())
    for key in ("init_checkpoint_stamp", "do_lower_case", "label_names"):
        earlier.pop(key, None)
    path.write_text(json.dumps(earlier))
    export(tiny_models, tmp_path, "squad", qa, "--format", "torchscript")
    assert json.loads(path.read_text())["files"] == {"torchscript": "model.pt",
                                                     "onnx": "model.onnx"}


def test_a_checkpoint_rewritten_in_place_is_another_checkpoint(tiny_models, tmp_path):
    checkpoint = tmp_path / "qa.pt"
    shutil.copyfile(tiny_models["folder"] / "qa.pt", checkpoint)
    export(tiny_models, tmp_path, "squad", checkpoint, "--format", "torchscript")
    torch.save({"model": BertForQuestionAnswering(tiny_models["qa"].config).state_dict()},
               checkpoint)  # retrained: same path, new weights
    export(tiny_models, tmp_path, "squad", checkpoint, "--format", "onnx")
    assert json.loads((tmp_path / "signature.json").read_text())["files"] == {
        "onnx": "model.onnx"}
    assert not (tmp_path / "model.pt").exists()


def test_the_export_records_the_casing_only_when_it_is_known(tiny_models, tmp_path):
    qa = tiny_models["folder"] / "qa.pt"
    export(tiny_models, tmp_path, "squad", qa, "--format", "torchscript", "--do_lower_case")
    assert json.loads((tmp_path / "tokenizer_config.json").read_text()) == {
        "do_lower_case": True}
    export(tiny_models, tmp_path, "squad", qa, "--format", "torchscript")
    assert not (tmp_path / "tokenizer_config.json").exists()  # not a stale casing
    assert json.loads((tmp_path / "signature.json").read_text())["do_lower_case"] is None


def test_export_check_takes_another_batch_and_length_than_the_export(tiny_models, tmp_path):
    """Batch 1 is exported at 2 (torch.export fixes an axis of 1), so the check takes 3; a
    length of 6 is checked at 2."""
    result = export(tiny_models, tmp_path, "squad", tiny_models["folder"] / "qa.pt",
                    "--format", "onnx", "--batch_size", 1, "--max_seq_length", 6)
    assert "on inputs (3, 2)" in result.stdout, result.stdout


def test_export_check_fails_when_the_export_differs(tiny_models, tmp_path):
    model = tiny_models["qa"]
    example = export_model.random_inputs(model.config.vocab_size, 2, 16, torch.int64, seed=0)
    export_model.export_torchscript(export_model.TritonSignature(model).eval(), example,
                                    tmp_path / "model.pt")
    other = BertForQuestionAnswering(model.config).eval()  # other random weights
    with pytest.raises(export_model.ExportMismatchError,
                       match="does not match PyTorch within --atol"):
        export_model.check_export("torchscript", tmp_path / "model.pt",
                                  export_model.TritonSignature(other), example, "squad",
                                  PARITY_ATOL, "cpu")


# ----------------------------------------------------------------------------- configs

@pytest.mark.parametrize("backend, header, files, kind", [
    ("onnxruntime", 'platform: "onnxruntime_onnx"', ["model.onnx"], "KIND_GPU"),
    ("pytorch", 'platform: "pytorch_libtorch"', ["model.pt"], "KIND_GPU"),
    ("python", 'backend: "python"', ["model.onnx", "model.py"], "KIND_CPU"),
])
def test_deployer_writes_a_valid_model_for_each_backend(qa_export, tmp_path, backend,
                                                        header, files, kind):
    export_dir, _ = qa_export
    run_deployment(TRITON / "deployer.py", "--export_dir", export_dir, "--model_repository",
                   tmp_path, "--model_name", "bert_qa", "--backend", backend,
                   "--max_batch_size", 8)
    model_dir = tmp_path / "bert_qa"
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == files
    config = (model_dir / "config.pbtxt").read_text()
    for line in (header, "max_batch_size: 8", 'name: "input__2"', "data_type: TYPE_INT64",
                 'name: "output__1"', "preferred_batch_size: [ 4, 8 ]",
                 "max_queue_delay_microseconds: 100", f"kind: {kind}",
                 'key: "max_position_embeddings"\n  value: { string_value: "64" }'):
        assert line in config, line
    assert "valid" in run_deployment(TRITON / "deployer.py", "--check", model_dir).stdout


def test_a_failed_redeploy_leaves_the_deployed_model(qa_export, tmp_path):
    export_dir = tmp_path / "export"
    shutil.copytree(qa_export[0], export_dir)
    deploy = [TRITON / "deployer.py", "--export_dir", export_dir, "--model_repository",
              tmp_path / "repository", "--model_name", "bert_qa", "--backend", "pytorch"]
    run_deployment(*deploy)
    deployed = tmp_path / "repository" / "bert_qa"
    served = (deployed / "1" / "model.pt").read_bytes()
    (export_dir / "model.pt").unlink()  # listed in signature.json, but gone
    failed = run_deployment(*deploy, check=False)
    assert failed.returncode == 1 and f"error: {export_dir / 'model.pt'}, listed in " \
        f"{export_dir / 'signature.json'}, does not exist" in failed.stderr, failed.stderr
    assert (deployed / "1" / "model.pt").read_bytes() == served
    (export_dir / "signature.json").write_text('{"files": ')  # cut short
    failed = run_deployment(*deploy, check=False)
    assert failed.returncode == 1 and failed.stderr.startswith(
        f"error: --export_dir's {export_dir / 'signature.json'}: not valid JSON"), failed.stderr
    assert sorted(p.name for p in deployed.iterdir()) == ["1", "config.pbtxt"]
    assert "valid" in run_deployment(TRITON / "deployer.py", "--check", deployed).stdout


# A redeploy that fails while copying the model (a full disk) or while renaming the new
# version into place, in the deployment environment.
FAILING_REDEPLOY = """
import errno, shutil, sys
from pathlib import Path
sys.argv = ["deployer.py", *sys.argv[2:]]
sys.path.insert(0, "triton")
import deployer
def fail(*_):
    raise OSError(errno.ENOSPC, "No space left on device")
if sys.argv_mode == "copy":
    deployer.shutil.copyfile = fail
else:
    rename = Path.rename
    Path.rename = lambda self, target: (fail() if self.name.startswith(".1.") and
                                        not self.name.endswith(".replaced")
                                        else rename(self, target))
deployer.main(deployer.parse_args())
"""


@pytest.mark.parametrize("failing", ["copy", "rename"])
def test_a_redeploy_that_fails_midway_keeps_the_deployed_version(qa_export, tmp_path,
                                                                 failing):
    export_dir, _ = qa_export
    deploy = ["--export_dir", export_dir, "--model_repository", tmp_path,
              "--model_name", "bert_qa", "--backend", "pytorch"]
    run_deployment(TRITON / "deployer.py", *deploy)
    deployed = tmp_path / "bert_qa"
    before = {p.relative_to(deployed): p.read_bytes() for p in deployed.rglob("*")
              if p.is_file()}
    script = FAILING_REDEPLOY.replace("sys.argv_mode", repr(failing))
    failed = run_deployment("-c", script, "x", *deploy, "--max_batch_size", 4, check=False)
    assert failed.returncode == 1 and "No space left on device" in failed.stderr
    after = {p.relative_to(deployed): p.read_bytes() for p in deployed.rglob("*")
             if p.is_file()}
    assert after == before  # the same files, config.pbtxt (max_batch_size) included


def test_a_model_without_implicit_batching_names_the_batch_axis(qa_export, tmp_path):
    export_dir, _ = qa_export
    run_deployment(TRITON / "deployer.py", "--export_dir", export_dir, "--model_repository",
                   tmp_path, "--model_name", "bert_qa", "--backend", "onnxruntime",
                   "--max_batch_size", 0, "--no-dynamic_batching")
    config = (tmp_path / "bert_qa" / "config.pbtxt").read_text()
    assert "max_batch_size: 0" in config and config.count("dims: [ -1, -1 ]") == 5, config
    assert "valid" in run_deployment(TRITON / "deployer.py", "--check", tmp_path / "bert_qa").stdout


def test_the_client_reads_the_models_position_limit_where_it_was_deployed_with_one():
    client = import_script(TRITON / "run_squad_client.py")
    limit = {"parameters": {"max_position_embeddings": {"string_value": "512"}}}
    assert client.max_positions(limit) == 512
    assert client.max_positions({"parameters": {}}) is None  # an older repository: no check


def test_each_backend_gets_its_own_thread_setting(qa_export, tmp_path):
    export_dir, _ = qa_export
    for backend, key in (("onnxruntime", "intra_op_thread_count"),
                         ("pytorch", "INTRA_OP_THREAD_COUNT")):
        run_deployment(TRITON / "deployer.py", "--export_dir", export_dir, "--model_repository",
                       tmp_path / backend, "--backend", backend, "--intra_op_threads", 2)
        config = (tmp_path / backend / "bert" / "config.pbtxt").read_text()
        assert f'key: "{key}"\n  value: {{ string_value: "2" }}' in config, config


@pytest.mark.parametrize("arguments, message", [
    (["--backend", "pytorch", "--onnx_accelerator", "tensorrt"],
     "--onnx_accelerator tensorrt needs --backend onnxruntime on GPU instances, not "
     "--backend pytorch on gpu"),
    (["--instance_kind", "cpu", "--onnx_accelerator", "tensorrt"], "not --backend onnxruntime on cpu"),
    (["--backend", "python", "--gpus", "0"],
     "--gpus places GPU instances, but these instances are cpu"),
])
def test_settings_the_backend_would_ignore_are_refused(qa_export, tmp_path, arguments, message):
    export_dir, _ = qa_export
    result = run_deployment(TRITON / "deployer.py", "--export_dir", export_dir,
                            "--model_repository", tmp_path, *arguments, check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("typo, correct, message", [
    ("max_batch_sise: 8", "max_batch_size: 8",
     'no field named "max_batch_sise". Did you mean max_batch_size?'),
    ("kind: KIND_CPUU", "kind: KIND_CPU", "no value named KIND_CPUU. Did you mean KIND_CPU"),
    ("data_type: TYPE_INT46", "data_type: TYPE_INT64",
     "no value named TYPE_INT46. Did you mean TYPE_INT64"),
    ("preferred_batch_size: [ 4, 16 ]", "preferred_batch_size: [ 4, 8 ]",
     r"preferred_batch_size \[16\] outside 1..8"),
    ('name: "bert"', 'name: "bert_qa"', 'differs from its directory "bert_qa"'),
])
def test_config_mistakes_are_rejected_with_the_line_and_the_fix(qa_export, tmp_path, typo,
                                                                correct, message):
    export_dir, _ = qa_export
    run_deployment(TRITON / "deployer.py", "--export_dir", export_dir, "--model_repository",
                   tmp_path, "--model_name", "bert_qa", "--backend", "python")
    config_path = tmp_path / "bert_qa" / "config.pbtxt"
    config_path.write_text(config_path.read_text().replace(correct, typo, 1))
    result = run_deployment(TRITON / "deployer.py", "--check", config_path, check=False)
    assert result.returncode != 0
    assert re.search(message, result.stderr), result.stderr
    assert str(config_path) in result.stderr


# ----------------------------------------------------------------------------- server

def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def processes_mentioning(text):
    """Process ids whose command line contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:  # ended while we looked
            continue
    return found


def wait_until_ready(server, http_port, log_path):
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the Triton server exited ({server.returncode}):\n"
                        f"{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready",
                                        timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.2)
    pytest.fail(f"the Triton server was not ready after {SERVER_START_TIMEOUT} s:\n"
                f"{log_path.read_text()[-3000:]}")


def stop(server):
    """SIGTERM, as a backgrounded server ignores SIGINT; SIGKILL if it does not exit."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return server.returncode


def long_context():
    """A question about all the SQuAD fixture's contexts joined: several windows."""
    articles = json.loads(SQUAD_FILE.read_text())["data"]
    contexts = [p["context"] for a in articles for p in a["paragraphs"]]
    question = articles[0]["paragraphs"][0]["qas"][0]["question"]
    return question, " ".join(contexts)


def test_triton_server_answers_like_inference_over_http_and_grpc(qa_export, tiny_models,
                                                                  tmp_path, capsys):
    export_dir, _ = qa_export
    python = deployment_python()
    repository = tmp_path / "repository"
    # max_batch_size 2: the context's windows take several requests.
    run_deployment(TRITON / "deployer.py", "--export_dir", export_dir, "--model_repository",
                   repository, "--model_name", "bert_qa", "--backend", "python",
                   "--max_batch_size", 2, "--intra_op_threads", 1)
    unavailable = run_deployment(TRITON / "server.py", "--model_repository", repository,
                                 "--print_only", check=False)
    if unavailable.returncode != 0:
        pytest.skip(f"the bundled Triton server cannot start here: {unavailable.stderr}")

    question, context = long_context()
    best, nbest = inference.main(inference.parse_args([
        "--init_checkpoint", str(tiny_models["folder"] / "qa.pt"),
        "--config_file", str(tiny_models["config"]), "--vocab_file", str(tiny_models["vocab"]),
        "--question", question, "--context", context, *WINDOW_ARGS, "--no-do_lower_case"]))
    printed = from_the_answer(capsys.readouterr().out)
    assert best and printed.startswith(f"Answer: {best}\n")

    http_port, grpc_port = free_port(), free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [python, str(TRITON / "server.py"), "--model_repository", str(repository),
             "--http_port", str(http_port), "--grpc_port", str(grpc_port)],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_ready(server, http_port, log_path)
        for protocol, port in (("http", http_port), ("grpc", grpc_port)):
            answered = run_deployment(
                TRITON / "run_squad_client.py", "--protocol", protocol,
                "--url", f"127.0.0.1:{port}", "--model_name", "bert_qa",
                "--vocab_file", export_dir / "vocab.txt", "--question", question,
                "--context", context, *WINDOW_ARGS)
            assert_same_answers(from_the_answer(answered.stdout), printed, nbest, protocol)
            too_long = run_deployment(
                TRITON / "run_squad_client.py", "--protocol", protocol,
                "--url", f"127.0.0.1:{port}", "--model_name", "bert_qa",
                "--vocab_file", export_dir / "vocab.txt", "--question", question,
                "--context", context, *WINDOW_ARGS, "--max_seq_length", 65, check=False)
            assert too_long.returncode != 0 and "error: --max_seq_length 65 is longer than " \
                "model bert_qa takes (64 positions)" in too_long.stderr, too_long.stderr
            unknown = run_deployment(
                TRITON / "run_squad_client.py", "--protocol", protocol,
                "--url", f"127.0.0.1:{port}", "--model_name", "bert_nope",
                "--vocab_file", export_dir / "vocab.txt", check=False)
            assert unknown.returncode == 1 and (
                f"\nrun_squad_client.py: error: --url 127.0.0.1:{port} ({protocol}), "
                "--model_name bert_nope: ") in unknown.stderr, unknown.stderr
            assert "Traceback" not in unknown.stderr, unknown.stderr
    finally:
        returncode = stop(server)
    assert returncode == 0, log_path.read_text()[-3000:]
    assert processes_mentioning(str(repository)) == [], "server processes left behind"


def from_the_answer(output):
    """The output from its answer line on, without the casing warnings logged before it
    (the cased text meets a lower-case vocabulary on purpose)."""
    return output[output.index("Answer: "):]


def assert_same_answers(client_output, inference_output, nbest, protocol):
    """The client printed inference.py's answer line; its n-best list is inference's up to
    float rounding of the logits."""
    answer_line, nbest_json = client_output.split("\n", 1)
    assert answer_line == inference_output.split("\n", 1)[0], protocol
    found = json.loads(nbest_json)
    assert [entry["text"] for entry in found] == [entry["text"] for entry in nbest], protocol
    for got, want in zip(found, nbest):
        assert got["start_logit"] == pytest.approx(want["start_logit"], abs=PARITY_ATOL)
        assert got["end_logit"] == pytest.approx(want["end_logit"], abs=PARITY_ATOL)


# ----------------------------------------------------------------------------- scripts

@pytest.mark.parametrize("script, flags", [
    ("export_model.py", ["--task", "--format", "--atol"]),
    ("deployer.py", ["--check", "--backend", "--max_batch_size"]),
    ("server.py", ["--model_repository", "--http_port"]),
    ("run_squad_client.py", ["--url", "--protocol", "--question"]),
    ("perf_client.py", ["--concurrency", "--duration"]),
])
def test_triton_scripts_explain_their_arguments(script, flags):
    result = run_deployment(TRITON / script, "--help")
    summary = (TRITON / script).read_text().split('"""')[1].split("\n\n")[0]
    assert " ".join(summary.split()) in " ".join(result.stdout.split())
    for flag in flags:
        assert f"  {flag} " in result.stdout or f"  {flag}\n" in result.stdout, flag


def test_perf_client_counts_failures_without_keeping_them_or_spinning():
    perf_client = import_script(TRITON / "perf_client.py")

    def server_gone():
        raise ConnectionRefusedError("server gone")
    result = perf_client.measure(lambda: server_gone, concurrency=2, duration=0.3, warmup=0.0)
    most = 2 * (0.3 / perf_client.FAILURE_BACKOFF_S + 1)  # one try per back-off, per thread
    assert 2 <= result["errors"] <= most and result["requests"] == 0
    assert result["first_error"] == "ConnectionRefusedError: server gone"


def test_perf_table_gives_p99_only_where_enough_requests_were_timed():
    perf_client = import_script(TRITON / "perf_client.py")
    row = {"concurrency": 1, "requests_per_s": 2.0, "p50_ms": 5.0, "p90_ms": 6.0,
           "p99_ms": 7.0, "errors": 0}
    table = perf_client.markdown_table([{**row, "requests": 20}, {**row, "requests": 100}], 8)
    few, enough = table.splitlines()[2:]
    assert few == "| 1 | 20 | 2.0 | 16.0 | 5.00 | 6.00 | n/a (< 100) | 0 |"
    assert enough == "| 1 | 100 | 2.0 | 16.0 | 5.00 | 6.00 | 7.00 | 0 |"
