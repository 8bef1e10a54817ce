"""Checkpoint interop: Hugging Face directories, NVIDIA checkpoints, export, refusals."""

import collections
import logging
import os

import pytest
import torch
import transformers

from conftest import random_batch, tiny_config
from model import (BertConfig, BertForPreTraining, BertForQuestionAnswering,
                   BertForSequenceClassification, BertModel, export_huggingface,
                   load_checkpoint, normalize_key)


def write_vocab(path, size=99):
    path.write_text("".join(f"[unused{i}]\n" for i in range(size)))
    return path


def nvidia_style(state_dict, pad_rows):
    """What NVIDIA's DeepLearningExamples writes: {'model': ...}, a DDP 'module.' prefix,
    `dense_act` for the activated Linear layers, the vocabulary padded to a multiple of 8."""
    renamed = collections.OrderedDict()
    for key, tensor in state_dict.items():
        key = key.replace("intermediate.dense.", "intermediate.dense_act.")
        key = key.replace("pooler.dense.", "pooler.dense_act.")
        key = key.replace("transform.dense.", "transform.dense_act.")
        if key in ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias",
                   "cls.predictions.decoder.weight"):
            tensor = torch.cat([tensor, torch.zeros((pad_rows,) + tensor.shape[1:])])
        if key == "cls.predictions.decoder.bias":
            continue  # NVIDIA's decoder has no bias of its own
        renamed["module." + key] = tensor
    return {"model": renamed, "optimizer": {}, "epoch": 0}


def test_nvidia_checkpoint_loads_with_padded_vocabulary(tmp_path):
    source = BertForPreTraining(tiny_config()).eval()
    path = tmp_path / "ckpt_7038.pt"
    torch.save(nvidia_style(source.state_dict(), pad_rows=5), path)
    target = BertForPreTraining(tiny_config()).eval()
    missing, unexpected = load_checkpoint(target, path)
    assert (missing, unexpected) == ([], [])
    batch = random_batch(source.config)
    for ours, reference in zip(target(*batch), source(*batch)):
        torch.testing.assert_close(ours, reference)


def test_pretraining_checkpoint_into_task_model_reports_heads(tmp_path, caplog):
    path = tmp_path / "pretrained.pt"
    torch.save({"model": BertForPreTraining(tiny_config()).state_dict()}, path)
    with caplog.at_level(logging.WARNING):
        missing, unexpected = load_checkpoint(BertForQuestionAnswering(tiny_config()), path)
    assert missing == ["qa_outputs.bias", "qa_outputs.weight"]
    assert "bert.pooler.dense.weight" in unexpected
    assert "cls.seq_relationship.weight" in unexpected
    assert "qa_outputs.weight" in caplog.text


def test_missing_encoder_weight_is_an_error_that_names_it(tmp_path):
    state = BertModel(tiny_config()).state_dict()
    del state["encoder.layer.1.output.dense.weight"]
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match="missing \\['bert.encoder.layer.1.output.dense.weight'\\]"):
        load_checkpoint(BertForSequenceClassification(tiny_config(), num_labels=2), path)


def test_wrong_vocabulary_is_an_error_not_a_silent_skip(tmp_path):
    path = tmp_path / "other_vocab.pt"
    torch.save(BertModel(tiny_config(vocab_size=50)).state_dict(), path)
    with pytest.raises(ValueError, match="has 50 vocabulary rows but the config's vocab_size is 99"):
        load_checkpoint(BertModel(tiny_config()), path)


def test_a_larger_vocabulary_than_padding_explains_is_an_error(tmp_path):
    """30522 rows under a config that says 2701: trimming them would keep the ids of another
    vocabulary; 30528 rows (NVIDIA's padding to 8) under vocab_size 30522 load."""
    path = tmp_path / "bigger_vocab.pt"
    torch.save(BertModel(tiny_config(vocab_size=300)).state_dict(), path)
    with pytest.raises(ValueError, match="has 300 vocabulary rows but the config's vocab_size "
                                         "is 99"):
        load_checkpoint(BertModel(tiny_config()), path)
    torch.save(BertModel(tiny_config(vocab_size=104)).state_dict(), path)  # 99 padded to 8
    load_checkpoint(BertModel(tiny_config()), path)


def test_shape_mismatch_is_an_error_that_names_the_tensor(tmp_path):
    path = tmp_path / "wider.pt"
    torch.save(BertModel(tiny_config(intermediate_size=40)).state_dict(), path)
    with pytest.raises(ValueError, match="intermediate.dense.weight: checkpoint \\(40, 32\\) "
                                         "vs model \\(37, 32\\)"):
        load_checkpoint(BertModel(tiny_config()), path)


class NotATensor:
    pass


def test_checkpoint_with_a_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": BertModel(tiny_config()).state_dict(), "extra": NotATensor()}, path)
    with pytest.raises(ValueError, match="evil.pt: it holds objects other than tensors and plain values"):
        load_checkpoint(BertModel(tiny_config()), path)


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.pt does not exist"):
        load_checkpoint(BertModel(tiny_config()), tmp_path / "absent.pt")
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor pytorch_model.bin"):
        load_checkpoint(BertModel(tiny_config()), tmp_path)


@pytest.mark.parametrize("make_model,hf_class", [
    (lambda c: BertForPreTraining(c), transformers.BertForPreTraining),
    (lambda c: BertForQuestionAnswering(c), transformers.BertForQuestionAnswering),
    (lambda c: BertForSequenceClassification(c, num_labels=3),
     transformers.BertForSequenceClassification),
])
def test_export_loads_in_transformers_with_the_same_outputs(tmp_path, make_model, hf_class):
    ours = make_model(tiny_config(pad_vocab_to_multiple_of=8)).eval()
    folder = export_huggingface(ours, write_vocab(tmp_path / "vocab.txt"), tmp_path / "export")
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json", "model.safetensors", "tokenizer_config.json", "vocab.txt"]
    theirs = hf_class.from_pretrained(folder).eval()
    batch = random_batch(ours.config)
    reference = theirs(input_ids=batch[0], token_type_ids=batch[1], attention_mask=batch[2])
    outputs = ours(*batch)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    real = batch[2].bool()
    for mine, theirs_output in zip(outputs, reference.values()):
        if mine.dim() > 1 and mine.shape[1] == real.shape[1]:  # per token: padding undefined
            mine, theirs_output = mine[real], theirs_output[real]
        torch.testing.assert_close(mine, theirs_output, atol=1e-5, rtol=1e-5)

    reloaded = make_model(tiny_config(pad_vocab_to_multiple_of=8)).eval()
    assert load_checkpoint(reloaded, folder) == ([], [])
    for key, tensor in ours.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], tensor), key


@pytest.mark.parametrize("do_lower_case", [True, False])
def test_export_keeps_the_casing_and_is_readable_by_others(tmp_path, do_lower_case):
    vocab = write_vocab(tmp_path / "vocab.txt")
    old_umask = os.umask(0o022)
    try:
        folder = export_huggingface(BertModel(tiny_config()), vocab, tmp_path / "export",
                                    do_lower_case)
    finally:
        os.umask(old_umask)
    assert folder.stat().st_mode & 0o777 == 0o755
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    assert tokenizer.do_lower_case is do_lower_case


def test_wrapper_prefixes_are_stripped_in_any_order():
    for key in ("_orig_mod.module.bert.pooler.dense.weight",
                "module._orig_mod.bert.pooler.dense.weight", "bert.pooler.dense.weight"):
        assert normalize_key(key, True) == "bert.pooler.dense.weight"


def test_export_replaces_an_old_directory_whole(tmp_path):
    vocab = write_vocab(tmp_path / "vocab.txt")
    old = tmp_path / "export"
    old.mkdir()
    (old / "stale.bin").write_text("left over")
    export_huggingface(BertModel(tiny_config()), vocab, old)
    assert not (old / "stale.bin").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "BERT was pre-trained on Wikipedia and BookCorpus.",
    "Mixed precision makes training faster on tensor cores.",
]


def test_real_minilm_weights_match_transformers(minilm):
    tokenizer = transformers.BertTokenizer(vocab_file=str(minilm / "vocab.txt"),
                                           do_lower_case=True)
    encoded = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    reference = transformers.BertModel.from_pretrained(minilm).eval()
    ours = BertModel(BertConfig.from_json_file(minilm / "config.json")).eval()
    assert load_checkpoint(ours, minilm) == ([], [])
    with torch.no_grad():
        sequence_output, pooled_output = ours(encoded["input_ids"], encoded["token_type_ids"],
                                              encoded["attention_mask"])
        expected = reference(**encoded)
    torch.testing.assert_close(sequence_output, expected.last_hidden_state, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pooled_output, expected.pooler_output, atol=1e-5, rtol=1e-4)


def test_real_minilm_into_question_answering_keeps_encoder(minilm):
    model = BertForQuestionAnswering(BertConfig.from_json_file(minilm / "config.json"))
    missing, unexpected = load_checkpoint(model, minilm)
    assert missing == ["qa_outputs.bias", "qa_outputs.weight"]
    assert unexpected == ["bert.pooler.dense.bias", "bert.pooler.dense.weight"]
