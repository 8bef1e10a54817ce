"""Hardening of fine-tuning and inference: bad input is found before any work and named
(flag, file, sizes), caches follow their file's content, long contexts stay linear, and the
training loop neither waits for the device each micro-batch nor all-reduces it.

Numbers in the test names are those of the hardening issues.
"""

import functools
import json
import math
import os
import random
import shutil
import socket
import sys
import time
from argparse import Namespace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import finetuning
import inference
import run_glue
import run_squad
import squad
import utils
from conftest import REPO, SPECIALS, write_vocab
from model import BertConfig, BertForQuestionAnswering, BertForSequenceClassification
from tokenization import FullTokenizer

FIXTURES = REPO / "tests" / "fixtures"
SQUAD_V1 = FIXTURES / "squad" / "tiny-v1.1.json"
SQUAD_V2 = FIXTURES / "squad" / "tiny-v2.0.json"
MRPC_DIR = FIXTURES / "glue" / "MRPC"
CONTEXT = "Paris is the capital of France. It lies on the Seine."


def write_config(path, vocab_size, max_position_embeddings=128):
    path.write_text(json.dumps({
        "vocab_size": vocab_size, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 37,
        "max_position_embeddings": max_position_embeddings, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0}))
    return path


def vocab_tokens(vocab):
    return len(vocab.read_text(encoding="utf-8").splitlines())


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """A vocabulary of the fixtures' words, a config of exactly its size and a fine-tuned
    (random) question-answering checkpoint of that config."""
    folder = tmp_path_factory.mktemp("model")
    text = SQUAD_V1.read_text() + "".join(p.read_text(encoding="utf-8-sig")
                                          for p in MRPC_DIR.iterdir()) + CONTEXT
    vocab = write_vocab(folder / "vocab.txt", text + "\n" + text)
    config = write_config(folder / "config.json", vocab_tokens(vocab))
    torch.manual_seed(0)
    qa_model = BertForQuestionAnswering(BertConfig.from_json_file(config))
    torch.save({"model": qa_model.state_dict()}, folder / "qa.pt")
    return config, vocab, folder / "qa.pt"


def squad_args(config, vocab, output_dir, *extra):
    return run_squad.parse_args([
        "--train_file", str(SQUAD_V1), "--predict_file", str(SQUAD_V1),
        "--config_file", str(config), "--vocab_file", str(vocab), "--do_lower_case",
        "--output_dir", str(output_dir), "--max_seq_length", "48", "--doc_stride", "16",
        "--max_query_length", "12", "--train_batch_size", "4", "--skip_cache",
        "--disable_progress_bar", *map(str, extra)])


def glue_args(config, vocab, output_dir, *extra):
    return run_glue.parse_args([
        "--task_name", "mrpc", "--data_dir", str(MRPC_DIR), "--config_file", str(config),
        "--vocab_file", str(vocab), "--output_dir", str(output_dir), "--max_seq_length", "32",
        "--train_batch_size", "4", "--disable_progress_bar", *map(str, extra)])


def inference_args(config, vocab, checkpoint, *extra):
    return inference.parse_args([
        "--init_checkpoint", str(checkpoint), "--config_file", str(config),
        "--vocab_file", str(vocab), "--do_lower_case", "--question", "What is the capital?",
        "--max_seq_length", "48", "--doc_stride", "16", "--max_query_length", "12",
        *map(str, extra)])


@pytest.fixture
def no_training(monkeypatch):
    """Makes any training (or model loading, where asked) a test failure: the error under
    test must come before the work."""
    def refuse(*_, **__):
        raise AssertionError("training started before the bad input was found")
    monkeypatch.setattr(finetuning, "train", refuse)
    return refuse


# ----------------------------------------------------------------------------- 1: cache

def cache_args(model_files, tmp_path, train_file):
    config, vocab, _ = model_files
    args = squad_args(config, vocab, tmp_path / "out", "--train_file", train_file,
                      "--cache_dir", tmp_path / "cache")
    args.skip_cache = False
    return args


def fresh_features(args, tokenizer):
    examples = run_squad.read_examples(args.train_file, True, args)
    return run_squad.read_features(examples, True, args, tokenizer)[1]


def assert_same_tensors(found, expected):
    assert set(found) == set(expected)
    for name in expected:
        assert torch.equal(found[name], expected[name]), name


def test_1_cache_follows_the_training_file_content_and_survives_damage(model_files, tmp_path,
                                                                        caplog):
    caplog.set_level("INFO", logger="bert")
    tokenizer = FullTokenizer(model_files[1], True)
    train_file = tmp_path / "train.json"
    shutil.copyfile(SQUAD_V1, train_file)
    args = cache_args(model_files, tmp_path, train_file)
    first = run_squad.training_tensors(args, tokenizer)
    cache = run_squad.cache_path(args)
    assert cache.is_file()

    # Another file under the same name (one paragraph fewer): its own features, not the old.
    dataset = json.loads(SQUAD_V1.read_text())
    del dataset["data"][0]["paragraphs"][0]
    train_file.write_text(json.dumps(dataset))
    caplog.clear()
    replaced = run_squad.training_tensors(args, tokenizer)
    assert f"{cache} was made from another version of --train_file {train_file}" in caplog.text
    assert len(replaced["input_ids"]) < len(first["input_ids"])
    assert_same_tensors(replaced, fresh_features(args, tokenizer))
    assert run_squad.cache_path(args) == cache             # rebuilt in place, none left over
    assert list(cache.parent.iterdir()) == [cache]

    # A truncated cache is rebuilt with a warning, then read again as usual.
    data = cache.read_bytes()
    cache.write_bytes(data[:len(data) // 2])
    caplog.clear()
    rebuilt = run_squad.training_tensors(args, tokenizer)
    assert f"the feature cache {cache} cannot be read" in caplog.text
    assert_same_tensors(rebuilt, replaced)
    caplog.clear()
    assert_same_tensors(run_squad.training_tensors(args, tokenizer), replaced)
    assert f"loading cached training features from {cache}" in caplog.text
    assert "rebuilding" not in caplog.text

    # A cache of the former format (bare tensors, no digest) is not trusted either.
    torch.save(first, cache)
    caplog.clear()
    assert_same_tensors(run_squad.training_tensors(args, tokenizer), replaced)
    assert "does not record which --train_file content" in caplog.text


def test_1_a_cache_folder_that_cannot_be_written_is_a_warning(model_files, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = cache_args(model_files, tmp_path, SQUAD_V1)
    args.cache_dir = str(blocker / "cache")
    tokenizer = FullTokenizer(model_files[1], True)
    tensors = run_squad.training_tensors(args, tokenizer)
    assert_same_tensors(tensors, fresh_features(args, tokenizer))
    assert f"cannot write the feature cache {blocker / 'cache'}" in caplog.text


# ----------------------------------------------------------------------------- 3: vocabulary

def larger_vocab(vocab, folder, extra):
    """The vocabulary with `extra` more tokens."""
    path = folder / "larger-vocab.txt"
    path.write_text(vocab.read_text() + "".join(f"extra{i}\n" for i in range(extra)))
    return path


@pytest.mark.parametrize("script", ["inference", "run_squad", "run_glue"])
def test_3_a_vocabulary_larger_than_the_embeddings_is_an_error(model_files, tmp_path, script,
                                                               no_training):
    config, vocab, checkpoint = model_files
    bigger = larger_vocab(vocab, tmp_path, 30)
    rows, tokens = vocab_tokens(vocab), vocab_tokens(vocab) + 30
    expected = (rf"--vocab_file {bigger} has {tokens:,} tokens, more than the model's "
                rf"{rows:,} word embeddings \(vocab_size in --config_file {config}[;)]")
    with pytest.raises(ValueError, match=expected):
        if script == "inference":
            inference.main(inference_args(config, bigger, checkpoint, "--context", CONTEXT))
        elif script == "run_squad":
            run_squad.main(squad_args(config, bigger, tmp_path, "--do_train"))
        else:
            run_glue.main(glue_args(config, bigger, tmp_path, "--do_train"))


def test_3_a_smaller_vocabulary_warns_beyond_the_padding_rows(model_files, tmp_path, caplog):
    _, vocab, _ = model_files
    tokens = vocab_tokens(vocab)
    padded = -(-tokens // 8) * 8
    for rows, warned in ((tokens, False), (padded, False), (padded + 1, True),
                         (tokens + 2000, True)):
        config = write_config(tmp_path / f"config-{rows}.json", rows)
        model = BertForQuestionAnswering(BertConfig.from_json_file(config))
        torch.save({"model": model.state_dict()}, tmp_path / f"qa-{rows}.pt")
        caplog.clear()
        best, _ = inference.main(inference_args(config, vocab, tmp_path / f"qa-{rows}.pt",
                                                "--context", CONTEXT))
        assert isinstance(best, str)
        message = (f"--vocab_file {vocab} has {tokens:,} tokens, {rows - tokens:,} fewer than "
                   f"the model's {rows:,} word embeddings (vocab_size in --config_file {config}"
                   f"; --init_checkpoint {tmp_path / f'qa-{rows}.pt'})")
        assert (message in caplog.text) == warned, (rows, caplog.text)


# ----------------------------------------------------------------------------- 4: [UNK]

def test_4_inference_warns_when_many_tokens_are_unknown(model_files, caplog, capsys):
    config, vocab, checkpoint = model_files
    inference.main(inference_args(config, vocab, checkpoint, "--context", CONTEXT))
    assert "[UNK]" not in caplog.text
    # Greek letters are not in the vocabulary: each word is one [UNK].
    foreign = CONTEXT + " " + " ".join(["λόγος"] * 3)
    caplog.clear()
    inference.main(inference_args(config, vocab, checkpoint, "--context", foreign))
    # 5 question tokens, 13 + 3 context tokens
    assert "3 of 21 question and context tokens (14%) are [UNK]" in caplog.text
    assert f"--vocab_file {vocab} is the model's and --do_lower_case (on here)" in caplog.text
    assert "Answer:" in capsys.readouterr().out                 # still answers


def test_4_unknown_share_counts_each_context_token_once(model_files):
    tokenizer = FullTokenizer(model_files[1], True)
    example = squad.example_from_text("What is λόγος?", " ".join(["Paris λόγος"] * 40))
    features = squad.convert_examples_to_features([example], tokenizer, 24, 4, 8, False)
    assert len(features) > 10                              # heavily overlapping windows
    # question: what is [UNK] ? (4); context: 80 words, half unknown
    assert inference.unknown_share(features) == (1 + 40, 4 + 80)


@pytest.mark.parametrize("flag, text", [("--context", "\u200b\u200b \x07"),
                                        ("--question", "\u200b")])
def test_4_text_the_tokenizer_drops_entirely_is_refused(model_files, flag, text):
    # Format and control characters are dropped: the model would be shown no context (or
    # no question) and print "(no answer)".
    config, vocab, checkpoint = model_files
    extra = ("--context", text) if flag == "--context" else ("--question", text,
                                                              "--context", CONTEXT)
    with pytest.raises(ValueError, match=f"^{flag} holds no text the tokenizer keeps"):
        inference.main(inference_args(config, vocab, checkpoint, *extra))


@pytest.mark.parametrize("flag", ["--n_best_size", "--max_answer_length", "--doc_stride",
                                  "--max_query_length"])
def test_4_decoding_and_window_sizes_below_one_are_refused(flag, capsys):
    # 0 used to print "(no answer)" for any question; a negative --max_query_length cut the
    # question's end off.
    for parse in (inference.parse_args, run_squad.parse_args):
        required = (["--init_checkpoint", "qa.pt"] if parse is inference.parse_args else
                    ["--bert_model", "bert-base-uncased", "--output_dir", "out"])
        with pytest.raises(SystemExit):
            parse([*required, flag, "0"])
        assert f"argument {flag}: must be at least 1, got 0" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 5: binary files

@pytest.mark.parametrize("content, message", [
    (b"Paris\x00\x01\x02 is in France", r", line 1: a NUL byte: it is a binary file, not text"),
    ("Paris est\nen França.".encode("latin-1"), r", line 2: byte 0xe7 is not UTF-8"),
])
def test_5_a_binary_or_non_utf8_context_file_is_named(model_files, tmp_path, content, message):
    config, vocab, checkpoint = model_files
    context_file = tmp_path / "context.bin"
    context_file.write_bytes(content)
    with pytest.raises(ValueError, match=f"--context_file {context_file}{message}"):
        inference.main(inference_args(config, vocab, checkpoint, "--context_file",
                                      context_file))


def test_5_binary_squad_and_glue_files_are_named(model_files, tmp_path, no_training):
    config, vocab, _ = model_files
    squad_file = tmp_path / "dev.json"
    squad_file.write_bytes(b"PK\x03\x04\x00\x00 a zip archive")
    with pytest.raises(ValueError, match=f"SQuAD file {squad_file}, line 1: a NUL byte"):
        run_squad.main(squad_args(config, vocab, tmp_path / "out", "--do_train", "--do_predict",
                                  "--predict_file", squad_file))
    data_dir = tmp_path / "MRPC"
    shutil.copytree(MRPC_DIR, data_dir)
    dev = data_dir / "dev.tsv"
    dev.write_bytes(dev.read_bytes() + "1\t1\t2\tCafé\tCafé\n".encode("latin-1"))
    with pytest.raises(ValueError, match=rf"GLUE file {dev}, line 4: byte 0xe9 is not UTF-8"):
        run_glue.main(glue_args(config, vocab, tmp_path / "out", "--do_train", "--do_eval",
                                "--data_dir", data_dir))


# ----------------------------------------------------------------------------- 8: output_dir

@pytest.mark.parametrize("script", ["run_squad", "run_glue"])
def test_8_an_unwritable_output_dir_is_found_before_any_work(model_files, tmp_path, script,
                                                             monkeypatch):
    config, vocab, _ = model_files
    blocker = tmp_path / "results"
    blocker.write_text("a file where the folder should be")

    def refuse(*_, **__):
        raise AssertionError("work started before --output_dir was checked")
    monkeypatch.setattr(utils, "init_distributed", refuse)
    output_dir = blocker / "out"
    with pytest.raises(PermissionError, match=f"--output_dir {output_dir} is not a writable"):
        if script == "run_squad":
            run_squad.main(squad_args(config, vocab, output_dir, "--do_train", "--do_predict"))
        else:
            run_glue.main(glue_args(config, vocab, output_dir, "--do_train", "--do_eval"))
    assert blocker.read_text() == "a file where the folder should be"


# ----------------------------------------------------------------------------- 11: input files

def test_11_run_glue_finds_a_missing_dev_file_before_training(model_files, tmp_path,
                                                              no_training):
    config, vocab, _ = model_files
    data_dir = tmp_path / "MRPC"
    data_dir.mkdir()
    shutil.copyfile(MRPC_DIR / "train.tsv", data_dir / "train.tsv")
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    (output_dir / "pytorch_model.bin").write_bytes(b"an earlier run's model")
    with pytest.raises(FileNotFoundError, match=f"{data_dir / 'dev.tsv'} does not exist"):
        run_glue.main(glue_args(config, vocab, output_dir, "--do_train", "--do_eval",
                                "--data_dir", data_dir))
    assert (output_dir / "pytorch_model.bin").read_bytes() == b"an earlier run's model"


def test_11_run_squad_finds_a_missing_or_malformed_predict_file_before_training(
        model_files, tmp_path, no_training):
    config, vocab, _ = model_files
    absent = tmp_path / "dev-v1.1.json"
    with pytest.raises(FileNotFoundError, match=f"--predict_file {absent} does not exist"):
        run_squad.main(squad_args(config, vocab, tmp_path, "--do_train", "--do_predict",
                                  "--predict_file", absent))
    absent_train = tmp_path / "train-v1.1.json"
    with pytest.raises(FileNotFoundError, match=f"--train_file {absent_train} does not exist"):
        run_squad.main(squad_args(config, vocab, tmp_path, "--do_train", "--train_file",
                                  absent_train))
    absent.write_text('{"data": [{"paragraphs": [{"qas": []}]}]}')   # no context
    with pytest.raises(squad.SquadFormatError, match=f"{absent}: article 0, paragraph 0: "
                                                     "missing 'context'"):
        run_squad.main(squad_args(config, vocab, tmp_path, "--do_train", "--do_predict",
                                  "--predict_file", absent))


@pytest.mark.parametrize("flags, message", [
    (["--max_steps", "0.5"], "--max_steps 0.5 is less than one step"),
    (["--num_train_epochs", "0"], "--num_train_epochs 0 gives no training step"),
    (["--num_train_epochs", "-1"], "--num_train_epochs -1 gives no training step")])
def test_11_no_training_step_names_the_flag(model_files, tmp_path, flags, message,
                                            no_training):
    config, vocab, _ = model_files
    with pytest.raises(ValueError, match=message):
        run_glue.main(glue_args(config, vocab, tmp_path, "--do_train", *flags))


# ----------------------------------------------------------------------------- 12: positions

@pytest.mark.parametrize("script", ["run_squad", "run_glue", "inference"])
def test_12_max_seq_length_beyond_the_position_table_is_an_error(model_files, tmp_path, script,
                                                                 no_training):
    config, vocab, checkpoint = model_files
    expected = (f"--max_seq_length 200 is longer than the model's max_position_embeddings 128 "
                f"\\(--config_file {config}\\): pass --max_seq_length 128 or less")
    with pytest.raises(ValueError, match=expected):
        if script == "run_squad":
            run_squad.main(squad_args(config, vocab, tmp_path, "--do_train", "--max_seq_length",
                                      200))
        elif script == "run_glue":
            run_glue.main(glue_args(config, vocab, tmp_path, "--do_train", "--max_seq_length",
                                    200))
        else:
            inference.main(inference_args(config, vocab, checkpoint, "--context", CONTEXT,
                                          "--max_seq_length", 200))


# ----------------------------------------------------------------------------- 13: max context

def old_check_is_max_context(doc_spans, cur_span_index, position):
    """Google's definition, scoring every window for the one token (the oracle)."""
    best_score, best_index = None, None
    for span_index, span in enumerate(doc_spans):
        end = span.start + span.length - 1
        if not span.start <= position <= end:
            continue
        score = min(position - span.start, end - position) + 0.01 * span.length
        if best_score is None or score > best_score:
            best_score, best_index = score, span_index
    return cur_span_index == best_index


def test_13_max_context_equals_the_original_rule_on_random_windows():
    rng = random.Random(13)
    layouts = 0
    for _ in range(300):
        num_tokens = rng.randint(1, 120)
        if rng.random() < 0.5:   # as convert_examples_to_features lays them out
            spans = squad._doc_spans(num_tokens, rng.randint(1, 40), rng.randint(1, 50))
        else:                    # any windows over the document, overlapping at will
            spans = []
            for _ in range(rng.randint(1, 12)):
                start = rng.randrange(num_tokens)
                spans.append(squad.DocSpan(start, rng.randint(1, num_tokens - start)))
        best = squad._max_context_windows(spans, num_tokens)
        for span_index, span in enumerate(spans):
            for position in range(span.start, span.start + span.length):
                assert (best[position] == span_index) == old_check_is_max_context(
                    spans, span_index, position), (spans, span_index, position)
        layouts += 1
    assert layouts == 300


def test_13_a_million_character_context_converts_in_seconds(tmp_path):
    words = [f"t{i}" for i in range(30)]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(SPECIALS + ["q"] + words) + "\n")
    tokenizer = FullTokenizer(vocab, True)
    context = " ".join(words[i % 30] for i in range(250_000))
    assert len(context) > 900_000
    started = time.monotonic()
    features = squad.convert_examples_to_features([squad.example_from_text("q", context)],
                                                  tokenizer, 384, 128, 64, False)
    seconds = time.monotonic() - started
    # ~1 s here; the quadratic rule took ~10 minutes (1,950 windows x 1,950 x 380 tokens).
    assert seconds < 60, f"{seconds:.0f} s for {len(features)} windows"
    assert sum(sum(f.token_is_max_context.values()) for f in features) == 250_000


# ----------------------------------------------------------------------------- 14: v2 hint

def test_14_the_squad_v2_hint_names_the_flag(tmp_path):
    predictions = tmp_path / "predictions.json"
    questions = [qa["id"] for article in json.loads(SQUAD_V2.read_text())["data"]
                 for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
    predictions.write_text(json.dumps({qid: "" for qid in questions}))
    with pytest.raises(ValueError, match="is this a SQuAD 2.0 file\\? Score it with "
                                         "--version_2_with_negative") as error:
        run_squad.main(run_squad.parse_args([
            "--do_eval", "--predict_file", str(SQUAD_V2), "--predictions_file",
            str(predictions), "--output_dir", str(tmp_path)]))
    assert "version_2=True" not in str(error.value)


def test_14_a_v2_file_to_score_as_v1_is_refused_before_training(model_files, tmp_path,
                                                                no_training):
    config, vocab, _ = model_files
    with pytest.raises(ValueError, match=r"--predict_file .*tiny-v2.0.json: \d+ questions have "
                                         r"no answers .*Score it with --version_2_with_negative"):
        run_squad.main(squad_args(config, vocab, tmp_path / "out", "--do_train", "--do_predict",
                                  "--do_eval", "--predict_file", SQUAD_V2, "--max_steps", 2))
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


# ----------------------------------------------------------------------------- GPU paths

def train_args(**overrides):
    values = dict(gradient_accumulation_steps=1, train_batch_size=8, seed=3, max_steps=3,
                  num_train_epochs=1.0, learning_rate=1e-3, warmup_proportion=0.0, fp16=False,
                  bf16=False, loss_scale=0.0, init_loss_scale=2.0**20,
                  disable_progress_bar=True, log_freq=1000)
    values.update(overrides)
    return Namespace(**values)


def classifier_and_data(sequences=64, seed=0):
    """A tiny classifier and labelled random sequences of different lengths."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=37,
                        max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 99, (sequences, 16), generator=generator)
    lengths = torch.randint(4, 17, (sequences,), generator=generator)
    attention_mask = (torch.arange(16)[None, :] < lengths[:, None]).long()
    dataset = finetuning.named_dataset({
        "input_ids": input_ids * attention_mask,
        "token_type_ids": torch.zeros_like(input_ids), "attention_mask": attention_mask,
        "labels": torch.randint(0, 2, (sequences,), generator=generator)})
    return BertForSequenceClassification(config, 2), dataset


def test_the_token_layout_is_read_from_the_host_mask():
    """trimmed_batch hands the model its layout (on a GPU the model would read it back from
    the device every micro-batch); the outputs are those of the model finding it itself."""
    model, dataset = classifier_and_data()
    model.eval()
    tensors = dataset.tensors
    mask = tensors[dataset.names.index("attention_mask")][:8].clone()
    mask[:, 2:] = 0  # mostly padding, so the model packs the real tokens, and trimmed
    mask[0, :10] = 1  # to 10 of 16 positions: the layout must be the trimmed batch's
    tensors = [t[:8] for t in tensors]
    tensors[dataset.names.index("attention_mask")] = mask
    batch = finetuning.trimmed_batch(dataset.names, tensors, torch.device("cpu"))
    assert batch["input_ids"].shape == (8, 10) and batch["padded"] is True
    assert batch["token_index"].device.type == "cpu" and len(batch["token_index"]) == mask.sum()
    with torch.no_grad():
        given = model(**batch)
        found = model(**{k: v for k, v in batch.items() if k not in ("token_index", "padded")})
    assert torch.equal(given[1], found[1])


SYNCHRONISING = ("item", "tolist", "cpu", "numpy", "__float__", "__bool__")


@functools.cache
def in_repository(file_name):
    path = Path(file_name).resolve()
    return path.is_relative_to(REPO) and not any(
        part.startswith(".") or part == "site-packages" for part in path.relative_to(REPO).parts)


def test_gpu9_no_host_device_sync_per_micro_batch(monkeypatch):
    """Counts the calls in our code that read a tensor's value on the host (on a GPU they
    wait for it) between optimizer steps; none of these steps is a logging step. Calls
    inside torch are left out: on the CPU its optimizer and sampler read CPU-only counters
    (on CUDA the optimizer is fused and keeps them on the device). The sequence length of a
    batch is read from the host's copy of the mask, which waits for nothing."""
    calls = []
    for name in SYNCHRONISING:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            caller = sys._getframe(1)
            if in_repository(caller.f_code.co_filename):
                calls.append(f"{_name} in {Path(caller.f_code.co_filename).name}:"
                             f"{caller.f_lineno}")
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    at_step = []
    step = utils.optimizer_step

    def recording_step(*args, **kwargs):
        at_step.append(len(calls))
        return step(*args, **kwargs)
    monkeypatch.setattr(utils, "optimizer_step", recording_step)

    model, dataset = classifier_and_data()
    summary = finetuning.train(model, dataset, train_args(gradient_accumulation_steps=4,
                                                          max_steps=4),
                               utils.Distributed(0, 0, 1, torch.device("cpu")),
                               utils.MetricLogger(None, False))
    assert summary["train_steps"] == 4 and math.isfinite(summary["final_loss"])
    between_steps = [later - earlier for earlier, later in zip(at_step, at_step[1:])]
    assert len(between_steps) == 3 and max(between_steps) <= 2, (between_steps, calls)
    assert calls and all("finetuning.py" in call for call in calls)   # the count sees ours


class RecordedMetrics:
    def __init__(self):
        self.losses = {}

    def log(self, step, values, label=None):
        self.losses[step[1]] = values["loss"]


def logged_train_records(output_dir):
    lines = (output_dir / "dllogger.json").read_text().splitlines()
    records = [json.loads(line.removeprefix("DLLL ")) for line in lines]
    return [r["data"] for r in records if r["type"] == "LOG" and r["step"][:1] == ["train"]]


def test_fp16_steps_the_scaler_skips_still_advance_the_schedule(model_files, tmp_path,
                                                                 monkeypatch):
    """A skipped step moves the learning rate on, as NVIDIA's amp fine-tuning does; a run
    whose steps were all skipped is an error, not a model saved unchanged."""
    config, vocab, _ = model_files
    real_step = utils.optimizer_step
    calls = []

    def skip_the_first_two(optimizer, scheduler, scaler, *rest):
        calls.append(None)
        if len(calls) <= 2:
            optimizer.zero_grad()
            return False
        return real_step(optimizer, scheduler, scaler, *rest)

    monkeypatch.setattr(utils, "optimizer_step", skip_the_first_two)
    results = run_glue.main(glue_args(config, vocab, tmp_path / "some", "--do_train",
                                      "--max_steps", 4, "--log_freq", 1,
                                      "--warmup_proportion", 0.0))
    rates = [record["learning_rate"] for record in logged_train_records(tmp_path / "some")]
    assert rates == pytest.approx([5e-5 * (1 - k / 4) for k in range(1, 5)])  # not 2 at 1
    assert results["skipped_steps"] == 2 and results["train_steps"] == 4

    calls.clear()
    monkeypatch.setattr(utils, "optimizer_step", lambda optimizer, *_: optimizer.zero_grad())
    with pytest.raises(FloatingPointError, match="all 3 optimizer steps were skipped"):
        run_glue.main(glue_args(config, vocab, tmp_path / "none", "--do_train",
                                "--max_steps", 3))


def test_fine_tuning_starts_the_fp16_loss_scale_at_amps_2_16(model_files, tmp_path):
    config, vocab, _ = model_files
    assert glue_args(config, vocab, tmp_path).init_loss_scale == 2.0**16
    assert squad_args(config, vocab, tmp_path).init_loss_scale == 2.0**16


def test_the_logged_loss_is_the_mean_of_the_steps_since_the_last_line():
    """Not a mean since step 0, which barely moves late in a run; final_loss is the last
    step's, as NVIDIA's."""
    logged, summaries = {}, {}
    for log_freq in (1, 2):
        model, dataset = classifier_and_data()
        metrics = RecordedMetrics()
        summaries[log_freq] = finetuning.train(
            model, dataset, train_args(max_steps=4, log_freq=log_freq),
            utils.Distributed(0, 0, 1, torch.device("cpu")), metrics)
        logged[log_freq] = metrics.losses
    each = logged[1]
    assert list(each) == [1, 2, 3, 4] and len(set(each.values())) == 4
    assert logged[2] == pytest.approx({2: (each[1] + each[2]) / 2, 4: (each[3] + each[4]) / 2},
                                      rel=1e-6)
    assert summaries[1]["final_loss"] == summaries[2]["final_loss"] == pytest.approx(each[4])


def test_gpu13_accumulation_gives_the_result_of_one_big_batch(monkeypatch):
    # Clipping and AdamW hardly see the gradients' scale, so the weights alone would not
    # show a missing division by the accumulation steps: the norms before clipping do.
    clip = torch.nn.utils.clip_grad_norm_
    norms = {1: [], 4: []}
    results, summaries = [], []
    for accumulation in (1, 4):
        def recording_clip(*args, **kwargs):
            norm = clip(*args, **kwargs)
            norms[accumulation].append(norm.item())
            return norm
        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
        model, dataset = classifier_and_data()
        summaries.append(finetuning.train(
            model, dataset, train_args(gradient_accumulation_steps=accumulation),
            utils.Distributed(0, 0, 1, torch.device("cpu")), utils.MetricLogger(None, False)))
        results.append(model.state_dict())
    assert len(norms[1]) == 3 and norms[4] == pytest.approx(norms[1], rel=1e-5)
    assert summaries[1]["final_loss"] == pytest.approx(summaries[0]["final_loss"], rel=1e-5)
    for name, tensor in results[0].items():
        torch.testing.assert_close(results[1][name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ddp_rank(rank, world_size, port, folder):
    """One gloo rank: the same fine-tuning with and without accumulation, counting the
    micro-batches that DDP was told not to all-reduce."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    distributed = utils.init_distributed(no_cuda=True)
    no_sync = torch.nn.parallel.DistributedDataParallel.no_sync
    skipped, bucket_views = [], []

    def counting_no_sync(self):
        skipped.append(1)
        bucket_views.append(self.gradient_as_bucket_view)
        return no_sync(self)
    torch.nn.parallel.DistributedDataParallel.no_sync = counting_no_sync
    saved = {}
    for accumulation in (1, 2):
        skipped.clear()
        model, dataset = classifier_and_data(sequences=48)
        finetuning.train(model, dataset, train_args(gradient_accumulation_steps=accumulation,
                                                    train_batch_size=4),
                         distributed, utils.MetricLogger(None, False))
        saved[accumulation] = {"state": model.state_dict(), "skipped": len(skipped)}
    saved["bucket_views"] = bucket_views
    torch.save(saved, Path(folder) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_gpu13_ddp_all_reduces_once_per_step_and_ranks_agree(tmp_path):
    mp.spawn(ddp_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for saved in ranks:
        assert saved[1]["skipped"] == 0 and saved[2]["skipped"] == 3     # 3 steps x (2 - 1)
        assert saved["bucket_views"] == [True] * 3
        for name, tensor in saved[1]["state"].items():   # accumulation changes nothing
            torch.testing.assert_close(saved[2]["state"][name], tensor, rtol=1e-5, atol=1e-6,
                                       msg=name)
    for name, tensor in ranks[0][2]["state"].items():    # the last micro-batch did reduce
        torch.testing.assert_close(ranks[1][2]["state"][name], tensor, rtol=0, atol=1e-7,
                                   msg=name)
