"""run_glue.py, run_squad.py and inference.py end to end on the shipped fixtures."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import inference
import run_glue
import run_squad
from conftest import REPO, write_vocab

FIXTURES = REPO / "tests" / "fixtures"
SQUAD_FILE = FIXTURES / "squad" / "tiny-v1.1.json"
MRPC_DIR = FIXTURES / "glue" / "MRPC"


@pytest.fixture(scope="module")
def tiny_model_files(tmp_path_factory):
    """A vocabulary covering the fixtures' words and a tiny config (random weights)."""
    folder = tmp_path_factory.mktemp("model")
    text = SQUAD_FILE.read_text() + "".join(p.read_text(encoding="utf-8-sig")
                                            for p in MRPC_DIR.iterdir())
    vocab = write_vocab(folder / "vocab.txt", text + "\n" + text)
    config = folder / "config.json"
    config.write_text(json.dumps({
        "vocab_size": len(vocab.read_text().split("\n")) - 1, "hidden_size": 32,
        "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37,
        "max_position_embeddings": 128, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0}))
    return config, vocab


def glue_args(config, vocab, output_dir, *extra):
    return run_glue.parse_args([
        "--task_name", "mrpc", "--data_dir", str(MRPC_DIR), "--config_file", str(config),
        "--vocab_file", str(vocab), "--output_dir", str(output_dir), "--max_seq_length", "32",
        "--train_batch_size", "4", "--disable_progress_bar", *map(str, extra)])


def squad_args(config, vocab, output_dir, *extra):
    return run_squad.parse_args([
        "--train_file", str(SQUAD_FILE), "--predict_file", str(SQUAD_FILE),
        "--config_file", str(config), "--vocab_file", str(vocab), "--do_lower_case",
        "--output_dir", str(output_dir), "--max_seq_length", "48", "--doc_stride", "16",
        "--max_query_length", "12", "--train_batch_size", "4", "--skip_cache",
        "--disable_progress_bar", *map(str, extra)])


def test_glue_train_eval_predict_writes_metrics_predictions_and_model(tiny_model_files,
                                                                      tmp_path):
    results = run_glue.main(glue_args(*tiny_model_files, tmp_path, "--do_train", "--do_eval",
                                      "--do_predict", "--max_steps", 3))
    assert results["train_steps"] == 3 and {"acc", "f1", "acc_and_f1"} <= set(results)
    saved = json.loads((tmp_path / "eval_results.json").read_text())
    assert saved["acc"] == results["acc"]
    predictions = json.loads((tmp_path / "predictions.json").read_text())
    test_rows = len((MRPC_DIR / "test.tsv").read_text(encoding="utf-8-sig").splitlines()) - 1
    assert len(predictions) == test_rows and set(predictions.values()) <= {"0", "1"}
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    assert state["model"]["classifier.weight"].shape == (2, 32)


def test_glue_overfits_one_batch(tiny_model_files, tmp_path):
    results = run_glue.main(glue_args(*tiny_model_files, tmp_path, "--do_train", "--do_eval",
                                      "--max_steps", 40, "--learning_rate", "3e-3",
                                      "--warmup_proportion", "0", "--data_dir",
                                      FIXTURES / "glue" / "MRPC", "--train_batch_size", 8,
                                      "--log_freq", 1))
    losses = [json.loads(line[5:])["data"]["loss"]
              for line in (tmp_path / "dllogger.json").read_text().splitlines()
              if '"step": ["train"' in line]
    # The loss is a running mean over steps, so a falling mean means falling step losses.
    assert losses[-1] < 0.6 * losses[0]


def test_glue_needs_something_to_do(tiny_model_files, tmp_path):
    with pytest.raises(ValueError, match="nothing to do"):
        run_glue.main(glue_args(*tiny_model_files, tmp_path))


def official_line(stdout):
    """The one JSON line that the official evaluation scripts print."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, stdout
    return json.loads(lines[0])


def test_squad_train_predict_eval(tiny_model_files, tmp_path, capsys):
    results = run_squad.main(squad_args(*tiny_model_files, tmp_path, "--do_train",
                                        "--do_predict", "--do_eval", "--num_train_epochs", 2))
    official = official_line(capsys.readouterr().out)
    assert set(official) == {"exact_match", "f1"}
    assert official["f1"] == results["f1"]
    predictions = json.loads((tmp_path / "predictions.json").read_text())
    nbest = json.loads((tmp_path / "nbest_predictions.json").read_text())
    questions = {qa["id"] for article in json.loads(SQUAD_FILE.read_text())["data"]
                 for paragraph in article["paragraphs"] for qa in paragraph["qas"]}
    assert set(predictions) == set(nbest) == questions
    for qas_id, entries in nbest.items():
        assert entries[0]["text"] == predictions[qas_id]
        assert abs(sum(e["probability"] for e in entries) - 1) < 1e-6
    assert (tmp_path / "pytorch_model.bin").is_file()


def test_squad_scores_a_predictions_file_without_a_model(tmp_path, capsys):
    dataset = json.loads(SQUAD_FILE.read_text())
    answers = {qa["id"]: qa["answers"][0]["text"] for article in dataset["data"]
               for paragraph in article["paragraphs"] for qa in paragraph["qas"]}
    wrong = sorted(answers)[0]
    answers[wrong] = "something else entirely"
    (tmp_path / "predictions.json").write_text(json.dumps(answers))
    run_squad.main(run_squad.parse_args([
        "--do_eval", "--predict_file", str(SQUAD_FILE), "--predictions_file",
        str(tmp_path / "predictions.json"), "--output_dir", str(tmp_path)]))
    expected = 100.0 * (len(answers) - 1) / len(answers)
    assert official_line(capsys.readouterr().out) == {"exact_match": pytest.approx(expected),
                                "f1": pytest.approx(expected)}


def test_inference_gives_the_answer_run_squad_predicted(tiny_model_files, tmp_path, capsys):
    config, vocab = tiny_model_files
    run_squad.main(squad_args(config, vocab, tmp_path, "--do_train", "--do_predict",
                              "--max_steps", 2))
    predictions = json.loads((tmp_path / "predictions.json").read_text())
    article = json.loads(SQUAD_FILE.read_text())["data"][0]["paragraphs"][0]
    question = article["qas"][0]
    best, nbest = inference.main(inference.parse_args([
        "--init_checkpoint", str(tmp_path / "pytorch_model.bin"), "--config_file", str(config),
        "--vocab_file", str(vocab), "--do_lower_case", "--question", question["question"],
        "--context", article["context"], "--max_seq_length", "48", "--doc_stride", "16",
        "--max_query_length", "12", "--n_best_size", "3"]))
    assert best == predictions[question["id"]]
    assert f"Answer: {best}" in capsys.readouterr().out
    assert len(nbest) <= 3


def test_inference_context_file_errors_name_the_file(tiny_model_files, tmp_path):
    config, vocab = tiny_model_files
    with pytest.raises(ValueError, match="--context_file .*absent.txt"):
        inference.main(inference.parse_args([
            "--init_checkpoint", str(config.parent), "--config_file", str(config),
            "--vocab_file", str(vocab), "--question", "q?", "--context_file",
            str(tmp_path / "absent.txt")]))


@pytest.mark.slow
def test_glue_wrapper_runs_on_one_cpu_process(tiny_model_files, tmp_path):
    config, vocab = tiny_model_files
    run_glue.main(glue_args(config, vocab, tmp_path / "seed", "--do_train", "--max_steps", 1))
    subprocess.run(["bash", "scripts/run_glue.sh", str(tmp_path / "seed" / "pytorch_model.bin"),
                    str(MRPC_DIR), str(vocab), str(config), str(tmp_path / "out"), "mrpc", "1",
                    "4", "2", "1e-4", "0.1", "1", "fp32", "2", "train eval", "2"],
                   cwd=REPO, check=True, capture_output=True, timeout=300,
                   env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert results["train_steps"] == 2 and "f1" in results
