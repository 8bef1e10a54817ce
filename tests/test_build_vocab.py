"""Specification of data/build_vocab.py: the merges on a hand-worked corpus, words counted as
BasicTokenizer splits them, a learnt vocabulary that covers its corpus, the file it writes,
and the error messages."""

import collections

import pytest

from data import build_vocab
from test_tokenization import HARD_STRINGS
from tokenization import BasicTokenizer, FullTokenizer, load_vocab

# hug x3 and hugs make (##u, ##g) the most frequent pair (6), then (h, ##ug) (4); then
# (##u, ##n) and (p, ##ug) tie at 2 and "##u" < "p" goes first; every other pair occurs once.
HAND_CORPUS = "hug hug hug pug pug\npun bun hugs\n"
HAND_ALPHABET = ["##g", "##n", "##s", "##u", "b", "h", "p"]
HAND_PIECES = ["##ug", "hug", "##un", "pug"]


def write_corpus(tmp_path, text, name="corpus.txt"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_merges_on_a_hand_worked_corpus(tmp_path):
    corpus = write_corpus(tmp_path, HAND_CORPUS)
    vocab = build_vocab.build_vocab([corpus], vocab_size=100, disable_progress_bar=True)
    assert vocab == [*build_vocab.SPECIAL_TOKENS, *HAND_ALPHABET, *HAND_PIECES]
    room_for_two = len(build_vocab.SPECIAL_TOKENS) + len(HAND_ALPHABET) + 2
    assert build_vocab.build_vocab([corpus], room_for_two, disable_progress_bar=True)[-2:] == [
        "##ug", "hug"]


def test_min_frequency_stops_the_merges(tmp_path):
    corpus = write_corpus(tmp_path, HAND_CORPUS)
    vocab = build_vocab.build_vocab([corpus], 100, min_frequency=3, disable_progress_bar=True)
    assert vocab[-2:] == ["##ug", "hug"]  # the next pairs occur twice


def test_words_are_counted_as_basic_tokenizer_splits_whole_lines(tmp_path):
    lines = [text.replace("\n", " ") for text in HARD_STRINGS] + [
        "Don't stop-believing,  it's \u00a0 North\u2003America\x1fthe end", "tab\tseparated"]
    corpus = write_corpus(tmp_path, "\n".join(lines) + "\n")
    for lower in (True, False):
        expected = collections.Counter()
        for line in lines:
            expected.update(BasicTokenizer(do_lower_case=lower, never_split=()).tokenize(line))
        kept = {word: count for word, count in expected.items()
                if len(word) <= build_vocab.MAX_WORD_CHARACTERS}  # WordPiece's [UNK] anyway
        assert len(kept) < len(expected)
        assert build_vocab.count_words([corpus], lower, disable_progress_bar=True) == kept


def test_learnt_vocabulary_covers_its_corpus(tmp_path):
    text = ("The quick brown fox jumps over the lazy dog.\nA café, naïve and “curly”!\n\n"
            "Numbers 1,234 and 56.78 appear; so do unhappiness and rehappening.\n")
    corpus = write_corpus(tmp_path, text)
    output = tmp_path / "vocab.txt"
    vocab = build_vocab.main(build_vocab.parse_args(
        ["--input_file", str(corpus), "--output_file", str(output), "--vocab_size", "120",
         "--disable_progress_bar"]))
    assert load_vocab(output) == {token: index for index, token in enumerate(vocab)}
    assert len(vocab) == len(set(vocab)) <= 120
    assert vocab[:2] == ["[PAD]", "[UNK]"]
    tokenizer = FullTokenizer(output, do_lower_case=True)
    tokens = [token for line in text.splitlines() for token in tokenizer.tokenize(line)]
    assert "[UNK]" not in tokens
    assert "cafe" in "".join(tokens).replace("##", "")  # lower-cased, accents stripped


def test_too_small_a_vocabulary_is_refused_with_the_reason(tmp_path):
    corpus = write_corpus(tmp_path, HAND_CORPUS)
    with pytest.raises(ValueError, match=r"7 distinct characters .* raise --vocab_size"):
        build_vocab.build_vocab([corpus], 10, disable_progress_bar=True)
    with pytest.raises(ValueError, match=r"--vocab_size 5 leaves no room"):
        build_vocab.build_vocab([corpus], 5, disable_progress_bar=True)
    empty = write_corpus(tmp_path, "\n\n", name="empty.txt")
    with pytest.raises(ValueError, match=r"empty.txt: no words"):
        build_vocab.build_vocab([empty], 100, disable_progress_bar=True)


def test_a_failed_run_leaves_an_existing_vocabulary_alone(tmp_path):
    output = tmp_path / "vocab.txt"
    output.write_text("[UNK]\nkept\n")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(ValueError, match="binary.txt is not text"):
        build_vocab.main(build_vocab.parse_args(
            ["--input_file", str(binary), "--output_file", str(output)]))
    assert output.read_text() == "[UNK]\nkept\n"
