"""The model against Hugging Face's on identical weights, and its own contracts."""

import json

import pytest
import torch
import torch.nn.functional as F
import transformers

from conftest import random_batch, tiny_config
from model import (DROPOUT_BITS, BertConfig, BertForPreTraining, BertForQuestionAnswering,
                   BertForSequenceClassification, BertModel, Dropout, TokenLayout, attention,
                   cross_entropy_ignoring_negatives, dropout, tied_word_tables)

torch.manual_seed(0)


def hf_twin(ours, hf_class, **kwargs):
    """The Hugging Face model of the same class, holding exactly our weights."""
    config = transformers.BertConfig(**{k: v for k, v in ours.config.to_dict().items()
                                        if k != "pad_vocab_to_multiple_of"}, **kwargs)
    theirs = hf_class(config).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return theirs


def assert_close(ours, theirs, atol=1e-5):
    torch.testing.assert_close(ours, theirs, atol=atol, rtol=1e-5)


def at_real_tokens(output, attention_mask):
    """Per-token outputs where the mask is 1: values at padding are undefined (ours are
    zero when the batch is packed, transformers' are whatever attention gave)."""
    return output[attention_mask.bool()]


# ----------------------------------------------------------------------------- config

def test_config_rejects_heads_that_do_not_divide_hidden_size():
    with pytest.raises(ValueError, match="hidden_size \\(30\\) must be divisible by "
                                         "num_attention_heads \\(4\\)"):
        tiny_config(hidden_size=30)


def test_config_rejects_unknown_activation():
    with pytest.raises(ValueError, match="hidden_act 'gleu' is not one of"):
        tiny_config(hidden_act="gleu")


def test_config_json_round_trip_ignores_hugging_face_extras(tmp_path):
    path = tmp_path / "config.json"
    tiny_config().to_json_file(path, extra={"model_type": "bert", "architectures": ["BertModel"]})
    assert BertConfig.from_json_file(path) == tiny_config()


def test_config_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json does not exist"):
        BertConfig.from_json_file(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        BertConfig.from_json_file(bad)
    bad.write_text(json.dumps({"num_attention_heads": 5, "hidden_size": 32}))
    with pytest.raises(ValueError, match="bad.json: .*divisible"):
        BertConfig.from_json_file(bad)


def test_padded_vocab_size_rounds_up_only_when_asked():
    assert BertConfig(vocab_size=30522).padded_vocab_size == 30522
    assert BertConfig(vocab_size=30522, pad_vocab_to_multiple_of=8).padded_vocab_size == 30528


# ----------------------------------------------------------------------------- parity

def test_bert_model_matches_transformers_with_padding():
    ours = BertModel(tiny_config()).eval()
    theirs = hf_twin(ours, transformers.BertModel)
    input_ids, token_type_ids, attention_mask = random_batch(ours.config)
    sequence_output, pooled_output = ours(input_ids, token_type_ids, attention_mask)
    reference = theirs(input_ids=input_ids, token_type_ids=token_type_ids,
                       attention_mask=attention_mask)
    assert_close(at_real_tokens(sequence_output, attention_mask),
                 at_real_tokens(reference.last_hidden_state, attention_mask))
    assert_close(pooled_output, reference.pooler_output)


def masked_lm_labels_for(input_ids, attention_mask, ignore):
    labels = torch.full_like(input_ids, ignore)
    masked = (torch.arange(input_ids.shape[1]) % 3 == 1) & attention_mask.bool()
    labels[masked] = input_ids[masked]
    return labels


def test_pretraining_logits_and_losses_match_transformers():
    ours = BertForPreTraining(tiny_config()).eval()
    theirs = hf_twin(ours, transformers.BertForPreTraining)
    input_ids, token_type_ids, attention_mask = random_batch(ours.config)
    next_sentence_labels = torch.tensor([0, 1, 1])

    prediction_scores, seq_relationship_scores = ours(input_ids, token_type_ids, attention_mask)
    reference = theirs(input_ids=input_ids, token_type_ids=token_type_ids,
                       attention_mask=attention_mask,
                       labels=masked_lm_labels_for(input_ids, attention_mask, -100),
                       next_sentence_label=next_sentence_labels)
    assert_close(at_real_tokens(prediction_scores, attention_mask),
                 at_real_tokens(reference.prediction_logits, attention_mask))
    assert_close(seq_relationship_scores, reference.seq_relationship_logits)

    total_loss, masked_lm_loss, next_sentence_loss = ours(
        input_ids, token_type_ids, attention_mask,
        masked_lm_labels=masked_lm_labels_for(input_ids, attention_mask, -1),
        next_sentence_labels=next_sentence_labels)
    assert_close(total_loss, reference.loss)
    assert_close(next_sentence_loss, torch.nn.functional.cross_entropy(
        reference.seq_relationship_logits, next_sentence_labels))
    assert_close(masked_lm_loss + next_sentence_loss, total_loss)


def test_pretraining_gradients_match_transformers_and_accumulate():
    """Every parameter's gradient, the tied word table's included (ours adds the lookup's
    rows into the decoder's dense gradient sparsely on the CPU), over two backward passes."""
    ours = BertForPreTraining(tiny_config())
    theirs = hf_twin(ours, transformers.BertForPreTraining).train()
    ours.eval(), theirs.eval()  # no dropout: the same function on both sides
    input_ids, token_type_ids, attention_mask = random_batch(ours.config)
    next_sentence_labels = torch.tensor([0, 1, 1])
    for _ in range(2):
        ours(input_ids, token_type_ids, attention_mask,
             masked_lm_labels=masked_lm_labels_for(input_ids, attention_mask, -1),
             next_sentence_labels=next_sentence_labels)[0].backward()
        theirs(input_ids=input_ids, token_type_ids=token_type_ids,
               attention_mask=attention_mask,
               labels=masked_lm_labels_for(input_ids, attention_mask, -100),
               next_sentence_label=next_sentence_labels).loss.backward()
    word_gradient = ours.bert.embeddings.word_embeddings.weight.grad
    assert word_gradient.layout == torch.strided
    reference = dict(theirs.named_parameters())
    for name, parameter in ours.named_parameters():
        assert_close(parameter.grad, reference[name].grad)


def test_question_answering_matches_transformers():
    ours = BertForQuestionAnswering(tiny_config()).eval()
    theirs = hf_twin(ours, transformers.BertForQuestionAnswering)
    input_ids, token_type_ids, attention_mask = random_batch(ours.config)
    start_positions, end_positions = torch.tensor([1, 2, 30]), torch.tensor([3, 2, 30])
    loss, start_logits, end_logits = ours(input_ids, token_type_ids, attention_mask,
                                          start_positions, end_positions)
    reference = theirs(input_ids=input_ids, token_type_ids=token_type_ids,
                       attention_mask=attention_mask,
                       start_positions=start_positions, end_positions=end_positions)
    assert_close(at_real_tokens(start_logits, attention_mask),
                 at_real_tokens(reference.start_logits, attention_mask))
    assert_close(at_real_tokens(end_logits, attention_mask),
                 at_real_tokens(reference.end_logits, attention_mask))
    # Our loss leaves padding out of the softmax: transformers' logits, padding masked.
    padding = attention_mask == 0
    expected = sum(torch.nn.functional.cross_entropy(logits.masked_fill(padding, -10000.0),
                                                     positions.clamp(0, 11), ignore_index=11)
                   for logits, positions in ((reference.start_logits, start_positions),
                                             (reference.end_logits, end_positions))) / 2
    assert_close(loss, expected)


@pytest.mark.parametrize("num_labels", [3, 1])
def test_sequence_classification_matches_transformers(num_labels):
    ours = BertForSequenceClassification(tiny_config(), num_labels=num_labels).eval()
    theirs = hf_twin(ours, transformers.BertForSequenceClassification, num_labels=num_labels)
    input_ids, token_type_ids, attention_mask = random_batch(ours.config)
    labels = torch.tensor([0, 2, 1]) if num_labels > 1 else torch.tensor([0.5, -1.0, 2.0])
    loss, logits = ours(input_ids, token_type_ids, attention_mask, labels=labels)
    reference = theirs(input_ids=input_ids, token_type_ids=token_type_ids,
                       attention_mask=attention_mask, labels=labels)
    assert_close(logits, reference.logits)
    assert_close(loss, reference.loss)


# ----------------------------------------------------------------------------- contracts

def test_every_parameter_gets_a_gradient_after_one_backward():
    model = BertForPreTraining(tiny_config())
    input_ids, token_type_ids, attention_mask = random_batch(model.config)
    loss, _, _ = model(input_ids, token_type_ids, attention_mask,
                       masked_lm_labels=masked_lm_labels_for(input_ids, attention_mask, -1),
                       next_sentence_labels=torch.tensor([0, 1, 0]))
    loss.backward()
    without_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert without_grad == []
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight


def test_dense_masked_lm_loss_equals_loss_over_all_positions():
    model = BertForPreTraining(tiny_config()).eval()
    input_ids, token_type_ids, attention_mask = random_batch(model.config)
    labels = masked_lm_labels_for(input_ids, attention_mask, -100)
    prediction_scores, _ = model(input_ids, token_type_ids, attention_mask)
    expected = torch.nn.functional.cross_entropy(
        prediction_scores.reshape(-1, model.config.vocab_size), labels.reshape(-1))
    _, masked_lm_loss, next_sentence_loss = model(input_ids, token_type_ids, attention_mask,
                                                  masked_lm_labels=labels)
    assert_close(masked_lm_loss, expected)
    assert next_sentence_loss is None


def test_packed_and_unpacked_batches_give_the_same_outputs(monkeypatch):
    model = BertForPreTraining(tiny_config()).eval()
    input_ids, token_type_ids, attention_mask = random_batch(model.config, batch=4, seq=16)
    packed = model(input_ids, token_type_ids, attention_mask)
    monkeypatch.setattr(TokenLayout, "PACK_BELOW", 0.0)  # never pack
    unpacked = model(input_ids, token_type_ids, attention_mask)
    assert_close(at_real_tokens(packed[0], attention_mask),
                 at_real_tokens(unpacked[0], attention_mask))
    assert_close(packed[1], unpacked[1])
    assert (packed[0][~attention_mask.bool()] == model.cls.predictions(
        torch.zeros(1, model.config.hidden_size))).all()


def test_padded_vocabulary_is_never_exposed():
    model = BertForPreTraining(tiny_config(pad_vocab_to_multiple_of=8)).eval()
    assert model.bert.embeddings.word_embeddings.weight.shape[0] == 104
    assert model.bert.embeddings.word_embeddings.weight[99:].abs().sum() == 0
    input_ids, token_type_ids, attention_mask = random_batch(model.config)
    prediction_scores, _ = model(input_ids, token_type_ids, attention_mask)
    assert prediction_scores.shape[-1] == 99


def test_unpadded_and_padded_vocabulary_give_the_same_outputs():
    plain = BertForPreTraining(tiny_config()).eval()
    padded = BertForPreTraining(tiny_config(pad_vocab_to_multiple_of=8)).eval()
    state = plain.state_dict()
    for key in ("bert.embeddings.word_embeddings.weight", "cls.predictions.bias"):
        state[key] = torch.cat([state[key], torch.zeros((5,) + state[key].shape[1:])])
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]
    state["cls.predictions.decoder.bias"] = state["cls.predictions.bias"]
    padded.load_state_dict(state)
    batch = random_batch(plain.config)
    for ours, reference in zip(padded(*batch), plain(*batch)):
        assert_close(ours, reference)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fully_padded_rows_give_no_nan(dtype):
    model = BertForQuestionAnswering(tiny_config()).eval()
    input_ids, token_type_ids, attention_mask = random_batch(model.config)
    attention_mask[1] = 0
    if dtype == torch.float16:
        model = model.half()  # CPU autocast does not cover fp16 for every op

    def logits(*tensors):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype == torch.bfloat16):
            return torch.stack(model(*tensors))
    batch = logits(input_ids, token_type_ids, attention_mask)
    assert torch.isfinite(batch).all()
    # ...and the empty row changes nothing in the others.
    others = [0, *range(2, len(input_ids))]
    torch.testing.assert_close(batch[:, others], logits(input_ids[others],
                                                        token_type_ids[others],
                                                        attention_mask[others]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_autocast_stays_close_to_fp32_and_keeps_the_mask(dtype):
    """Value and output weights scaled 10x: what padding would add to the real tokens (1.2
    where the mask is lost) stands far above bf16's rounding (0.02)."""
    model = BertModel(tiny_config()).eval()
    with torch.no_grad():
        for layer in model.encoder.layer:
            layer.attention.self.value.weight.mul_(10)
            layer.attention.output.dense.weight.mul_(10)
    batch = random_batch(model.config)
    real = batch[2].bool()
    assert not real.all()  # the batch has padding
    reference, _ = model(*batch)
    with torch.autocast("cpu", dtype=dtype):
        low_precision, _ = model(*batch)
    assert (low_precision.float() - reference)[real].abs().max() < 0.1


def test_question_answering_has_no_pooler_like_transformers():
    keys = BertForQuestionAnswering(tiny_config()).state_dict()
    assert not any(k.startswith("bert.pooler.") for k in keys)


# ----------------------------------------------------------------------------- CPU fast paths

@pytest.fixture(params=["eager", "compiled"])
def dropout_path(request, monkeypatch):
    """The bf16 CPU dropout's mask eager (every tensor of these tests is small) or
    inductor-compiled (any size)."""
    import model
    monkeypatch.setattr(model, "DROPOUT_COMPILE_MIN_ELEMENTS",
                        1 if request.param == "compiled" else 2**62)
    monkeypatch.setattr(model._HASH_DROPOUT, "error", None)
    return request.param


def test_cpu_dropout_drops_at_the_rate_and_keeps_the_expectation(dropout_path):
    import model
    torch.manual_seed(0)
    x = torch.ones(1000, 1001, dtype=torch.bfloat16)
    y = dropout(x, 0.1)
    kept = y != 0
    keep_rate = 1 - round(0.1 * 2**DROPOUT_BITS) / 2**DROPOUT_BITS
    assert abs(kept.float().mean().item() - 0.9) < 0.002  # 4 standard deviations
    # Each kept value is 1/keep_rate rounded once to bf16 (not times a rounded scale).
    assert torch.equal(y[kept], torch.tensor(1 / keep_rate).to(torch.bfloat16).expand(
        int(kept.sum())))
    # Neighbours, rows and the next call's mask must not correlate with each element.
    flat = kept.reshape(-1).float()
    for lag in (1, 2, 1001):
        assert abs((flat[:-lag] * flat[lag:]).mean().item() - 0.81) < 0.003, lag
    again = dropout(x, 0.1) != 0
    assert abs((kept == again).float().mean().item() - (0.9**2 + 0.1**2)) < 0.003
    assert model._HASH_DROPOUT.error is None


def test_compiled_cpu_dropout_gives_the_eager_bits_forward_and_backward(monkeypatch):
    """Whether a tensor's mask is compiled is a matter of speed only: the same seed gives
    the same output and gradient, so the size threshold (and a machine without a
    compiler) changes no result."""
    import model
    x = torch.randn(3, 50, 70, dtype=torch.bfloat16, requires_grad=True)
    results = []
    for threshold in (1, 2**62):
        monkeypatch.setattr(model, "DROPOUT_COMPILE_MIN_ELEMENTS", threshold)
        torch.manual_seed(7)
        y = dropout(x, 0.3)
        (y.float() * torch.arange(y.numel()).view(y.shape)).sum().backward()
        results.append((y.detach().clone(), x.grad.clone()))
        x.grad = None
    assert model._HASH_DROPOUT.error is None
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


def test_cpu_dropout_falls_back_to_the_eager_mask_when_compiling_fails(monkeypatch, caplog):
    import model

    def fails(*_):
        raise RuntimeError("no C++ compiler found")

    x = torch.randn(40, 30, dtype=torch.bfloat16)
    torch.manual_seed(2)
    expected = dropout(x, 0.2)  # eager: the tensor is below the threshold
    monkeypatch.setattr(model, "DROPOUT_COMPILE_MIN_ELEMENTS", 1)
    monkeypatch.setattr(model._HASH_DROPOUT, "error", None)
    monkeypatch.setattr(model._HASH_DROPOUT, "compiled", fails, raising=False)
    torch.manual_seed(2)
    with caplog.at_level("WARNING"):
        assert torch.equal(dropout(x, 0.2), expected)
        dropout(x, 0.2)
    warnings = [r.getMessage() for r in caplog.records if "torch.compile" in r.getMessage()]
    assert len(warnings) == 1 and "RuntimeError: no C++ compiler found" in warnings[0]


def test_cpu_dropout_is_seeded_identity_in_eval_and_its_gradient_is_the_mask():
    x = torch.randn(7, 33, dtype=torch.bfloat16, requires_grad=True)
    torch.manual_seed(3)
    first = dropout(x, 0.25)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.25), first)
    assert dropout(x, 0.25, training=False) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    first.float().sum().backward()
    torch.manual_seed(3)
    mask = dropout(torch.ones_like(x), 0.25)
    scale = 1 / (1 - round(0.25 * 2**DROPOUT_BITS) / 2**DROPOUT_BITS)
    torch.testing.assert_close(first.float(), x.float() * (mask != 0) * scale,
                               rtol=2**-8, atol=0)  # x times the fp32 scale, rounded once
    assert torch.equal(x.grad, mask)
    assert Dropout(0.25).eval()(x) is x


def test_fp32_dropout_is_torchs_own():
    x = torch.randn(50, 40)
    torch.manual_seed(5)
    ours = dropout(x, 0.3)
    torch.manual_seed(5)
    assert torch.equal(ours, F.dropout(x, 0.3, training=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_explicit_cpu_attention_matches_sdpa(dtype):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, dtype=dtype) for _ in range(3))
    bias = torch.zeros(2, 1, 1, 5, dtype=dtype)
    bias[1, ..., 3:] = -10000.0
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                              attn_mask=bias.float())
    ours = attention(q, k, v, bias)  # bf16: the explicit path; fp32: SDPA itself
    torch.testing.assert_close(ours.float(), expected, atol=3e-2 if dtype != torch.float32
                               else 1e-6, rtol=0)
    if dtype == torch.bfloat16:  # its dropout: one seed gives one mask
        torch.manual_seed(1)
        dropped = attention(q, k, v, bias, dropout_prob=0.5)
        torch.manual_seed(1)
        probs = torch.softmax((q * 8**-0.5) @ k.transpose(-1, -2) + bias, -1)
        assert torch.equal(dropped, dropout(probs, 0.5) @ v)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_cross_entropy_matches_fp32_and_ignores_padding(dtype, compiled,
                                                                      monkeypatch):
    """fp32 arithmetic on the low-precision logits: the loss is fp32 cross-entropy's and
    each gradient element is the fp32 one rounded once."""
    import model
    monkeypatch.setattr(model, "CROSS_ENTROPY_COMPILE_MIN_ELEMENTS", 1 if compiled else 2**62)
    torch.manual_seed(0)
    classes, padded_width = 97, 104
    logits = (torch.randn(9, padded_width) * 4).to(dtype)
    logits[:, classes:] = 0.0  # the decoder's padding columns
    labels = torch.randint(0, classes, (9,))
    labels[4] = -1  # ignored
    ours_input = logits.clone().requires_grad_()
    ours = cross_entropy_ignoring_negatives(ours_input, labels, classes=classes)
    ours.backward()
    reference_input = logits.float().requires_grad_()
    reference = F.cross_entropy(reference_input[:, :classes], labels, ignore_index=-1)
    reference.backward()
    assert abs(ours.item() - reference.item()) < 1e-5
    assert ours_input.grad.dtype == dtype
    torch.testing.assert_close(ours_input.grad.float(), reference_input.grad, atol=1e-7,
                               rtol=2**-8 if dtype == torch.bfloat16 else 2**-11)
    assert torch.equal(ours_input.grad[:, classes:], torch.zeros(9, padded_width - classes,
                                                                 dtype=dtype))
    assert torch.equal(ours_input.grad[4], torch.zeros(padded_width, dtype=dtype))
    assert model._ROW_LOSSES.error is None and model._ROW_LOSSES_BACKWARD.error is None


def test_bf16_pre_training_loss_and_gradients_stay_close_to_fp32():
    """The CPU bf16 path (embeddings cast once, explicit attention, low-precision masked-LM
    loss) against fp32 on the same weights, with the decoder's padding columns present."""
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config(pad_vocab_to_multiple_of=8)).eval()
    input_ids, token_type_ids, attention_mask = random_batch(model.config, batch=4, seq=16)
    labels = torch.where(torch.rand(input_ids.shape) < 0.3, input_ids, -1)
    labels[attention_mask == 0] = -1
    nsp = torch.tensor([0, 1, 1, 0])
    losses = {}
    grads = {}
    for precision in ("fp32", "bf16"):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            total, masked_lm, _ = model(input_ids, token_type_ids, attention_mask,
                                        masked_lm_labels=labels, next_sentence_labels=nsp)
        total.backward()
        losses[precision] = masked_lm.item()
        grads[precision] = model.bert.embeddings.word_embeddings.weight.grad.clone()
    assert abs(losses["bf16"] - losses["fp32"]) < 0.02 * losses["fp32"]
    relative = (grads["bf16"] - grads["fp32"]).norm() / grads["fp32"].norm()
    assert relative < 0.05
    assert torch.equal(grads["bf16"][model.config.vocab_size:],
                       torch.zeros_like(grads["bf16"][model.config.vocab_size:]))


def test_the_tied_word_tables_add_the_lookups_rows_into_the_decoders_gradient_in_place():
    """One gradient for the table, made without a new (vocab, hidden) tensor: the sparse
    rows of the lookup go into the buffer of the decoder's dense gradient."""
    table = torch.randn(10, 4, requires_grad=True)
    lookup_table, decoder_table = tied_word_tables(table)
    decoder_gradient = []
    decoder_table.register_hook(lambda grad: decoder_gradient.append(grad.data_ptr()))
    weights = torch.randn(10, 4)
    looked_up = F.embedding(torch.tensor([1, 1, 3]), lookup_table, sparse=True)
    (looked_up.sum() + (decoder_table * weights).sum()).backward()
    expected = weights.clone()
    expected[1] += 2
    expected[3] += 1
    assert torch.equal(table.grad, expected)
    assert decoder_gradient == [table.grad.data_ptr()]
