"""Dynamic masking (run_pretraining.py --dynamic_masking): BERT's statistics, the original
tokens restored, masks that are a function of (seed, epoch, instance) only, the same for
any number of ranks, and exact resume with them."""

import numpy as np
import pytest
import torch

import run_pretraining
from masking import DynamicMasking, InstanceRandom, original_tokens
from pretraining_data import PretrainingBatches, find_input_files
from tokenization import load_vocab
from test_create_pretraining_data import (  # noqa: F401 - the module's fixtures
    assert_bert_masking,
    assert_whole_words_masked,
    corpus,
    instances,
    unmasked,
)
from test_run_pretraining import args_for, logged_losses, shards  # noqa: F401 - a fixture


def remasker(ids, seed=5, whole_word_masking=False):
    vocab = dict(sorted(ids.items(), key=lambda item: item[1]))
    return DynamicMasking(vocab, 0.15, whole_word_masking, seed)


def test_original_tokens_undo_the_stored_masks(instances):
    data, _ = instances
    restored = original_tokens(data)
    for row in range(100):
        assert (restored[row] == unmasked(data, row)).all()


def test_dynamic_masks_follow_berts_statistics(instances):
    data, ids = instances
    remasked = remasker(ids)(data, epoch=3, instance_ids=np.arange(len(data["input_ids"])))
    assert_bert_masking(remasked, ids, budget=20)
    assert (original_tokens(remasked) == original_tokens(data)).all()
    assert not (remasked["masked_lm_positions"] == data["masked_lm_positions"]).all()
    for name in ("input_mask", "segment_ids", "next_sentence_labels"):
        assert remasked[name] is data[name]


def test_a_share_the_shards_cannot_hold_is_refused(instances):
    # 20 positions a row: 15% of 128 tokens (19) fits, 30% (38) would be cut to 15.6%.
    data, ids = instances
    vocab = dict(sorted(ids.items(), key=lambda item: item[1]))
    rows = np.arange(4)
    width, seq = data["masked_lm_positions"].shape[1], data["input_ids"].shape[1]
    assert (width, seq) == (20, 128)
    DynamicMasking(vocab, 0.15, False, 1)({k: v[rows] for k, v in data.items()}, 0, rows)
    with pytest.raises(ValueError, match="--masked_lm_prob 0.3 masks up to 38 tokens of a "
                                         "128-token row, but the shards hold 20 masked "
                                         "positions a row: .* --max_predictions_per_seq 38"):
        DynamicMasking(vocab, 0.3, False, 1)({k: v[rows] for k, v in data.items()}, 0, rows)


def test_an_instance_gets_the_same_mask_in_any_batch_and_another_in_the_next_epoch(instances):
    data, ids = instances
    mask = remasker(ids)
    rows = np.array([7, 300, 12, 999])
    alone = mask({k: v[rows] for k, v in data.items()}, epoch=1, instance_ids=rows)
    everything = mask(data, epoch=1, instance_ids=np.arange(len(data["input_ids"])))
    for key in ("input_ids", "masked_lm_positions", "masked_lm_ids"):
        assert (alone[key] == everything[key][rows]).all(), key
    next_epoch = mask({k: v[rows] for k, v in data.items()}, epoch=2, instance_ids=rows)
    assert not (next_epoch["masked_lm_positions"] == alone["masked_lm_positions"]).all()
    other_seed = remasker(ids, seed=6)({k: v[rows] for k, v in data.items()}, 1, rows)
    assert not (other_seed["masked_lm_positions"] == alone["masked_lm_positions"]).all()


def test_whole_word_dynamic_masks_take_every_piece_of_a_word(instances):
    data, ids = instances
    remasked = remasker(ids, whole_word_masking=True)(data, 0, np.arange(len(data["input_ids"])))
    assert_whole_words_masked(remasked, sorted(ids, key=ids.get))


def test_instance_random_is_uniform_and_independent_of_the_batch():
    draws = InstanceRandom(1, 0, np.arange(20000)).random((20000, 8))
    assert draws.min() >= 0 and draws.max() < 1
    assert abs(draws.mean() - 0.5) < 0.005 and abs(draws.var() - 1 / 12) < 0.002
    assert abs(np.corrcoef(draws[:, 0], draws[:, 1])[0, 1]) < 0.03
    subset = InstanceRandom(1, 0, np.array([5, 17])).random((2, 8))
    assert (subset == draws[[5, 17]]).all()
    integers = InstanceRandom(2, 0, np.arange(10000)).integers(0, 7, (10000, 3))
    assert set(np.unique(integers)) == set(range(7))


# ----------------------------------------------------------------------------- in the reader

def dynamic_batches(data_dir, vocab, micro_batch, rank, world_size):
    _, files = find_input_files(data_dir)
    masking = DynamicMasking(load_vocab(vocab), 0.15, False, seed=3)
    return PretrainingBatches(files, micro_batch, rank, world_size, seed=3, masking=masking)


def first_batches(batches, count):
    stream = iter(batches)
    try:
        return [next(stream) for _ in range(count)]
    finally:
        batches.close()


def test_dynamic_masks_are_the_same_for_any_number_of_ranks(shards):
    data_dir, config = shards
    vocab = config.parent / "vocab.txt"
    one = first_batches(dynamic_batches(data_dir, vocab, 8, 0, 1), 6)
    ranks = [first_batches(dynamic_batches(data_dir, vocab, 4, rank, 2), 6) for rank in (0, 1)]
    _, files = find_input_files(data_dir)
    stored = first_batches(PretrainingBatches(files, 8, 0, 1, seed=3), 6)
    for whole, halves, static in zip(one, zip(*ranks), stored):
        for key, tensor in whole.items():
            assert torch.equal(tensor, torch.cat([half[key] for half in halves])), key
        assert torch.equal(whole["attention_mask"], static["attention_mask"])
        assert not torch.equal(whole["masked_lm_labels"], static["masked_lm_labels"])


def test_pretraining_with_dynamic_masks_resumes_exactly(shards, tmp_path):
    data_dir, config = shards
    dynamic = ["--dynamic_masking", "--vocab_file", config.parent / "vocab.txt"]
    run_pretraining.main(args_for(data_dir, config, tmp_path / "whole", *dynamic))
    run_pretraining.main(args_for(data_dir, config, tmp_path / "split", *dynamic,
                                  "--steps_this_run", 4))
    run_pretraining.main(args_for(data_dir, config, tmp_path / "split", *dynamic,
                                  "--resume_from_checkpoint"))
    run_pretraining.main(args_for(data_dir, config, tmp_path / "static"))
    whole, split = logged_losses(tmp_path / "whole"), logged_losses(tmp_path / "split")
    assert split == whole and len(whole) == 8
    assert whole != logged_losses(tmp_path / "static")


def test_dynamic_masking_needs_the_vocabulary(shards, tmp_path):
    with pytest.raises(ValueError, match="--dynamic_masking needs --vocab_file"):
        run_pretraining.main(args_for(*shards, tmp_path, "--dynamic_masking"))


@pytest.mark.parametrize("flags", [["--whole_word_masking"], ["--masked_lm_prob", "0.2"]])
def test_masking_flags_without_dynamic_masking_are_an_error(shards, tmp_path, flags):
    # The shards' stored masks would be used and the flag silently ignored.
    with pytest.raises(ValueError, match=f"{flags[0]} only apply with --dynamic_masking"):
        run_pretraining.main(args_for(*shards, tmp_path, *flags))


def test_a_repeated_vocabulary_line_leaves_whole_word_masking_working(instances):
    # Ids are line numbers: a token on a second line takes that line's id, past the number
    # of distinct tokens, and leaves its first line's id unused.
    data, ids = instances
    vocab = dict(sorted(ids.items(), key=lambda item: item[1]))
    first_word = int(data["input_ids"][0, 1])  # after [CLS]
    repeated = next(token for token, i in vocab.items() if i == first_word)
    vocab[repeated] = max(ids.values()) + 1
    data = {**data, "input_ids": np.where(data["input_ids"] == first_word, vocab[repeated],
                                          data["input_ids"]),
            "masked_lm_ids": np.where(data["masked_lm_ids"] == first_word, vocab[repeated],
                                      data["masked_lm_ids"])}
    remasked = DynamicMasking(vocab, 0.15, True, 5)(data, 0, np.arange(len(data["input_ids"])))
    assert (original_tokens(remasked) == original_tokens(data)).all()
    tokens_by_id = ["[unused]"] * (max(vocab.values()) + 1)
    for token, i in vocab.items():
        tokens_by_id[i] = token
    assert_whole_words_masked(remasked, tokens_by_id)
