"""Articles (one per line) -> N training and M test text shards in create_pretraining_data's
input format: one sentence per line, a blank line between documents.

    shard_articles(["wiki.txt"], "sharded/wikicorpus_en", "wikicorpus_en", 256, 256, 0.1)
    # -> sharded/wikicorpus_en/wikicorpus_en_training_{0..255}.txt, ..._test_{0..255}.txt

Sentences are split by NLTK's punkt model when it is installed with its data, otherwise
(or with method "rules") by a small rule-based splitter that needs no downloads.

Deliberate deviations from NVIDIA's TextSharding:
- Test articles are every (1/fraction)-th article (exactly the requested share, spread over
  the corpus) rather than a random draw.
- The corpus is streamed once: each article goes to the training (or test) shard that has
  the fewest sentences so far. Memory stays bounded and the loop always ends (NVIDIA's
  fill-to-target loop can spin forever, issue #1083); shard sizes differ by at most one
  article.
- Shards are written under temporary names and renamed only when all are complete; a run
  that leaves a shard empty (fewer articles than shards) fails and writes none.
"""

import contextlib
import functools
import heapq
import math
import re
import multiprocessing
from pathlib import Path

from utils import atomic_path, logger

# Words that end with a period without ending the sentence (compared in lower case).
ABBREVIATIONS = frozenset("""
    mr mrs ms dr prof sr jr st mt ft vs no nos fig figs vol vols pp ed eds rev hon gen col
    lt sgt capt cmdr adm gov sen rep pres supt insp messrs mme mlle jan feb mar apr jun jul
    aug sep sept oct nov dec inc ltd co corp bros dept est approx al cf ca op
""".split())

# A sentence may end at . ! or ? (with closing quotes or brackets after it) when the next
# word starts with a capital letter, a digit or an opening quote or bracket.
_END = re.compile(r"""[.!?]+["'\u201d\u2019)\]]*(?=\s+["'\u201c\u2018(\[]*[A-Z0-9])""")


def split_sentences_by_rules(text):
    """Sentences of `text` by punctuation, keeping abbreviations (Mr., e.g., U.S., J.)
    and decimals whole."""
    sentences, start = [], 0
    for end in _END.finditer(text):
        if end.group(0)[0] == "." and _is_abbreviation(text, end.start()):
            continue
        sentence = text[start:end.end()].strip()
        if sentence:
            sentences.append(sentence)
        start = end.end()
    rest = text[start:].strip()
    if rest:
        sentences.append(rest)
    return sentences


def _is_abbreviation(text, period):
    """Is the word before the period at `period` an abbreviation or an initial?"""
    before = text[max(0, period - 32):period].split()  # a short window: linear time
    if not before or text[period - 1].isspace():
        return False
    word = before[-1].lstrip("\"'(\u201c\u2018[")
    if len(word) == 1 and word.isalpha():  # an initial: "J. R. R. Tolkien"
        return True
    if "." in word and all(part.isalpha() and len(part) <= 3 for part in word.split(".")):
        return True  # dotted: "e.g", "U.S", "Ph.D"
    return word.lower() in ABBREVIATIONS


def punkt_splitter():
    """NLTK's sent_tokenize when nltk and its punkt data are installed, else None."""
    try:
        import nltk
        nltk.sent_tokenize("Punkt is here. Is it?")
    except (ImportError, LookupError):
        return None
    return nltk.sent_tokenize


def sentence_splitter(method):
    """'rules', 'nltk' (punkt required) or 'auto' (punkt if available, else rules)."""
    if method == "rules":
        return split_sentences_by_rules
    punkt = punkt_splitter()
    if punkt is not None:
        return punkt
    if method == "nltk":
        raise RuntimeError("--segmentation_method nltk needs nltk with its punkt data "
                           "(pip install nltk; python -m nltk.downloader punkt punkt_tab, "
                           "which needs network); or use --segmentation_method rules")
    return split_sentences_by_rules


def _split_article(method, article):
    return _cached_splitter(method)(article)


@functools.cache
def _cached_splitter(method):
    return sentence_splitter(method)


def read_articles(input_files):
    """Non-empty lines of the input files, in order; bytes that are not UTF-8 read as
    U+FFFD, as create_pretraining_data.py reads them."""
    for path in input_files:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.strip()
                if line:
                    yield line


def is_test_article(index, fraction_test_set):
    """Article `index` is a test article when it crosses a multiple of 1/fraction: exactly
    floor(n * fraction) of the first n articles are test articles."""
    return math.floor((index + 1) * fraction_test_set) > math.floor(index * fraction_test_set)


class ShardWriter:
    """Open shard files of one split; each document goes to the one with fewest sentences."""

    def __init__(self, stack, paths):
        self.paths = paths
        self.files = [self._open(stack, path) for path in paths]
        self.heap = [(0, index) for index in range(len(paths))]
        self.documents = [0] * len(paths)

    @staticmethod
    def _open(stack, path):
        """A file under a temporary name, renamed to `path` when `stack` closes cleanly."""
        temporary = stack.enter_context(atomic_path(path))
        return stack.enter_context(temporary.open("w", encoding="utf-8"))

    def write(self, sentences):
        count, index = heapq.heappop(self.heap)
        out = self.files[index]
        if self.documents[index]:
            out.write("\n")
        out.write("\n".join(sentences) + "\n")
        self.documents[index] += 1
        heapq.heappush(self.heap, (count + len(sentences), index))

    def check_not_empty(self, split):
        empty = [i for i, n in enumerate(self.documents) if n == 0]
        if empty:
            raise ValueError(f"{len(empty)} of {len(self.paths)} {split} shards would be empty "
                             f"(only {sum(self.documents)} {split} documents): ask for fewer "
                             f"shards; no shard was written")


OPEN_FILES_MARGIN = 64  # the interpreter's own files, a worker pool's pipes, the log


def allow_open_files(shards):
    """Every shard file stays open while the corpus streams past: raises this process's
    soft limit on open files (often 1,024) to fit them, up to the hard limit, and says
    before any work when even that is too low."""
    try:
        import resource
    except ImportError:  # not a Unix system: no such limit to raise
        return
    needed = shards + OPEN_FILES_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ValueError(f"{shards} shard files are written at once, which needs {needed} "
                         f"open files, but this process may open at most {hard} (ulimit -Hn): "
                         "ask for fewer shards, or raise the limit")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def shard_paths(output_dir, dataset, split, count):
    return [Path(output_dir) / f"{dataset}_{split}_{i}.txt" for i in range(count)]


def shard_articles(input_files, output_dir, dataset, n_training_shards, n_test_shards,
                   fraction_test_set, segmentation_method="auto", n_processes=1):
    """Splits the articles into sentences and spreads them over the shards.
    Returns {'training': documents, 'test': documents}."""
    if n_training_shards < 1:
        raise ValueError("--n_training_shards must be at least 1")
    if not 0.0 <= fraction_test_set < 1.0:
        raise ValueError(f"--fraction_test_set must be in [0, 1), got {fraction_test_set}")
    if fraction_test_set > 0 and n_test_shards < 1:
        raise ValueError(f"--fraction_test_set {fraction_test_set} needs --n_test_shards >= 1")
    allow_open_files(n_training_shards + (n_test_shards if fraction_test_set > 0 else 0))
    splitter = _cached_splitter(segmentation_method)
    logger.info("sentence splitter: %s", "NLTK punkt" if splitter is not
                split_sentences_by_rules else "rules (NLTK punkt not available or not chosen)")
    split_article = functools.partial(_split_article, segmentation_method)
    with contextlib.ExitStack() as stack:
        writers = {"training": ShardWriter(stack, shard_paths(output_dir, dataset, "training",
                                                              n_training_shards))}
        if fraction_test_set > 0:
            writers["test"] = ShardWriter(stack, shard_paths(output_dir, dataset, "test",
                                                             n_test_shards))
        if n_processes > 1:
            # forkserver, not fork: a fork of a process that runs threads (torch's, a
            # tokenizer's) can inherit a lock that one of them holds, and hang on it (seen
            # once in the test suite).
            context = multiprocessing.get_context("forkserver")
            pool = stack.enter_context(context.Pool(n_processes))
            documents = pool.imap(split_article, read_articles(input_files), chunksize=64)
        else:
            documents = map(split_article, read_articles(input_files))
        for index, sentences in enumerate(documents):
            test = fraction_test_set > 0 and is_test_article(index, fraction_test_set)
            writers["test" if test else "training"].write(sentences)
        for split, writer in writers.items():
            writer.check_not_empty(split)
    counts = {split: sum(writer.documents) for split, writer in writers.items()}
    logger.info("sharded %s documents into %s", counts,
                {split: len(writer.paths) for split, writer in writers.items()})
    return counts
