"""run_glue.py, run_squad.py and inference.py end to end on the shipped fixtures."""

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import finetuning
import glue
import inference
import run_glue
import run_squad
from conftest import REPO, write_vocab
from model import BertConfig, BertForSequenceClassification, BertModel, export_huggingface
from test_hardening_finetuning import free_port
from test_tokenization import write_tokenizer_json
from tokenization import FullTokenizer, load_vocab

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
    summary = json.loads((tmp_path / "dllogger.json").read_text().splitlines()[-1][5:])["data"]
    # NVIDIA's names beside ours, for parsers of its dllogger files
    assert (summary["exact_match"], summary["F1"]) == (results["acc"], results["f1"])
    assert summary["e2e_inference_time"] > 0 and summary["inference_sequences_per_second"] > 0


def test_glue_overfits_one_batch(tiny_model_files, tmp_path):
    results = run_glue.main(glue_args(*tiny_model_files, tmp_path, "--do_train", "--do_eval",
                                      "--max_steps", 40, "--learning_rate", "3e-3",
                                      "--warmup_proportion", "0", "--data_dir",
                                      FIXTURES / "glue" / "MRPC", "--train_batch_size", 8,
                                      "--log_freq", 1))
    step_losses = [json.loads(line[5:])["data"]["loss"]  # --log_freq 1: each step's own
                   for line in (tmp_path / "dllogger.json").read_text().splitlines()
                   if '"step": ["train"' in line]
    assert len(step_losses) == 40 and step_losses[-1] < 0.3 * step_losses[0]


NVIDIA_ONLY_FLAGS = {  # what NVIDIA's wrappers and READMEs pass that changes nothing here
    run_squad: ["--output_dir", "out", "--do_eval", "--eval_script", "evaluate-v1.1.py",
                "--verbose_logging", "--use_env", "--profile"],
    run_glue: ["--output_dir", "out", "--task_name", "mrpc", "--data_dir", "glue",
               "--server_ip", "", "--server_port", "", "--local_rank", "0"],
    inference: ["--init_checkpoint", "qa.pt", "--question", "q", "--context", "c", "--seed",
                "1", "--verbose_logging", "--local_rank", "0"],
}


@pytest.mark.parametrize("script", NVIDIA_ONLY_FLAGS, ids=lambda module: module.__name__)
def test_nvidias_command_lines_parse(script):
    flags = NVIDIA_ONLY_FLAGS[script]
    args = vars(script.parse_args(flags))
    given = {flag.lstrip("-"): value for flag, value in zip(flags, flags[1:] + [None])
             if flag.startswith("--") and value is not None and not value.startswith("--")}
    assert {name: str(args[name]) for name in given} == given


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


def test_squad_v2_scores_the_predictions_as_written_whatever_their_odds(tmp_path, capsys):
    """Predicted with --null_score_diff_threshold 2: the answer whose odds are 1.5 counts as
    given (the official script with its na-prob file would cut at 1.0 again)."""
    questions = [{"id": "capital", "question": "Where?",
                  "answers": [{"text": "Paris", "answer_start": 0}]},
                 {"id": "none", "question": "Who?", "answers": [], "is_impossible": True}]
    data = {"version": "v2.0",
            "data": [{"paragraphs": [{"context": "Paris is in France.", "qas": questions}]}]}
    (tmp_path / "dev-v2.0.json").write_text(json.dumps(data))
    (tmp_path / "predictions.json").write_text(json.dumps({"capital": "Paris", "none": ""}))
    (tmp_path / "null_odds.json").write_text(json.dumps({"capital": 1.5, "none": 3.0}))
    run_squad.main(run_squad.parse_args([
        "--do_eval", "--version_2_with_negative", "--predict_file",
        str(tmp_path / "dev-v2.0.json"), "--predictions_file", str(tmp_path / "predictions.json"),
        "--output_dir", str(tmp_path)]))
    official = official_line(capsys.readouterr().out)
    assert official["exact"] == official["HasAns_exact"] == official["NoAns_exact"] == 100.0
    assert official["best_exact"] == 100.0


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
    # The same logits: inference windows, runs and decodes the question as run_squad does.
    written = json.loads((tmp_path / "nbest_predictions.json").read_text())[question["id"]]
    assert 1 <= len(nbest) <= 3 and [a["text"] for a in nbest] == [a["text"] for a in
                                                                  written[:len(nbest)]]
    for ours, theirs in zip(nbest, written):
        for key in ("start_logit", "end_logit"):
            assert ours[key] == pytest.approx(theirs[key], abs=1e-5), key


def test_inference_context_file_errors_name_the_file(tiny_model_files, tmp_path):
    config, vocab = tiny_model_files
    with pytest.raises(ValueError, match="--context_file .*absent.txt"):
        inference.main(inference.parse_args([
            "--init_checkpoint", str(config.parent), "--config_file", str(config),
            "--vocab_file", str(vocab), "--question", "q?", "--context_file",
            str(tmp_path / "absent.txt")]))


@pytest.mark.parametrize("given", [[], ["--question", "q?"], ["--context", "c."],
                                   ["--context_file", "c.txt"]])
def test_inference_takes_a_question_with_its_context_or_the_sample(given):
    args = inference.parse_args(["--init_checkpoint", "qa.pt", *given])
    if not given:  # NVIDIA's inference.py also answers a sample of its own
        question, context = inference.question_and_context(args)
        assert (question, context) == (inference.SAMPLE_QUESTION, inference.SAMPLE_CONTEXT)
        return
    with pytest.raises(ValueError, match="--question and --context \\(or --context_file\\) "
                                         "go together"):
        inference.question_and_context(args)


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


def glue_rank(rank, port, config, vocab, output_dir):
    """One of two gloo ranks fine-tuning MRPC; rank 0 records whether it still belongs to
    the process group when it evaluates."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    evaluate = run_glue.evaluate

    def recording_evaluate(*args, **kwargs):
        (Path(output_dir) / "grouped_at_eval").write_text(
            str(torch.distributed.is_initialized()))
        return evaluate(*args, **kwargs)
    run_glue.evaluate = recording_evaluate
    run_glue.main(glue_args(config, vocab, output_dir, "--do_train", "--do_eval",
                            "--max_steps", 1))


@pytest.mark.slow
def test_ranks_leave_the_group_before_rank_0_evaluates(tiny_model_files, tmp_path):
    # The other ranks would otherwise wait for rank 0's evaluation at the last barrier,
    # which times out on a long one (SQuAD's dev set on CPUs) and takes rank 0 down too.
    mp.spawn(glue_rank, args=(free_port(), *map(str, tiny_model_files), str(tmp_path)),
             nprocs=2, join=True)
    assert (tmp_path / "grouped_at_eval").read_text() == "False"
    assert "acc" in json.loads((tmp_path / "eval_results.json").read_text())


def alarm_after(seconds):
    """Turns a hang into a failure: SIGALRM raises in the test after `seconds`."""
    def fail(*_):
        raise TimeoutError(f"still running after {seconds} s")
    signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)


def test_too_small_a_training_set_for_one_step_is_an_error_not_a_hang(tiny_model_files,
                                                                      tmp_path):
    # 5 training features cannot fill 2 micro-batches of 32.
    alarm_after(120)
    try:
        with pytest.raises(ValueError, match="gets 1 micro-batch.* of 32 per epoch, fewer than "
                                             "one optimizer step of "
                                             "--gradient_accumulation_steps 2"):
            run_squad.main(squad_args(*tiny_model_files, tmp_path, "--do_train", "--max_steps",
                                      3, "--train_batch_size", 64,
                                      "--gradient_accumulation_steps", 2))
    finally:
        signal.alarm(0)


def test_an_empty_training_set_is_named(tiny_model_files, tmp_path):
    # Every question of this file is unanswerable: without --version_2_with_negative training
    # skips them all.
    only_impossible = tmp_path / "impossible.json"
    only_impossible.write_text(json.dumps({"version": "v2.0", "data": [{"paragraphs": [{
        "context": "Paris is in France.", "qas": [{"id": "q1", "question": "Where is Rome?",
                                                   "answers": [], "is_impossible": True}]}]}]}))
    with pytest.raises(ValueError, match="impossible.json: no questions that training can use"):
        run_squad.main(squad_args(*tiny_model_files, tmp_path, "--do_train", "--train_file",
                                  only_impossible))


def test_defaults_that_follow_nvidia(tiny_model_files, tmp_path):
    glue = glue_args(*tiny_model_files, tmp_path)
    squad_defaults = run_squad.parse_args(["--output_dir", str(tmp_path)])
    assert (glue.seed, squad_defaults.seed) == (1, 42)
    assert glue.log_freq == squad_defaults.log_freq == 50
    assert run_squad.parse_args(["--output_dir", "o", "--disable-progress-bar"]
                                ).disable_progress_bar


def test_the_last_training_step_is_logged(tiny_model_files, tmp_path):
    run_glue.main(glue_args(*tiny_model_files, tmp_path, "--do_train", "--max_steps", 3))
    logged = [json.loads(line[5:])["step"] for line in
              (tmp_path / "dllogger.json").read_text().splitlines() if '"train"' in line]
    assert logged == [["train", 3]]          # log_freq 50: only the last step


def test_squad_predictions_file_goes_with_do_eval_alone(tiny_model_files, tmp_path):
    with pytest.raises(ValueError, match="--predictions_file scores an existing file"):
        run_squad.main(squad_args(*tiny_model_files, tmp_path, "--do_train", "--do_eval",
                                  "--predictions_file", tmp_path / "predictions.json"))


def test_squad_feature_cache_depends_on_version_and_vocabulary(tiny_model_files, tmp_path):
    config, vocab = tiny_model_files
    paths = {run_squad.cache_path(squad_args(config, vocab, tmp_path, *extra))
             for extra in ([], ["--version_2_with_negative"])}
    other_vocab = tmp_path / "vocab.txt"
    other_vocab.write_text(vocab.read_text() + "extra\n")
    paths.add(run_squad.cache_path(squad_args(config, other_vocab, tmp_path)))
    assert len(paths) == 3


def test_squad_v2_training_reads_its_own_cache(tiny_model_files, tmp_path):
    """A v1 run's cache (answerable questions only) is not reused by a v2 run."""
    config, vocab = tiny_model_files
    v2_file = FIXTURES / "squad" / "tiny-v2.0.json"
    sizes = []
    for extra in ([], ["--version_2_with_negative"]):
        args = squad_args(config, vocab, tmp_path, "--train_file", v2_file,
                          "--cache_dir", tmp_path / "cache", *extra)
        args.skip_cache = False
        sizes.append(len(run_squad.training_tensors(args, FullTokenizer(vocab, True))
                          ["input_ids"]))
    assert len(list((tmp_path / "cache").iterdir())) == 2
    assert sizes[1] > sizes[0]


def write_squad(path, qa):
    context = "Paris is in France."
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": context, "qas": [{"id": "q1", "question": "Where?", **qa}]}]}]}))
    return path


@pytest.mark.parametrize("qa, predictions, message", [
    ({}, {"q1": "France"},
     r"no-answers.json: article 0 \('T'\), paragraph 0, question 'q1': missing 'answers'"),
    ({"answers": [{"text": "France", "answer_start": 12}]}, ["France"],
     r"--predictions_file .*predictions.json: expected a JSON object of question id to str"),
])
def test_scoring_a_malformed_file_names_it(tmp_path, qa, predictions, message):
    predict_file = write_squad(tmp_path / ("no-answers.json" if not qa else "ok.json"), qa)
    (tmp_path / "predictions.json").write_text(json.dumps(predictions))
    with pytest.raises(ValueError, match=message):
        run_squad.main(run_squad.parse_args([
            "--do_eval", "--predict_file", str(predict_file), "--predictions_file",
            str(tmp_path / "predictions.json"), "--output_dir", str(tmp_path)]))


def test_prediction_needs_a_fine_tuned_head(tiny_model_files, tmp_path):
    """A pre-training checkpoint (no qa_outputs) or no checkpoint at all would answer
    with a random head: both are errors when nothing is trained."""
    config, vocab = tiny_model_files
    encoder = BertModel(BertConfig.from_json_file(config))
    torch.save({"model": encoder.state_dict()}, tmp_path / "encoder.pt")
    with pytest.raises(ValueError, match=r"encoder.pt has no weights for the "
                                         r"BertForQuestionAnswering head \(qa_outputs.bias"):
        inference.main(inference.parse_args([
            "--init_checkpoint", str(tmp_path / "encoder.pt"), "--config_file", str(config),
            "--vocab_file", str(vocab), "--question", "Where?", "--context", "In Paris.",
            "--max_seq_length", "128"]))
    with pytest.raises(ValueError, match="--init_checkpoint is required to predict"):
        run_squad.main(squad_args(config, vocab, tmp_path, "--do_predict"))
    # A classifier checkpoint without the pooler it reads is not fine-tuned either.
    classifier = BertForSequenceClassification(BertConfig.from_json_file(config), 2)
    state = {k: v for k, v in classifier.state_dict().items() if "pooler" not in k}
    torch.save({"model": state}, tmp_path / "no-pooler.pt")
    with pytest.raises(ValueError, match=r"head \(bert.pooler.dense.bias"):
        run_glue.main(glue_args(config, vocab, tmp_path, "--do_eval", "--init_checkpoint",
                                tmp_path / "no-pooler.pt"))
    # Training may start from the encoder alone: the head is what it learns.
    results = run_squad.main(squad_args(config, vocab, tmp_path, "--do_train", "--max_steps", 1,
                                        "--init_checkpoint", tmp_path / "encoder.pt"))
    assert results["train_steps"] == 1


def strict_json(path):
    """The file parsed as standard JSON (no NaN or Infinity, which strict parsers reject)."""
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}")
    return json.loads(Path(path).read_text(), parse_constant=refuse)


def test_squad_v2_end_to_end_and_rescoring_the_written_files(tiny_model_files, tmp_path,
                                                              capsys):
    v2_file = FIXTURES / "squad" / "tiny-v2.0.json"
    config, vocab = tiny_model_files
    results = run_squad.main(squad_args(config, vocab, tmp_path, "--train_file", v2_file,
                                        "--predict_file", v2_file, "--version_2_with_negative",
                                        "--do_train", "--do_predict", "--do_eval",
                                        "--max_steps", 2))
    official = official_line(capsys.readouterr().out)
    assert {"exact", "f1", "HasAns_f1", "NoAns_f1", "best_f1", "best_f1_thresh"} <= set(official)
    null_odds = strict_json(tmp_path / "null_odds.json")
    assert set(null_odds) == set(strict_json(tmp_path / "predictions.json"))
    run_squad.main(run_squad.parse_args([
        "--do_eval", "--version_2_with_negative", "--predict_file", str(v2_file),
        "--predictions_file", str(tmp_path / "predictions.json"), "--output_dir",
        str(tmp_path)]))
    assert official_line(capsys.readouterr().out) == official == {
        k: v for k, v in results.items() if k in official}


@pytest.mark.slow
def test_squad_wrapper_trains_predicts_and_scores_on_one_cpu_process(tiny_model_files,
                                                                      tmp_path):
    config, vocab = tiny_model_files
    squad_dir = tmp_path / "squad"
    squad_dir.mkdir()
    for name in ("train-v1.1.json", "dev-v1.1.json"):
        (squad_dir / name).write_text(SQUAD_FILE.read_text())
    run_squad.main(squad_args(config, vocab, tmp_path / "seed", "--do_train", "--max_steps", 1))
    subprocess.run(["bash", "scripts/run_squad.sh", str(tmp_path / "seed" / "pytorch_model.bin"),
                    "1", "4", "1e-4", "fp32", "1", "1",
                    str(squad_dir), str(vocab), str(tmp_path / "out"), "train eval", str(config),
                    "2"],
                   cwd=REPO, check=True, capture_output=True, timeout=300,
                   env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                        "EXTRA_ARGS": "--max_seq_length 48 --doc_stride 16 --max_query_length 12 "
                                      "--skip_cache --disable_progress_bar"})
    summary = (tmp_path / "out" / "dllogger.json").read_text()
    assert '"train_steps": 2' in summary and '"exact_match"' in summary
    assert json.loads((tmp_path / "out" / "predictions.json").read_text())


def test_a_checkpoint_naming_its_labels_in_another_order_predicts_the_same_names(
        tiny_model_files, tmp_path):
    # transformers' MNLI models order entailment, neutral, contradiction; glue.py does not.
    config, vocab = tiny_model_files
    model = BertForSequenceClassification(BertConfig.from_json_file(config), num_labels=3)
    ours = glue.get_processor("mnli").get_labels()
    theirs = ["entailment", "neutral", "contradiction"]
    export_huggingface(model, vocab, tmp_path / "ours", label_names=ours)
    with torch.no_grad():
        for tensor in (model.classifier.weight, model.classifier.bias):
            tensor.copy_(tensor[[ours.index(name) for name in theirs]])
    export_huggingface(model, vocab, tmp_path / "theirs", label_names=theirs)
    assert json.loads((tmp_path / "theirs" / "config.json").read_text())["id2label"] == {
        "0": "entailment", "1": "neutral", "2": "contradiction"}
    predicted = {}
    for name in ("ours", "theirs"):
        run_glue.main(run_glue.parse_args([
            "--task_name", "mnli", "--data_dir", str(FIXTURES / "glue" / "MNLI"),
            "--init_checkpoint", str(tmp_path / name), "--output_dir", str(tmp_path / name / "out"),
            "--do_eval", "--max_seq_length", "32", "--disable_progress_bar"]))
        predicted[name] = json.loads((tmp_path / name / "out" / "dev_predictions.json").read_text())
    assert predicted["ours"] == predicted["theirs"]


def test_a_checkpoint_directory_without_vocab_txt_gives_its_tokenizer_json(tiny_model_files,
                                                                          tmp_path):
    # As transformers 5's save_pretrained leaves it: tokenizer.json, no vocab.txt.
    config, vocab = tiny_model_files
    model = BertForSequenceClassification(BertConfig.from_json_file(config), num_labels=2)
    folder = export_huggingface(model, vocab, tmp_path / "hf")
    (folder / "vocab.txt").unlink()
    args = argparse.Namespace(init_checkpoint=str(folder), config_file=None, vocab_file=None)
    with pytest.raises(ValueError, match="--vocab_file is required .* holds vocab.txt or "
                                         "tokenizer.json"):
        finetuning.resolve_model_files(args)
    write_tokenizer_json(folder / "tokenizer.json", load_vocab(vocab))
    finetuning.resolve_model_files(args)
    assert args.vocab_file == str(folder / "tokenizer.json")
    assert load_vocab(args.vocab_file) == load_vocab(vocab)


def test_casing_follows_the_tokenizer_config_of_a_checkpoint_directory(tiny_model_files,
                                                                        tmp_path):
    config, vocab = tiny_model_files
    model = BertForSequenceClassification(BertConfig.from_json_file(config), num_labels=2)
    folder = export_huggingface(model, vocab, tmp_path / "cased", do_lower_case=False)
    assert finetuning.do_lower_case(glue_args(config, vocab, tmp_path)) is True  # --bert_model's
    assert finetuning.do_lower_case(glue_args(config, vocab, tmp_path,
                                              "--init_checkpoint", folder)) is False
    assert finetuning.do_lower_case(glue_args(config, vocab, tmp_path, "--init_checkpoint",
                                              folder, "--do_lower_case")) is True
    (folder / "tokenizer_config.json").write_text("[true]")
    with pytest.raises(ValueError, match="--init_checkpoint's .*tokenizer_config.json: expected "
                                         "a JSON object, got a list"):
        finetuning.do_lower_case(glue_args(config, vocab, tmp_path, "--init_checkpoint", folder))
