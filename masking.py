"""Masked-LM masking, shared by create_pretraining_data.py (static: masks drawn once, stored
in the shards) and run_pretraining.py --dynamic_masking (drawn again each time an instance
is served, as RoBERTa does).

BERT's rule: per instance, round(length x masked_lm_prob) positions (at least 1, at most
max_predictions_per_seq) chosen uniformly among the non-special tokens, whole words together
with --whole_word_masking (then the word that would pass the count is left out, and no later,
shorter word takes its place as in Google's code: 0.4% fewer masked tokens on the quick
start's shards); of those 80% become [MASK], 10% a random token, 10% stay.

Dynamic masks are a function of (seed, epoch, instance) only: `InstanceRandom` draws each
instance's numbers from a counter-based hash of those, so the same instance gets the same
mask in the same epoch whatever it is batched with, on any number of ranks, and after a
resume.
"""

from dataclasses import dataclass

import numpy as np

SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[MASK]")


@dataclass(frozen=True)
class MaskingOptions:
    """What the masking functions read of their `options` (create_pretraining_data's
    Options has the same fields)."""
    max_predictions_per_seq: int
    masked_lm_prob: float = 0.15
    whole_word_masking: bool = False


def subword_flags(vocab):
    """is_subword[id]: whether the token of that id continues a word (##...), indexed by id
    (the vocabulary file's line), which a file with a repeated line leaves unused."""
    flags = np.zeros(max(vocab.values()) + 1, dtype=bool)
    flags[[i for token, i in vocab.items() if token.startswith("##")]] = True
    return flags


def choose_masked_positions(input_ids, input_mask, options, special_ids, is_subword, np_rng):
    """Per row, min(max_predictions, max(1, round(length * masked_lm_prob))) positions chosen
    uniformly among non-special tokens (whole words together if asked); sorted, with a
    validity mask. Returns (positions [N, P], valid [N, P])."""
    n, seq = input_ids.shape
    budget = options.max_predictions_per_seq
    lengths = input_mask.sum(axis=1)
    num_to_predict = np.minimum(budget, np.maximum(1, np.rint(lengths * options.masked_lm_prob)))
    candidate = input_mask.astype(bool) & ~np.isin(input_ids, special_ids)
    keys = np_rng.random((n, seq))
    if options.whole_word_masking:
        # A continuation piece takes its word's key, so a word sorts as one block.
        starts = candidate & ~(is_subword[input_ids] & np.roll(candidate, 1, axis=1))
        word_start = np.maximum.accumulate(np.where(starts, np.arange(seq), 0), axis=1)
        keys = np.take_along_axis(keys, word_start, axis=1)
    keys[~candidate] = np.inf
    # One position beyond the budget, never taken, shows whether the last word is cut.
    if options.whole_word_masking:  # the pieces of a word share a key: keep them in order
        position = np.broadcast_to(np.arange(seq), keys.shape)
        order = np.lexsort((position, keys), axis=1)[:, :budget + 1]
    else:
        order = np.argsort(keys, axis=1)[:, :budget + 1]
    taken = np.arange(order.shape[1])[None, :] < num_to_predict[:, None]
    taken &= np.isfinite(np.take_along_axis(keys, order, axis=1))
    if options.whole_word_masking:
        taken &= whole_words_only(order, word_start, taken)
    positions = np.sort(np.where(taken, order, seq), axis=1)[:, :budget]
    valid = positions < seq
    padded = np.zeros((n, budget), dtype=np.int64)
    padded[:, :positions.shape[1]] = np.where(valid, positions, 0)
    valid_padded = np.zeros((n, budget), dtype=bool)
    valid_padded[:, :valid.shape[1]] = valid
    return padded, valid_padded


def whole_words_only(order, word_start, taken):
    """Drops a word cut by the budget: a taken piece whose word continues past the last
    taken piece of its row."""
    words = np.take_along_axis(word_start, order, axis=1)
    count = taken.sum(axis=1, keepdims=True)
    last_word = np.take_along_axis(words, np.maximum(count - 1, 0), axis=1)
    next_word = np.take_along_axis(words, np.minimum(count, order.shape[1] - 1), axis=1)
    word_is_cut = (count < order.shape[1]) & (next_word == last_word)
    return ~(word_is_cut & (words == last_word))


def apply_masks(input_ids, positions, valid, options, mask_id, vocab_size, np_rng):
    """80% [MASK], 10% a random token, 10% unchanged; returns masked_lm_ids (originals)."""
    rows = np.arange(input_ids.shape[0])[:, None]
    masked_lm_ids = np.where(valid, input_ids[rows, positions], 0).astype(np.int32)
    draw = np_rng.random(positions.shape)
    random_tokens = np_rng.integers(0, vocab_size, positions.shape)
    replacement = np.where(draw < 0.8, mask_id,
                           np.where(draw < 0.9, masked_lm_ids, random_tokens))
    input_ids[rows, positions] = np.where(valid, replacement, input_ids[rows, positions])
    return masked_lm_ids


# ----------------------------------------------------------------------------- dynamic masking

class InstanceRandom:
    """The two Generator methods the masking functions call (random, integers), drawn row by
    row from a hash of (seed, epoch, instance id, draw, column): row i of every draw
    depends on instance_ids[i] alone, not on which rows share the batch.

    The hash is SplitMix64's finaliser over a combined 64-bit counter; its outputs pass
    standard statistical batteries, and masking needs only uniform, independent-looking keys.
    """

    def __init__(self, seed, epoch, instance_ids):
        base = _mix(_mix(np.uint64(seed)) ^ np.uint64(epoch))
        self.rows = _mix(base ^ np.asarray(instance_ids, dtype=np.uint64))[:, None]
        self.draws = 0

    def _bits(self, shape):
        self.draws += 1
        columns = np.arange(shape[1], dtype=np.uint64)[None, :]
        return _mix(self.rows ^ _mix(np.uint64(self.draws) << np.uint64(32) | columns))

    def random(self, shape):
        return (self._bits(shape) >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def integers(self, low, high, shape):
        return low + (self.random(shape) * (high - low)).astype(np.int64)


def _mix(x):
    """SplitMix64's output function on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


class DynamicMasking:
    """Re-masks instances of NVIDIA-schema shards: the original tokens are input_ids with
    masked_lm_ids put back at masked_lm_positions; new positions and replacements are drawn
    with InstanceRandom(seed, epoch, instance ids). The prediction budget is the shards'
    masked_lm_positions width, so the arrays keep their shapes."""

    def __init__(self, vocab, masked_lm_prob, whole_word_masking, seed):
        absent = [token for token in SPECIAL_TOKENS if token not in vocab]
        if absent:
            raise ValueError(f"--dynamic_masking: the vocabulary lacks {absent}")
        self.masked_lm_prob, self.whole_word_masking = masked_lm_prob, whole_word_masking
        self.seed = seed
        self.mask_id = vocab["[MASK]"]
        self.special_ids = [vocab["[CLS]"], vocab["[SEP]"]]
        self.is_subword = subword_flags(vocab)
        self.vocab_size = len(self.is_subword)

    def __call__(self, arrays, epoch, instance_ids):
        """arrays: the six HDF5 datasets of some rows (left unchanged); returns new
        input_ids, masked_lm_positions and masked_lm_ids for them, the rest as given."""
        input_ids = original_tokens(arrays)
        options = MaskingOptions(arrays["masked_lm_positions"].shape[1], self.masked_lm_prob,
                                 self.whole_word_masking)
        self._check_budget(options.max_predictions_per_seq, input_ids.shape[1])
        rng = InstanceRandom(self.seed, epoch, instance_ids)
        positions, valid = choose_masked_positions(input_ids, arrays["input_mask"], options,
                                                   self.special_ids, self.is_subword, rng)
        masked_lm_ids = apply_masks(input_ids, positions, valid, options, self.mask_id,
                                    self.vocab_size, rng)
        dtype = arrays["masked_lm_positions"].dtype
        return {**arrays, "input_ids": input_ids.astype(arrays["input_ids"].dtype),
                "masked_lm_positions": positions.astype(dtype),
                "masked_lm_ids": masked_lm_ids.astype(arrays["masked_lm_ids"].dtype)}


    def _check_budget(self, width, seq_length):
        """A full row's share of masked tokens must fit the shards' masked_lm_positions:
        beyond them the share would be cut silently (30% asked, 15.6% masked)."""
        wanted = max(1, int(np.rint(seq_length * self.masked_lm_prob)))
        if wanted > width:
            raise ValueError(f"--masked_lm_prob {self.masked_lm_prob} masks up to {wanted} "
                             f"tokens of a {seq_length}-token row, but the shards hold "
                             f"{width} masked positions a row: make them with "
                             f"create_pretraining_data.py --max_predictions_per_seq {wanted} "
                             f"or more, or lower --masked_lm_prob")


def original_tokens(arrays):
    """input_ids with the stored masks undone (positions 0 are padding: [CLS] sits there)."""
    input_ids = np.array(arrays["input_ids"], dtype=np.int64)
    positions, ids = arrays["masked_lm_positions"], arrays["masked_lm_ids"]
    rows, columns = np.nonzero(positions > 0)
    input_ids[rows, positions[rows, columns]] = ids[rows, columns]
    return input_ids
