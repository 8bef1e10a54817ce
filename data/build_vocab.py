"""Learns a WordPiece vocabulary (vocab.txt) from a pre-training corpus, for a corpus or a
language that an existing BERT vocabulary does not fit.

    python data/build_vocab.py --input_file corpus.txt --output_file vocab.txt \\
        --vocab_size 8192 --do_lower_case

The input is text in create_pretraining_data.py's format (one sentence per line; blank lines
between documents do not matter here); several files or a glob may be given. Words are split
as BasicTokenizer splits them (cleaning, lower-casing and accent stripping with
--do_lower_case, punctuation split), so every piece learnt is one the tokenizer can meet.

The pieces are learnt by merges of the most frequent adjacent pair (byte-pair encoding,
Sennrich et al. 2016) over word-internal symbols. Every word starts as its characters, each
after the first marked with WordPiece's "##" continuation prefix; the pair of adjacent
symbols that occurs most often over the corpus (ties broken by the pair's text, so the
result is deterministic) becomes one new piece, until the vocabulary holds --vocab_size
entries or no pair occurs --min_frequency times. WordpieceTokenizer's greedy
longest-match-first split then uses the pieces; it needs no merge order.

vocab.txt lists [PAD] [UNK] [CLS] [SEP] [MASK] first (so [PAD] is id 0, the padding id that
the HDF5 files and the model assume), then the characters, then the pieces in the order
they were learnt.

Deviations: Google did not publish the learner behind BERT's vocabularies (its WordPiece
picks merges by likelihood gain, count(ab) / (count(a) count(b)); this one by count, as
Hugging Face's WordPiece trainer does). A word longer than WordpieceTokenizer's 100
characters is skipped, as the tokenizer makes it [UNK] anyway.
"""

import argparse
import collections
import heapq
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python data/build_vocab.py`
    sys.path.insert(0, str(REPO))

import utils  # noqa: E402
from tokenization import BasicTokenizer  # noqa: E402
from create_pretraining_data import check_text_files, expand_input_files  # noqa: E402

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CONTINUATION = "##"
MAX_WORD_CHARACTERS = 100  # WordpieceTokenizer's max_input_chars_per_word


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input_file", required=True, nargs="+",
                        help="text files (or globs) in create_pretraining_data.py's format")
    parser.add_argument("--output_file", required=True, help="the vocab.txt to write")
    parser.add_argument("--vocab_size", type=int, default=30522,
                        help="entries in vocab.txt, special tokens and characters included")
    parser.add_argument("--do_lower_case", action=argparse.BooleanOptionalAction, default=True,
                        help="lower-case and strip accents first (an uncased vocabulary)")
    parser.add_argument("--min_frequency", type=int, default=2,
                        help="stop when no pair of symbols occurs this often")
    parser.add_argument("--disable_progress_bar", action="store_true")
    return parser.parse_args(argv)


def count_words(files, do_lower_case, disable_progress_bar=False):
    """How often each word (BasicTokenizer's split) occurs in `files`. A space is a word
    boundary for BasicTokenizer and each of its steps works within a word, so the distinct
    space-separated chunks are tokenized once each, not every occurrence."""
    chunks = collections.Counter()
    total_bytes = sum(path.stat().st_size for path in files)
    with utils.Progress(total_bytes, "counting words", unit="B",
                        disable=disable_progress_bar) as progress:
        for path in files:
            with open(path, encoding="utf-8", errors="replace") as text:
                for line in text:
                    chunks.update(line.rstrip("\n").split(" "))
                    progress.update(len(line.encode("utf-8")))
    tokenizer = BasicTokenizer(do_lower_case=do_lower_case, never_split=())
    words = collections.Counter()
    for chunk, count in chunks.items():
        for word in tokenizer.tokenize(chunk):
            words[word] += count
    return collections.Counter({word: count for word, count in words.items()
                                if len(word) <= MAX_WORD_CHARACTERS})


def initial_symbols(word):
    """A word as WordPiece symbols: its first character, then "##"-marked ones."""
    return [word[0]] + [CONTINUATION + char for char in word[1:]]


def merged_piece(left, right):
    return left + right[len(CONTINUATION):]


def merge_pair(symbols, pair):
    """`symbols` with every non-overlapping occurrence of `pair`, left to right, merged."""
    merged, index = [], 0
    while index < len(symbols):
        if index + 1 < len(symbols) and (symbols[index], symbols[index + 1]) == pair:
            merged.append(merged_piece(*pair))
            index += 2
        else:
            merged.append(symbols[index])
            index += 1
    return merged


def adjacent_pairs(symbols):
    return zip(symbols, symbols[1:])


class PairCounts:
    """Counts of adjacent symbol pairs over all words (weighted by word count), the words
    each pair occurs in, and a heap that yields the most frequent pair. Heap entries go
    stale as counts change; a popped entry is used only if its count is still current."""

    def __init__(self, words, counts):
        self.count = collections.Counter()
        self.words_with = collections.defaultdict(set)
        for index, (symbols, count) in enumerate(zip(words, counts)):
            self.add(index, symbols, count)
        self.heap = [(-count, pair) for pair, count in self.count.items()]
        heapq.heapify(self.heap)

    def add(self, index, symbols, count):
        for pair in adjacent_pairs(symbols):
            self.count[pair] += count
            self.words_with[pair].add(index)

    def remove(self, symbols, count):
        for pair in adjacent_pairs(symbols):
            self.count[pair] -= count

    def most_frequent(self):
        """(pair, count) of the most frequent pair, ties to the smallest; None when none."""
        while self.heap:
            negative_count, pair = heapq.heappop(self.heap)
            if self.count[pair] == -negative_count and -negative_count > 0:
                return pair, -negative_count
        return None

    def refresh(self, pairs):
        for pair in pairs:
            if self.count[pair] > 0:
                heapq.heappush(self.heap, (-self.count[pair], pair))


def learn_pieces(word_counts, max_pieces, min_frequency=2):
    """The characters of `word_counts` (initial and "##" forms) and up to `max_pieces`
    minus their number learnt pieces, in the order they were made."""
    words = [initial_symbols(word) for word in word_counts]
    counts = list(word_counts.values())
    alphabet = sorted({symbol for symbols in words for symbol in symbols})
    if len(alphabet) > max_pieces:
        raise ValueError(f"the corpus has {len(alphabet)} distinct characters (with their "
                         f"'##' forms), more than the {max_pieces} pieces the vocabulary has "
                         f"room for: raise --vocab_size")
    pairs = PairCounts(words, counts)
    pieces, learnt = [], set()
    while len(alphabet) + len(pieces) < max_pieces:
        best = pairs.most_frequent()
        if best is None or best[1] < min_frequency:
            break
        pair = best[0]
        changed = set()
        for index in pairs.words_with.pop(pair):
            symbols = words[index]
            merged = merge_pair(symbols, pair)
            if len(merged) == len(symbols):
                continue  # an earlier merge in this word took the pair apart
            pairs.remove(symbols, counts[index])
            pairs.add(index, merged, counts[index])
            changed.update(adjacent_pairs(symbols))
            changed.update(adjacent_pairs(merged))
            words[index] = merged
        pairs.refresh(changed - {pair})
        piece = merged_piece(*pair)
        if piece not in learnt:  # ("ab", "##c") and ("a", "##bc") make the same piece
            learnt.add(piece)
            pieces.append(piece)
    return alphabet + pieces


def build_vocab(files, vocab_size, do_lower_case=True, min_frequency=2,
                disable_progress_bar=False):
    """vocab.txt's lines: the special tokens, the characters, the learnt pieces."""
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"--vocab_size {vocab_size} leaves no room beside the "
                         f"{len(SPECIAL_TOKENS)} special tokens {', '.join(SPECIAL_TOKENS)}")
    word_counts = count_words(files, do_lower_case, disable_progress_bar)
    if not word_counts:
        raise ValueError(f"--input_file {', '.join(map(str, files))}: no words to learn from")
    return list(SPECIAL_TOKENS) + learn_pieces(word_counts, vocab_size - len(SPECIAL_TOKENS),
                                               min_frequency)


def write_vocab(path, vocab):
    """vocab.txt, one entry per line, written atomically."""
    utils.atomic_write_text(path, "\n".join(vocab) + "\n")


def main(args):
    utils.setup_logging()
    files = expand_input_files(args.input_file)
    check_text_files(files)
    output = Path(args.output_file)
    utils.check_writable_dir(output.parent, f"--output_file {output}: its folder")
    start = time.monotonic()
    vocab = build_vocab(files, args.vocab_size, args.do_lower_case, args.min_frequency,
                        args.disable_progress_bar)
    write_vocab(output, vocab)
    short = (f" (no pair occurs {args.min_frequency} times beyond these)"
             if len(vocab) < args.vocab_size else "")
    utils.logger.info("wrote %s: %d entries%s in %.1f s", output, len(vocab), short,
                      time.monotonic() - start)
    return vocab


if __name__ == "__main__":
    utils.run_entry_point(main, parse_args)
