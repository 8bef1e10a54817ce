"""create_pretraining_data.py: schema, BERT's masking statistics, determinism, errors."""

import hashlib

import h5py
import numpy as np
import pytest

import create_pretraining_data as cpd
from conftest import sample_documents, write_vocab
from pretraining_data import find_input_files

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    text = sample_documents(8, lines_per_document=150)
    (folder / "corpus.txt").write_text(text, encoding="utf-8")
    return folder / "corpus.txt", write_vocab(folder / "vocab.txt", text)


def run(input_file, vocab, output, *extra):
    args = cpd.parse_args(["--input_file", str(input_file), "--output_file", str(output),
                           "--vocab_file", str(vocab), "--num_workers", "1",
                           "--disable_progress_bar", *map(str, extra)])
    return cpd.main(args)


def read(path):
    with h5py.File(path, "r") as f:
        return {name: f[name][:] for name in f}


def vocab_ids(vocab):
    return {token: i for i, token in enumerate(vocab.read_text().split("\n")[:-1])}


@pytest.fixture(scope="module")
def instances(corpus, tmp_path_factory):
    input_file, vocab = corpus
    output = tmp_path_factory.mktemp("out") / "train.hdf5"
    run(input_file, vocab, output, "--dupe_factor", 10, "--max_seq_length", 128,
        "--max_predictions_per_seq", 20)
    return read(output), vocab_ids(vocab)


def test_schema_matches_nvidia(instances):
    data, _ = instances
    expected = {"input_ids": ("int32", 128), "input_mask": ("int8", 128),
                "segment_ids": ("int8", 128), "masked_lm_positions": ("int32", 20),
                "masked_lm_ids": ("int32", 20), "next_sentence_labels": ("int8", None)}
    assert set(data) == set(expected)
    count = len(data["next_sentence_labels"])
    assert count > 2000
    for name, (dtype, width) in expected.items():
        assert data[name].dtype == np.dtype(dtype), name
        assert data[name].shape == ((count,) if width is None else (count, width)), name


def test_files_are_gzip_compressed(corpus, tmp_path):
    run(*corpus, tmp_path / "c.hdf5", "--dupe_factor", 1)
    with h5py.File(tmp_path / "c.hdf5", "r") as f:
        assert all(f[name].compression == "gzip" for name in f)


def test_an_output_name_without_a_suffix_gets_the_one_the_trainer_reads(corpus, tmp_path):
    run(*corpus, tmp_path / "wiki", "--dupe_factor", 1)
    assert [p.name for p in tmp_path.iterdir()] == ["wiki.hdf5"]
    assert find_input_files(tmp_path) == ("hdf5", [tmp_path / "wiki.hdf5"])


def unmasked(data, row):
    """The row's tokens before masking (a random replacement may even be [SEP])."""
    tokens = data["input_ids"][row].copy()
    valid = data["masked_lm_positions"][row] > 0
    tokens[data["masked_lm_positions"][row][valid]] = data["masked_lm_ids"][row][valid]
    return tokens


def test_pairs_are_cls_a_sep_b_sep(instances):
    data, ids = instances
    lengths = data["input_mask"].sum(axis=1)
    for row in range(200):
        n = lengths[row]
        assert data["input_mask"][row, :n].all() and not data["input_mask"][row, n:].any()
        tokens, segments = unmasked(data, row), data["segment_ids"][row]
        assert tokens[0] == ids["[CLS]"] and tokens[n - 1] == ids["[SEP]"]
        assert (tokens[n:] == 0).all()
        seps = np.flatnonzero(tokens[:n] == ids["[SEP]"])
        assert len(seps) == 2 and seps[0] >= 2 and seps[1] - seps[0] >= 2
        assert (segments[:seps[0] + 1] == 0).all() and (segments[seps[0] + 1:n] == 1).all()
        assert not segments[n:].any()


def test_masking_statistics(instances):
    assert_bert_masking(*instances, budget=20)


def assert_bert_masking(data, ids, budget):
    """round(15%) of each row's tokens (1 to budget), sorted, never [CLS]/[SEP]; 80% of them
    shown as [MASK], 10% kept, 10% random."""
    lengths = data["input_mask"].sum(axis=1)
    positions, originals = data["masked_lm_positions"], data["masked_lm_ids"]
    valid = positions > 0
    expected_count = np.minimum(budget, np.maximum(1, np.rint(lengths * 0.15)))
    assert (valid.sum(axis=1) == expected_count).all()
    assert abs(valid.sum() / lengths.sum() - 0.15) < 0.01

    for row in range(len(positions)):
        row_positions = positions[row][valid[row]]
        assert (np.diff(row_positions) > 0).all()  # sorted, distinct
        assert row_positions.max() < lengths[row]
        assert (positions[row][~valid[row]] == 0).all() and (originals[row][~valid[row]] == 0).all()
    assert not np.isin(originals[valid], [ids["[CLS]"], ids["[SEP]"]]).any()

    rows = np.nonzero(valid)[0]
    shown = data["input_ids"][rows, positions[valid]]
    mask_share = (shown == ids["[MASK]"]).mean()
    kept_share = ((shown == originals[valid]) & (shown != ids["[MASK]"])).mean()
    # About 4 standard deviations at the fixture's tens of thousands of masked positions.
    assert abs(mask_share - 0.8) < 0.006
    assert abs(kept_share - 0.1) < 0.006  # random replacements that hit the original add ~0
    assert abs(1 - mask_share - kept_share - 0.1) < 0.006
    # The random tenth is drawn uniformly over the vocabulary.
    replaced = shown[(shown != ids["[MASK]"]) & (shown != originals[valid])]
    vocab_size, count = len(ids), len(replaced)
    expected_distinct = vocab_size * (1 - (1 - 1 / vocab_size) ** count)
    assert len(np.unique(replaced)) > 0.9 * expected_distinct
    mean = count / vocab_size
    assert np.bincount(replaced).max() < mean + 6 * mean ** 0.5 + 3


def test_next_sentence_labels_are_balanced(instances):
    # Slightly above one half by design: a chunk of one sentence that already fills the
    # target length can only be paired with a random next segment.
    data, _ = instances
    assert abs(data["next_sentence_labels"].mean() - 0.5) < 0.05


@pytest.mark.parametrize("max_predictions", [20, 5])  # 5: the budget binds in every row
def test_whole_word_masking_masks_every_piece_of_a_word(corpus, tmp_path, max_predictions):
    input_file, vocab = corpus
    output = tmp_path / "wwm.hdf5"
    run(input_file, vocab, output, "--whole_word_masking", "--dupe_factor", 2,
        "--max_predictions_per_seq", max_predictions)
    assert_whole_words_masked(read(output), vocab.read_text().split("\n")[:-1])


def assert_whole_words_masked(data, tokens):
    """Every masked word piece has its word's neighbouring pieces masked too (checked more
    than 100 times)."""
    is_piece = np.array([t.startswith("##") for t in tokens])
    special = [tokens.index("[CLS]"), tokens.index("[SEP]")]
    checked = 0
    for row in range(len(data["input_ids"])):
        masked = set(data["masked_lm_positions"][row][data["masked_lm_positions"][row] > 0])
        original = unmasked(data, row)
        for position in masked:
            # A piece starts its word only when truncation cut the word's head off.
            if is_piece[original[position]] and original[position - 1] not in special:
                checked += 1
                assert position - 1 in masked, (row, position)
            if position + 1 < len(original) and is_piece[original[position + 1]]:
                checked += 1
                assert position + 1 in masked, (row, position)
    assert checked > 100


def test_output_is_identical_whatever_the_number_of_workers(corpus, tmp_path):
    input_file, vocab = corpus
    outputs = {}
    for workers in (1, 2):
        folder = tmp_path / f"workers{workers}"
        args = cpd.parse_args(["--input_file", str(input_file), "--output_file",
                               str(folder / "part.hdf5"), "--vocab_file", str(vocab),
                               "--num_workers", str(workers), "--shard_size_mb", "0.02",
                               "--dupe_factor", "2", "--disable_progress_bar"])
        cpd.main(args)
        outputs[workers] = {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
    assert len(outputs[1]) >= 3
    assert outputs[1] == outputs[2]


def test_golden_output_for_a_fixed_seed(tmp_path):
    text = sample_documents(3, lines_per_document=12)
    (tmp_path / "three.txt").write_text(text, encoding="utf-8")
    vocab = write_vocab(tmp_path / "vocab.txt", text)
    run(tmp_path / "three.txt", vocab, tmp_path / "golden.hdf5", "--max_seq_length", 32,
        "--max_predictions_per_seq", 5, "--dupe_factor", 2, "--random_seed", 7)
    digest = hashlib.sha256()
    for name, array in sorted(read(tmp_path / "golden.hdf5").items()):
        digest.update(name.encode() + array.tobytes())
    # Recorded with numpy 2.4 (PCG64 streams); a change here means the algorithm changed.
    assert digest.hexdigest() == GOLDEN_SHA256


GOLDEN_SHA256 = "d196be1b4360c347fca9122de56eae966530af90edd85abafde351a358e66e5c"


# ----------------------------------------------------------------------------- errors

def test_missing_input_is_named(corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match="--input_file .*nowhere.txt: no such file"):
        run(tmp_path / "nowhere.txt", corpus[1], tmp_path / "x.hdf5")


def test_empty_corpus_is_an_error(corpus, tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n   \n\n")
    with pytest.raises(ValueError, match="the input holds no text"):
        run(tmp_path / "empty.txt", corpus[1], tmp_path / "x.hdf5")
    assert not (tmp_path / "x.hdf5").exists()


def test_vocabulary_without_mask_token_is_an_error(corpus, tmp_path):
    vocab = write_vocab(tmp_path / "vocab.txt", "a b c", specials=["[PAD]", "[UNK]", "[CLS]",
                                                                   "[SEP]"])
    with pytest.raises(ValueError, match="vocab.txt lacks the special tokens \\['\\[MASK\\]'\\]"):
        run(corpus[0], vocab, tmp_path / "x.hdf5")


def test_too_small_max_seq_length_is_an_error(corpus, tmp_path):
    with pytest.raises(ValueError, match="--max_seq_length 4 is too small"):
        run(*corpus, tmp_path / "x.hdf5", "--max_seq_length", 4)


def test_interrupted_run_leaves_no_file_under_the_final_name(corpus, tmp_path, monkeypatch):
    def fail_midway(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cpd, "mask_pairs", fail_midway)
    with pytest.raises(KeyboardInterrupt):
        run(*corpus, tmp_path / "out.hdf5")
    assert list(tmp_path.iterdir()) == []
