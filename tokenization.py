"""BERT WordPiece tokenization: raw text -> word pieces -> vocabulary ids.

Two paths produce identical tokens:

* the pure-Python path (`BasicTokenizer` then `WordpieceTokenizer`), written
  step by step as in the original BERT; it is the reference and the fallback;
* a fast path through Hugging Face `tokenizers` (Rust) configured to do the
  same steps, used when that package is importable.

Usage:
    tokenizer = FullTokenizer("vocab.txt", do_lower_case=True)
    tokens = tokenizer.tokenize("Hello, world!")        # ['hello', ',', 'world', '!']
    ids = tokenizer.convert_tokens_to_ids(tokens)
    ids_per_line = tokenizer.tokenize_to_ids(lines)     # batch form, for data creation

Deviations from the original (NVIDIA's tokenization.py, after Google's):
* The top-level class is Google's `FullTokenizer`, not NVIDIA's
  `BertTokenizer`; there is no `from_pretrained` and nothing is downloaded.
* `use_fast` selects an optional `tokenizers` back end and `tokenize_to_ids`
  encodes many texts at once. Texts on which the two back ends could disagree
  are routed to the pure path (`_FastPathGuard`), so the output never depends
  on which one ran.
* `load_vocab` strips only trailing whitespace (the original strips both ends;
  no BERT vocab token has leading whitespace) and fails with a message naming
  the file when it is missing or empty. A vocab without "[UNK]" is refused.
* `convert_tokens_to_ids` has no `max_len` warning (callers truncate); an
  unknown token or id raises a KeyError naming it and the vocab file.
* No NFC normalization: transformers' BertTokenizerLegacy added one, Google,
  NVIDIA and `tokenizers` have none, so decomposed accents in cased text stay
  decomposed here.
* `lower_case_for_model` maps a model name such as "bert-large-uncased" to the
  lower-casing it implies, and FullTokenizer warns when `do_lower_case`
  contradicts the vocab (an uncased one has no upper-case pieces), which the
  original leaves silent although capitalised words then become [UNK].
* A binary vocab file (NUL bytes, mostly undecodable) or one that is not UTF-8
  is a ValueError naming it, not a bare UnicodeDecodeError.
* The vocabulary may also be a Hugging Face `tokenizer.json` with a WordPiece
  model, as transformers 5's `save_pretrained` writes without a vocab.txt.
"""

import collections
import io
import json
import logging
import os
import re
import unicodedata

SPECIAL_TOKENS = ("[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]")
UNK_TOKEN = "[UNK]"
# What to do about a casing mismatch, (to lower-case, not to), in every entry script's words.
CASING_REMEDIES = ("pass --do_lower_case (or an uncased --bert_model, which sets its default)",
                   "pass --no-do_lower_case (or a cased --bert_model, which sets its default)")
# Below this share of word pieces with an upper-case letter, a vocab is taken for uncased:
# cased BERT vocabs hold thousands of capitalised words, uncased ones none; the margin
# keeps a stray capital in a mostly uncased vocab from flipping the verdict.
MIN_CASED_SHARE = 0.01

logger = logging.getLogger("bert")  # utils.logger, without importing torch here


def load_vocab(vocab_file):
    """Read a WordPiece vocab: one token per line, the line index is its id.

    Returns an OrderedDict token -> id. Raises FileNotFoundError or ValueError
    naming the file when it is missing, binary, not UTF-8 or holds no tokens.
    """
    vocab_file = os.fspath(vocab_file)
    if not os.path.isfile(vocab_file):
        raise FileNotFoundError(
            f"vocab file {vocab_file!r} does not exist: pass the path of a BERT "
            "vocab.txt (one WordPiece token per line)")
    with open(vocab_file, "rb") as reader:
        data = reader.read()
    reason = binary_content(data)
    if reason:
        raise ValueError(f"vocab file {vocab_file!r} is not a text file ({reason}): pass "
                         "the path of a BERT vocab.txt (one WordPiece token per line)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"vocab file {vocab_file!r} is not UTF-8 (byte {error.start}): a "
                         "token with a replaced byte would never match; re-encode it "
                         "as UTF-8") from None
    if is_tokenizer_json(vocab_file):
        return _tokenizer_json_vocab(vocab_file, text)
    vocab = collections.OrderedDict()
    for index, line in enumerate(io.StringIO(text, newline=None)):  # \r\n or \n lines
        vocab[line.rstrip()] = index
    if not vocab:
        raise ValueError(f"vocab file {vocab_file!r} is empty: "
                         "expected one WordPiece token per line")
    return vocab


def is_tokenizer_json(vocab_file):
    return os.fspath(vocab_file).endswith(".json")


def _tokenizer_json_vocab(vocab_file, text):
    """token -> id of a tokenizer.json's WordPiece model, in id order; its ids must run
    0..N-1 as a vocab.txt's line numbers do."""
    try:
        wordpiece = json.loads(text).get("model") or {}
    except (json.JSONDecodeError, AttributeError):
        wordpiece = None
    if not isinstance(wordpiece, dict) or wordpiece.get("type") != "WordPiece" or not \
            isinstance(wordpiece.get("vocab"), dict) or not wordpiece["vocab"]:
        raise ValueError(f"vocab file {vocab_file!r} is not a tokenizer.json with a WordPiece "
                         "model (model.type WordPiece, model.vocab): pass a BERT vocab.txt")
    if wordpiece.get("continuing_subword_prefix", "##") != "##":
        raise ValueError(f"vocab file {vocab_file!r}: its WordPiece model marks continued "
                         f"words with {wordpiece['continuing_subword_prefix']!r}, BERT's "
                         "tokenizer with '##'")
    by_id = sorted(wordpiece["vocab"].items(), key=lambda item: item[1])
    if [index for _, index in by_id] != list(range(len(by_id))):
        raise ValueError(f"vocab file {vocab_file!r}: model.vocab's ids must be 0 to "
                         f"{len(by_id) - 1}, each once, as the model's embedding rows are")
    return collections.OrderedDict(by_id)


def vocab_txt_bytes(vocab_file):
    """The bytes of a vocab.txt for the vocabulary in `vocab_file`: a vocab.txt's own, byte
    for byte; a tokenizer.json's tokens one per line in id order (refused where a token
    could not stand on a line of its own: the ids after it would shift)."""
    vocab_file = os.fspath(vocab_file)
    vocab = load_vocab(vocab_file)  # checks the file in either form
    if not is_tokenizer_json(vocab_file):
        with open(vocab_file, "rb") as reader:
            return reader.read()
    for token in vocab:
        if token != token.rstrip() or len(token.splitlines()) != 1:
            raise ValueError(f"vocab file {vocab_file!r}: token {token!r} cannot be a line of "
                             "a vocab.txt (it ends in or holds a line break or space)")
    return "".join(f"{token}\n" for token in vocab).encode("utf-8")


# Above this share of characters that are not UTF-8, input is taken for binary, not text.
MAX_UNDECODABLE_SHARE = 0.1


def binary_content(data, offset=0):
    """Why the bytes `data` are not text, or None: a NUL byte, or more than
    MAX_UNDECODABLE_SHARE of undecodable characters. A few bad bytes (text
    with a stray Latin-1 character) are not a reason. `offset` is the position
    of `data` in its file, added to the byte named in the reason."""
    nul = data.find(b"\x00")
    if nul >= 0:
        return f"a NUL byte at byte {offset + nul}"
    try:
        data.decode("utf-8")
        return None
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
    # Each undecodable sequence became one U+FFFD; those encoded in the file were text.
    undecodable = text.count("\ufffd") - data.count("\ufffd".encode("utf-8"))
    if undecodable > MAX_UNDECODABLE_SHARE * len(text):
        where = f" from byte {offset} on" if offset else ""
        return f"{undecodable / len(text):.0%} of its characters{where} are not UTF-8"
    return None


def lower_case_for_model(bert_model):
    """Lower-casing implied by a model name: True for "...uncased...", False for
    "...cased..." (e.g. bert-base-multilingual-cased), None when it says neither."""
    name = bert_model.lower()
    if "uncased" in name:
        return True
    if "cased" in name:
        return False
    return None


def casing_mismatch(vocab, do_lower_case, vocab_file, remedies=CASING_REMEDIES):
    """A message for people when `do_lower_case` contradicts the vocab's casing,
    else None. Uncased vocabs have no upper-case pieces, so unlowered capitals
    become [UNK]; cased ones never saw lower-cased, accent-stripped text.
    `remedies`: what to do, in the caller's flags: (lower-case, do not)."""
    pieces = [token for token in vocab if not (token.startswith("[") and token.endswith("]"))]
    with_case = sum(token.lower() != token.upper() for token in pieces)
    upper = sum(token.lower() != token for token in pieces)
    if not with_case:
        return None  # no letters with case (digits, CJK): nothing to match
    cased = upper >= MIN_CASED_SHARE * with_case
    if cased and do_lower_case:
        return (f"vocab file {vocab_file!r} is cased ({upper:,} of its {with_case:,} word "
                f"pieces with letters have upper-case ones) but the text is lower-cased, "
                f"which the model never saw: {remedies[1]}")
    if not cased and not do_lower_case:
        return (f"vocab file {vocab_file!r} is uncased ({upper:,} of its {with_case:,} word "
                f"pieces with letters have upper-case ones) but the text is not lower-cased, "
                f"so capitalised words become {UNK_TOKEN}: {remedies[0]}")
    return None


def warn_on_casing_mismatch(vocab, do_lower_case, vocab_file, remedies=CASING_REMEDIES):
    """Logs casing_mismatch's message as a warning; returns it (None when none)."""
    message = casing_mismatch(vocab, do_lower_case, vocab_file, remedies)
    if message:
        logger.warning(message)
    return message


# ----------------------------------------------------------------------------
# Character classes, as BERT defines them
# ----------------------------------------------------------------------------

def _is_whitespace(char):
    """Space, tab, newline, carriage return or a Unicode space separator (Zs)."""
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def _is_control(char):
    """Any "C*" category (control, format, unassigned, private use) except tab,
    newline and carriage return, which BERT counts as whitespace."""
    return char not in "\t\n\r" and unicodedata.category(char).startswith("C")


def _is_punctuation(char):
    """Unicode punctuation (P*) plus every ASCII symbol: BERT splits "$", "^",
    "`" and the like off words although Unicode files them as symbols (S*)."""
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_cjk_ideograph(cp):
    """CJK Unified Ideographs, their extensions and compatibility blocks. Hangul,
    Hiragana and Katakana are not included: those scripts put spaces between
    words, so the normal word splitting handles them."""
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF
            or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


# ----------------------------------------------------------------------------
# Pure-Python path
# ----------------------------------------------------------------------------

class BasicTokenizer:
    """Cleans text, spaces out CJK ideographs, splits on whitespace, optionally
    lower-cases and strips accents, and splits off punctuation. A word listed
    in `never_split` is kept whole, case included, when it stands alone."""

    def __init__(self, do_lower_case=True, never_split=SPECIAL_TOKENS):
        self.do_lower_case = do_lower_case
        self.never_split = frozenset(never_split)

    def tokenize(self, text):
        """Words and punctuation marks of `text`, as a list of str."""
        text = self._space_out_cjk(self._clean_text(text))
        tokens = []
        for word in text.split():
            if word in self.never_split:
                tokens.append(word)
                continue
            if self.do_lower_case:
                word = self._strip_accents(word.lower())
            tokens.extend(self._split_on_punctuation(word))
        return tokens

    @staticmethod
    def _clean_text(text):
        """Drop NUL, U+FFFD (decoding debris) and control characters; turn each
        whitespace character into a plain space."""
        if text.isascii() and text.isprintable():
            return text
        chars = []
        for char in text:
            if char == "\x00" or char == "\ufffd" or _is_control(char):
                continue
            chars.append(" " if _is_whitespace(char) else char)
        return "".join(chars)

    @staticmethod
    def _space_out_cjk(text):
        """Surround each CJK ideograph with spaces. Chinese has no spaces between
        words, so BERT makes every ideograph a word of its own (the Chinese and
        multilingual models were trained so, and English ones do the same)."""
        if text.isascii():
            return text
        return "".join(f" {char} " if _is_cjk_ideograph(ord(char)) else char for char in text)

    @staticmethod
    def _strip_accents(word):
        """Decompose (NFD) and drop the combining marks (Mn): "café" -> "cafe"."""
        if word.isascii():
            return word
        return "".join(char for char in unicodedata.normalize("NFD", word)
                       if unicodedata.category(char) != "Mn")

    @staticmethod
    def _split_on_punctuation(word):
        """Make each punctuation character a token of its own: "it's" -> it ' s."""
        pieces = []
        start_new_piece = True
        for char in word:
            if _is_punctuation(char):
                pieces.append(char)
                start_new_piece = True
            elif start_new_piece:
                pieces.append(char)
                start_new_piece = False
            else:
                pieces[-1] += char
        return pieces


class WordpieceTokenizer:
    """Greedy longest-match-first split of words into vocabulary pieces; each
    piece after the first carries the "##" continuation prefix."""

    def __init__(self, vocab, unk_token=UNK_TOKEN, max_input_chars_per_word=100):
        self.vocab = vocab
        self.unk_token = unk_token
        self.max_input_chars_per_word = max_input_chars_per_word

    def tokenize(self, text):
        """Pieces of the whitespace-separated words in `text` (BasicTokenizer
        output): "unaffable" -> ["un", "##aff", "##able"] with a suitable vocab.
        A word longer than `max_input_chars_per_word`, or with a stretch that
        no vocab piece covers, becomes a single `unk_token`."""
        pieces = []
        for word in text.split():
            pieces.extend(self._split_word(word))
        return pieces

    def _split_word(self, word):
        if len(word) > self.max_input_chars_per_word:
            return [self.unk_token]
        pieces = []
        start = 0
        while start < len(word):
            prefix = "##" if start > 0 else ""
            end = len(word)
            while end > start and prefix + word[start:end] not in self.vocab:
                end -= 1
            if end == start:
                # One uncovered stretch spoils the whole word, as in BERT: a
                # partial split would invent a word the model never saw.
                return [self.unk_token]
            pieces.append(prefix + word[start:end])
            start = end
        return pieces


# ----------------------------------------------------------------------------
# Fast path (Hugging Face `tokenizers`) and the guard that keeps it identical
# ----------------------------------------------------------------------------

def _build_fast_tokenizer(vocab, do_lower_case, special_tokens):
    """A `tokenizers.Tokenizer` doing what BasicTokenizer + WordpieceTokenizer
    do: BertNormalizer (cleaning, CJK spacing, lower-casing with accent
    stripping), BertPreTokenizer (whitespace and punctuation split), WordPiece.
    `special_tokens` are matched whole before normalization, as never_split
    keeps them; there is no post-processor, so no [CLS]/[SEP] are added."""
    from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordPiece

    fast = Tokenizer(WordPiece(dict(vocab), unk_token=UNK_TOKEN, max_input_chars_per_word=100))
    fast.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True,
        strip_accents=do_lower_case, lowercase=do_lower_case)
    fast.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    fast.add_special_tokens([AddedToken(token, normalized=False) for token in special_tokens])
    return fast


# BERT whitespace (see _is_whitespace): space, tab, newline, CR and the Zs characters.
_BERT_WHITESPACE = " \t\n\r\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000"


def _glued_special_token_pattern(never_split, vocab):
    """Regex matching a never_split token that touches a non-whitespace
    character, or any occurrence of one the vocab lacks (such a token is not
    registered with `tokenizers`, so only the pure path handles it right)."""
    alternatives = [re.escape(token) for token in never_split if token not in vocab]
    registered = [re.escape(token) for token in never_split if token in vocab]
    if registered:
        special = "(?:" + "|".join(registered) + ")"
        alternatives += [f"(?<=[^{_BERT_WHITESPACE}]){special}",
                         f"{special}(?=[^{_BERT_WHITESPACE}])"]
    return re.compile("|".join(alternatives) or "(?!)")


class _FastPathGuard:
    """Decides which texts the fast path may take; the others go to the pure
    path, which is the reference, so the routing never changes the output.

    `tokenizers` carries its own, older Unicode tables: it keeps unassigned
    code points and recent format characters that BERT drops, and does not
    know recent punctuation and combining marks. Rather than hard-code a list
    that changes with either library's version, each distinct character is
    checked once, on first sight, by tokenizing a probe string around it both
    ways; a text takes the fast path only when all its characters passed.
    Real text uses a few hundred distinct characters, so this is cheap.

    Two cases depend on a character's neighbours, so no probe clears them:
    * never_split tokens. BERT keeps "[MASK]" whole only when it stands alone
      between whitespace after cleaning; `tokenizers` matches it anywhere in
      the raw text. Texts with a glued one ("x[MASK]", "[SEP].") take the pure
      path, and so do texts with "[" and a character that cleaning deletes,
      since deleting it can form a token ("[MA" U+200B "SK]").
    * capital sigma when lower-casing. Python lower-cases a word-final "Σ" to
      "ς"; `tokenizers` lower-cases each character alone, to "σ".
    """

    def __init__(self, tokenize_pure, tokenize_fast, never_split, vocab, do_lower_case):
        self._tokenize_pure = tokenize_pure
        self._tokenize_fast = tokenize_fast
        self._special_first_chars = frozenset(token[0] for token in never_split)
        self._glued_special = _glued_special_token_pattern(never_split, vocab)
        self._checked = set()
        self._untrusted = {"\u03a3"} if do_lower_case else set()
        self._deleted_by_cleaning = set()

    def needs_pure_path(self, text):
        """True when `text` must be tokenized by the pure path."""
        chars = set(text)
        for char in chars - self._checked:
            self._check_character(char)
        if not self._untrusted.isdisjoint(chars):
            return True
        if self._special_first_chars.isdisjoint(chars):
            return False
        # The text may hold a never_split token ("[" appears in it).
        return (self._glued_special.search(text) is not None
                or not self._deleted_by_cleaning.isdisjoint(chars))

    def _check_character(self, char):
        if char == "\x00" or char == "\ufffd" or _is_control(char):
            self._deleted_by_cleaning.add(char)
        # Alone, inside a lower-case word and doubled inside a capitalised one:
        # shows any difference in cleaning, punctuation, case or accents.
        probe = f"{char} a{char}b A{char}{char}B"
        if self._tokenize_pure(probe) != self._tokenize_fast(probe):
            self._untrusted.add(char)
        self._checked.add(char)


def _tokenizers_available():
    """tokenizers with Tokenizer.encode_batch_fast (0.20 and later); older ones are not used."""
    try:
        import tokenizers
    except ImportError:
        return False
    return hasattr(tokenizers.Tokenizer, "encode_batch_fast")


# ----------------------------------------------------------------------------
# Full tokenizer
# ----------------------------------------------------------------------------

class FullTokenizer:
    """Text -> WordPiece tokens -> ids, with the vocab in `vocab_file`.

    Args:
        vocab_file: BERT vocab.txt, one token per line.
        do_lower_case: lower-case and strip accents (uncased models).
        use_fast: None uses `tokenizers` when importable, True requires it,
            False keeps to pure Python. Both paths give identical output.
        check_casing: warn when do_lower_case contradicts the vocab's casing
            (off where the caller checked once for many tokenizers).
    """

    def __init__(self, vocab_file, do_lower_case=True, use_fast=None, check_casing=True):
        self.vocab_file = os.fspath(vocab_file)
        self.vocab = load_vocab(vocab_file)
        if UNK_TOKEN not in self.vocab:
            raise ValueError(f"vocab file {self.vocab_file!r} has no {UNK_TOKEN} token: WordPiece "
                             "needs it for words it cannot split; is this a BERT vocab?")
        if check_casing:
            warn_on_casing_mismatch(self.vocab, do_lower_case, self.vocab_file)
        self.inv_vocab = {index: token for token, index in self.vocab.items()}
        self.basic_tokenizer = BasicTokenizer(do_lower_case=do_lower_case)
        self.wordpiece_tokenizer = WordpieceTokenizer(self.vocab)
        self._fast = None
        if use_fast and not _tokenizers_available():
            raise ImportError("FullTokenizer(use_fast=True) needs the `tokenizers` package: "
                              "pip install tokenizers, or pass use_fast=None or False")
        if use_fast or (use_fast is None and _tokenizers_available()):
            self._build_fast_path(do_lower_case)

    @property
    def is_fast(self):
        """Whether tokenize/tokenize_to_ids can go through `tokenizers`."""
        return self._fast is not None

    def _build_fast_path(self, do_lower_case):
        never_split = sorted(self.basic_tokenizer.never_split)
        registered = [token for token in never_split if token in self.vocab]
        self._fast = _build_fast_tokenizer(self.vocab, do_lower_case, registered)
        self._guard = _FastPathGuard(self._tokenize_pure, self._tokenize_fast,
                                     never_split, self.vocab, do_lower_case)
        # Printable ASCII needs nothing of BertNormalizer but lower-casing, which Python's
        # str.lower does faster: such texts skip the normalizer (~40% of tokenizers' time).
        self._fast_ascii = None
        if do_lower_case:
            self._fast_ascii = _build_fast_tokenizer(self.vocab, False, registered)
            self._fast_ascii.normalizer = None

    def tokenize(self, text):
        """WordPiece tokens of `text` (no [CLS]/[SEP] added)."""
        if self._fast is None or self._guard.needs_pure_path(text):
            return self._tokenize_pure(text)
        return self._tokenize_fast(text)

    def tokenize_to_ids(self, texts):
        """Token ids of each of `texts`, one list per text, in order. With the
        fast path the batch is encoded in Rust, in parallel."""
        if self._fast is None:
            return [self.convert_tokens_to_ids(self._tokenize_pure(text)) for text in texts]
        ids = [None] * len(texts)
        fast_indices, ascii_indices = [], []
        for index, text in enumerate(texts):
            if self._guard.needs_pure_path(text):
                ids[index] = self.convert_tokens_to_ids(self._tokenize_pure(text))
            elif self._takes_ascii_path(text):
                ascii_indices.append(index)
            else:
                fast_indices.append(index)
        for tokenizer, indices, prepare in ((self._fast, fast_indices, str),
                                            (self._fast_ascii, ascii_indices, str.lower)):
            encodings = tokenizer.encode_batch_fast([prepare(texts[i]) for i in indices],
                                                    add_special_tokens=False) if indices else []
            for index, encoding in zip(indices, encodings):
                ids[index] = encoding.ids
        return ids

    def _takes_ascii_path(self, text):
        """Printable ASCII without "[" (lower-casing must not touch a special token)."""
        return (self._fast_ascii is not None and text.isascii() and text.isprintable()
                and "[" not in text)

    def _tokenize_fast(self, text):
        return self._fast.encode(text, add_special_tokens=False).tokens

    def _tokenize_pure(self, text):
        return [piece for word in self.basic_tokenizer.tokenize(text)
                for piece in self.wordpiece_tokenizer.tokenize(word)]

    def convert_tokens_to_ids(self, tokens):
        """Vocabulary ids of `tokens`; KeyError naming a token the vocab lacks."""
        try:
            return [self.vocab[token] for token in tokens]
        except KeyError as error:
            raise KeyError(f"token {error.args[0]!r} is not in vocab file "
                           f"{self.vocab_file!r}") from None

    def convert_ids_to_tokens(self, ids):
        """Tokens of vocabulary `ids`; KeyError naming an id outside the vocab."""
        try:
            return [self.inv_vocab[index] for index in ids]
        except KeyError as error:
            raise KeyError(f"id {error.args[0]!r} is outside vocab file {self.vocab_file!r} "
                           f"({len(self.inv_vocab)} ids)") from None
