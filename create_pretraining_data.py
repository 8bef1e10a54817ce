"""Turns text into BERT pre-training instances (next-sentence pairs, static masking) in HDF5.

Input: text files (paths, globs or directories of *.txt) with one sentence per line and a
blank line between documents. Output: HDF5 with NVIDIA's schema (input_ids, input_mask,
segment_ids [N, max_seq_length]; masked_lm_positions, masked_lm_ids [N, max_predictions];
next_sentence_labels [N]), gzip-compressed, readable by run_pretraining.py and NVIDIA's loader.

    python create_pretraining_data.py --input_file corpus/ --output_file out/wiki.hdf5 \\
        --vocab_file vocab.txt --max_seq_length 128 --max_predictions_per_seq 20

Scale: the corpus is streamed in shards of about --shard_size_mb of text (documents are never
split); each shard is tokenised, paired, masked and written by one worker process. A single
input no larger than one shard is written to --output_file itself; otherwise shard i goes to
<output stem>_<i:05d>.hdf5 beside it. Every shard is written to a temporary name and renamed
when complete. Shard i is a function of (its text, --random_seed, i) only, so the output is
byte-identical whatever --num_workers is.

Deliberate deviations from Google's/NVIDIA's script:
- Documents are shuffled and random next segments drawn within a shard rather than within
  one input file (NVIDIA feeds one shard file per call, which is the same thing at scale).
- The shorter target length (--short_seq_prob) is drawn for every pair, not once per
  document: with long documents (books) Google's draw makes whole documents short-only.
- Per-instance work is vectorised with numpy: truncation draws the number of tokens cut
  from the front with one binomial draw instead of a coin per token (same distribution),
  and masked positions are chosen by sorting random keys (a uniform choice, as a shuffle).
- Whole-word masking (--whole_word_masking) stops at the first word that would exceed the
  prediction budget, where Google's code skips it and tries later (shorter) words.
- --do_lower_case can be switched off (--no-do_lower_case); by default it follows
  --bert_model ("uncased"/"cased" in the name), and is on for unknown names. A setting
  that contradicts the vocabulary's casing is warned of, and so is a text of which more
  than 5% of the tokens are [UNK].
- Inputs are checked before any work: a binary file (a NUL byte, or mostly bytes that are
  not UTF-8) is an error naming it where Google's script decodes anything; an output
  folder that cannot be written is an error naming --output_file.
- Workers die with the main process (Linux PR_SET_PDEATHSIG), and files under the output
  prefix that the run did not write (an earlier run's shards) are named in a warning.
"""

import argparse
import bisect
import functools
import glob
import itertools
import logging
import multiprocessing
import os
import random
import re
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np

import utils
from masking import apply_masks, choose_masked_positions, subword_flags
from tokenization import (FullTokenizer, binary_content, load_vocab, lower_case_for_model,
                          warn_on_casing_mismatch)
from utils import Progress, atomic_path, logger, setup_logging

SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[MASK]", "[UNK]")
MIN_SEQ_LENGTH = 5  # [CLS] a [SEP] b [SEP]
MAX_UNKNOWN_SHARE = 0.05  # more [UNK] in the text than this: wrong vocabulary or casing
CHECK_BLOCK_BYTES = 1 << 24  # the up-front text check reads the inputs in blocks this large


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input_file", required=True, nargs="+",
                        help="text files, globs or directories (all *.txt inside)")
    parser.add_argument("--output_file", required=True,
                        help="HDF5 output (.hdf5 added to a name without a suffix); several "
                             "shards are named <stem>_<i:05d>.hdf5")
    parser.add_argument("--vocab_file", required=True, help="WordPiece vocabulary, one token a line")
    parser.add_argument("--bert_model", default="bert-large-uncased",
                        help="model name; selects lower-casing when --do_lower_case is not given")
    parser.add_argument("--do_lower_case", action=argparse.BooleanOptionalAction, default=None,
                        help="lower-case and strip accents (default: from --bert_model)")
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--max_predictions_per_seq", type=int, default=20,
                        help="most masked tokens per sequence")
    parser.add_argument("--masked_lm_prob", type=float, default=0.15)
    parser.add_argument("--dupe_factor", type=int, default=10,
                        help="times each document is used, with different masks")
    parser.add_argument("--short_seq_prob", type=float, default=0.1,
                        help="probability of a shorter target length (fine-tuning sees short inputs)")
    parser.add_argument("--random_seed", type=int, default=12345)
    parser.add_argument("--whole_word_masking", action="store_true",
                        help="mask all WordPieces of a word together")
    parser.add_argument("--num_workers", type=int, default=0,
                        help="worker processes (default: one per CPU core)")
    parser.add_argument("--shard_size_mb", type=float, default=16.0,
                        help="text per output shard; bounds each worker's memory")
    parser.add_argument("--no_fast_tokenizer", action="store_true",
                        help="use the pure-Python tokenizer even when `tokenizers` is installed")
    parser.add_argument("--disable_progress_bar", action="store_true")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- options

@dataclass(frozen=True)
class Options:
    """What a worker needs to turn a shard of text into instances."""
    vocab_file: str
    do_lower_case: bool
    use_fast: bool
    max_seq_length: int
    max_predictions_per_seq: int
    masked_lm_prob: float
    dupe_factor: int
    short_seq_prob: float
    random_seed: int
    whole_word_masking: bool


def validate(args):
    """Checks arguments and the vocabulary up front; returns the worker Options."""
    if args.max_seq_length < MIN_SEQ_LENGTH:
        raise ValueError(f"--max_seq_length {args.max_seq_length} is too small: a pair needs "
                         f"[CLS] A [SEP] B [SEP], at least {MIN_SEQ_LENGTH} tokens")
    if args.max_predictions_per_seq < 1:
        raise ValueError("--max_predictions_per_seq must be at least 1")
    if not 0.0 < args.masked_lm_prob < 1.0:
        raise ValueError(f"--masked_lm_prob must be in (0, 1), got {args.masked_lm_prob}")
    if args.dupe_factor < 1:
        raise ValueError("--dupe_factor must be at least 1")
    vocab = load_vocab(args.vocab_file)
    absent = [token for token in SPECIAL_TOKENS if token not in vocab]
    if absent:
        raise ValueError(f"vocabulary {args.vocab_file} lacks the special tokens {absent}")
    do_lower_case = args.do_lower_case
    if do_lower_case is None:
        do_lower_case = lower_case_for_model(args.bert_model) is not False
    warn_on_casing_mismatch(vocab, do_lower_case, args.vocab_file)
    return Options(args.vocab_file, do_lower_case, not args.no_fast_tokenizer,
                   args.max_seq_length, args.max_predictions_per_seq, args.masked_lm_prob,
                   args.dupe_factor, args.short_seq_prob, args.random_seed,
                   args.whole_word_masking)


def expand_input_files(patterns):
    """Paths, globs and directories -> sorted existing files; a clear error for none."""
    files = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found = sorted(path.glob("*.txt"))
        elif path.is_file():
            found = [path]
        else:
            found = sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_file())
        if not found:
            raise FileNotFoundError(f"--input_file {pattern}: no such file, directory with "
                                    f"*.txt files, or matching glob")
        files.extend(found)
    return files


# ----------------------------------------------------------------------------- reading

def check_text_files(files):
    """Refuses, before any work, an input that is binary anywhere (a NUL byte, or a block
    mostly undecodable): found half-way, it would leave this run's first shards beside an
    earlier run's under the same names. A few bad bytes in real text are accepted (read as
    U+FFFD, as in BERT). Reading everything once more costs about a second a GB."""
    for path in files:
        for offset, block in _whole_character_blocks(path):
            reason = binary_content(block, offset)
            if reason:
                raise ValueError(f"--input_file {path} is not text ({reason}): expected UTF-8 "
                                 "text, one sentence per line, a blank line between documents")


def _whole_character_blocks(path):
    """(offset, bytes) blocks of about CHECK_BLOCK_BYTES, none ending inside a UTF-8
    character (cut at a block's edge, it would count as bad bytes) but the last: a file
    cut inside one (`head -c`) ends with its bytes, a few bad bytes among the block's."""
    offset, carry = 0, b""
    with open(path, "rb") as f:
        block = f.read(CHECK_BLOCK_BYTES)
        while block:
            data = carry + block
            block = f.read(CHECK_BLOCK_BYTES)
            cut = _end_of_last_whole_character(data) if block else len(data)
            data, carry = data[:cut], data[cut:]
            yield offset, data
            offset += len(data)


def _end_of_last_whole_character(data):
    """len(data), or the start of a multi-byte UTF-8 sequence cut short at its end."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:  # ASCII: nothing is cut
            return len(data)
        if byte >= 0xC0:  # the lead byte of a sequence of 2, 3 or 4 bytes
            length = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) - back if back < length else len(data)
    return len(data)


def decode_text(data):
    return data.decode("utf-8", errors="replace")


def read_shards(files, shard_bytes):
    """Streams (text, n_bytes) shards of whole documents, about shard_bytes each; a shard
    never spans two files, so documents keep their file's boundaries."""
    for path in files:
        lines, size = [], 0
        with open(path, "rb") as f:
            for line in f:
                lines.append(line)
                size += len(line)
                if size >= shard_bytes and not line.strip():
                    yield decode_text(b"".join(lines)), size
                    lines, size = [], 0
        if lines:
            yield decode_text(b"".join(lines)), size


class Document(NamedTuple):
    """A document's sentences as token spans of the shard's flat array: sentence i is
    flat[starts[i]:ends[i]]; consecutive sentences are adjacent, so any run of them is one
    span."""
    starts: list
    ends: list


def tokenize_documents(text, tokenizer):
    """Text of a shard -> (flat int32 token array, list of Documents). Empty sentences and
    documents are dropped."""
    documents, sentences, current = [], [], []
    for line in text.split("\n"):
        line = line.strip()
        if line:
            sentences.append(line)
            current.append(len(sentences) - 1)
        elif current:
            documents.append(current)
            current = []
    if current:
        documents.append(current)
    token_ids = tokenizer.tokenize_to_ids(sentences)
    lengths = np.fromiter(map(len, token_ids), dtype=np.int64, count=len(token_ids))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    flat = np.fromiter(itertools.chain.from_iterable(token_ids), dtype=np.int32,
                       count=offsets[-1])
    spanned = [Document([offsets[s] for s in doc if lengths[s]],
                        [offsets[s + 1] for s in doc if lengths[s]]) for doc in documents]
    return flat, [doc for doc in spanned if doc.starts]


# ----------------------------------------------------------------------------- pairing

def create_instances_from_document(documents, document_index, max_num_tokens,
                                   short_seq_prob, rng):
    """BERT's pairing for one document, on token spans: yields (a_start, a_end, b_start,
    b_end, is_random_next) where A and B are contiguous spans of the shard's token array,
    before truncation. A chunk takes sentences until it reaches the target length (found by
    bisection over the sentence ends rather than a loop); A is a random number of its
    leading sentences and B the rest, or, half of the time, text from another document."""
    starts, ends = documents[document_index]
    i = 0
    while i < len(starts):
        target_length = draw_target_length(max_num_tokens, short_seq_prob, rng)
        last = min(bisect.bisect_left(ends, starts[i] + target_length, i), len(starts) - 1)
        sentences = last - i + 1
        a_sentences = randint(rng, 1, sentences - 1) if sentences >= 2 else 1
        a_span = (starts[i], ends[i + a_sentences - 1])
        if sentences == 1 or rng.random() < 0.5:
            yield a_span + random_next_span(documents, document_index,
                                            target_length - (a_span[1] - a_span[0]), rng) + (True,)
            i += a_sentences  # the unused sentences go back for the next pair
        else:
            yield a_span + (starts[i + a_sentences], ends[last], False)
            i = last + 1


def draw_target_length(max_num_tokens, short_seq_prob, rng):
    """Mostly fill the sequence, but sometimes aim shorter so that the model also sees the
    short inputs of fine-tuning. Drawn per pair: Google draws once per document, which turns
    every pair of an unlucky long document (a whole book) into a short one."""
    if rng.random() < short_seq_prob:
        return randint(rng, 2, max_num_tokens)
    return max_num_tokens


def randint(rng, low, high):
    """rng.randint(low, high) without its argument checking, which dominates the pairing."""
    return low + int(rng.random() * (high - low + 1))


def random_next_span(documents, document_index, target_b_length, rng):
    """Sentences from a random other document, from a random start, up to the target."""
    for _ in range(10):  # a one-document shard has no other document to draw
        random_index = randint(rng, 0, len(documents) - 1)
        if random_index != document_index:
            break
    starts, ends = documents[random_index]
    first = randint(rng, 0, len(starts) - 1)
    last = min(bisect.bisect_left(ends, starts[first] + target_b_length, first), len(starts) - 1)
    return starts[first], ends[last]


def truncate_pairs(spans, max_num_tokens, np_rng):
    """Trims A/B spans (rows of a_start, a_end, b_start, b_end) to max_num_tokens together.

    BERT trims one token at a time from the longer side (B on ties), from the front or back
    at random (a coin per token, so that neither end is systematically kept). Which side loses
    how many tokens is fixed by the lengths; the front/back split is one binomial draw.
    """
    len_a, len_b = spans[:, 1] - spans[:, 0], spans[:, 3] - spans[:, 2]
    excess = np.maximum(len_a + len_b - max_num_tokens, 0)
    # Trimming the longer side first levels the two, then they alternate B, A, B, ...
    first = np.minimum(np.abs(len_a - len_b), excess)
    rest = excess - first
    cut_a = np.where(len_a > len_b, first, 0) + rest // 2
    cut_b = excess - cut_a
    for cut, start, end in ((cut_a, 0, 1), (cut_b, 2, 3)):
        from_front = np_rng.binomial(cut, 0.5)
        spans[:, start] += from_front
        spans[:, end] -= cut - from_front
    return spans


# ----------------------------------------------------------------------------- masking

@dataclass
class Batch:
    """Instances of one shard as arrays in NVIDIA's HDF5 schema."""
    input_ids: np.ndarray
    input_mask: np.ndarray
    segment_ids: np.ndarray
    masked_lm_positions: np.ndarray
    masked_lm_ids: np.ndarray
    next_sentence_labels: np.ndarray


def assemble_pairs(flat, spans, max_seq_length, cls_id, sep_id):
    """[CLS] A [SEP] B [SEP], zero-padded: (input_ids, input_mask, segment_ids)."""
    len_a = (spans[:, 1] - spans[:, 0])[:, None]
    len_b = (spans[:, 3] - spans[:, 2])[:, None]
    position = np.arange(max_seq_length)[None, :]
    in_a = (position >= 1) & (position <= len_a)
    in_b = (position >= len_a + 2) & (position < len_a + 2 + len_b)
    source = np.where(in_a, spans[:, :1] + position - 1, spans[:, 2:3] + position - len_a - 2)
    input_ids = np.where(in_a | in_b, flat[np.clip(source, 0, len(flat) - 1)], 0)
    input_ids[:, 0] = cls_id
    length = len_a + len_b + 3
    input_ids[(position == len_a + 1) | (position == length - 1)] = sep_id
    input_mask = position < length
    segment_ids = (position >= len_a + 2) & input_mask
    return input_ids.astype(np.int32), input_mask.astype(np.int8), segment_ids.astype(np.int8)


# ----------------------------------------------------------------------------- shards

@functools.lru_cache(maxsize=1)
def _tokenizer_for(options):
    """One tokenizer per worker process, built on first use (not inherited via fork); the
    casing was checked once, in validate."""
    return FullTokenizer(options.vocab_file, options.do_lower_case,
                         use_fast=None if options.use_fast else False, check_casing=False)


def create_pairs(text, shard_index, options):
    """Text of one shard -> (flat tokens, pairs [N, 5] of a_start, a_end, b_start, b_end,
    is_random_next, shuffled and truncated, the document count, a numpy Generator)."""
    seed = options.random_seed * 1_000_003 + shard_index
    rng, np_rng = random.Random(seed), np.random.default_rng(seed)
    flat, documents = tokenize_documents(text, _tokenizer_for(options))
    if not documents:
        return flat, np.zeros((0, 5), dtype=np.int64), 0, np_rng
    rng.shuffle(documents)
    max_num_tokens = options.max_seq_length - 3
    pairs = [pair for _ in range(options.dupe_factor) for index in range(len(documents))
             for pair in create_instances_from_document(documents, index, max_num_tokens,
                                                        options.short_seq_prob, rng)]
    rng.shuffle(pairs)
    pairs = np.array(pairs, dtype=np.int64)
    pairs[:, :4] = truncate_pairs(pairs[:, :4], max_num_tokens, np_rng)
    return flat, pairs, len(documents), np_rng


def mask_pairs(flat, pairs, options, vocab, is_subword, np_rng):
    """Pairs -> a Batch of assembled, masked instances."""
    input_ids, input_mask, segment_ids = assemble_pairs(
        flat, pairs[:, :4], options.max_seq_length, vocab["[CLS]"], vocab["[SEP]"])
    positions, valid = choose_masked_positions(input_ids, input_mask, options,
                                               [vocab["[CLS]"], vocab["[SEP]"]], is_subword,
                                               np_rng)
    masked_lm_ids = apply_masks(input_ids, positions, valid, options, vocab["[MASK]"],
                                len(is_subword), np_rng)
    return Batch(input_ids, input_mask, segment_ids, positions.astype(np.int32),
                 masked_lm_ids, pairs[:, 4].astype(np.int8))


SCHEMA = {  # NVIDIA's on-disk dtypes
    "input_ids": "i4", "input_mask": "i1", "segment_ids": "i1",
    "masked_lm_positions": "i4", "masked_lm_ids": "i4", "next_sentence_labels": "i1",
}
BLOCK = 8192  # instances assembled at a time: bounds the [N, max_seq_length] temporaries


def write_shard(flat, pairs, options, path, np_rng):
    """Masks and writes the pairs in blocks, atomically; no timestamps, so equal data gives
    equal bytes. Returns (tokens, masked tokens)."""
    vocab = _tokenizer_for(options).vocab
    is_subword = subword_flags(vocab)
    n, tokens, masked = len(pairs), 0, 0
    widths = {"input_ids": options.max_seq_length, "input_mask": options.max_seq_length,
              "segment_ids": options.max_seq_length,
              "masked_lm_positions": options.max_predictions_per_seq,
              "masked_lm_ids": options.max_predictions_per_seq, "next_sentence_labels": None}
    with atomic_path(path) as temporary, h5py.File(temporary, "w") as f:
        datasets = {}
        for name, dtype in SCHEMA.items():
            shape = (n,) if widths[name] is None else (n, widths[name])
            datasets[name] = f.create_dataset(
                name, shape=shape, dtype=dtype, compression="gzip", compression_opts=1,
                shuffle=True, track_times=False, chunks=(min(n, 2048),) + shape[1:])
        for start in range(0, n, BLOCK):
            batch = mask_pairs(flat, pairs[start:start + BLOCK], options, vocab, is_subword,
                               np_rng)
            for name, array in vars(batch).items():
                datasets[name][start:start + len(array)] = array
            tokens += int(batch.input_mask.sum())
            masked += int((batch.masked_lm_positions > 0).sum())
    return tokens, masked


def shard_path(output_file, shard_index, single):
    """--output_file itself for one shard, else <stem>_<index>.<suffix>; a name without a
    suffix gets .hdf5 either way (run_pretraining.py reads *.hdf5 and *.h5 files only)."""
    output_file = Path(output_file)
    suffix = output_file.suffix or ".hdf5"
    if single:
        return output_file.with_suffix(suffix)
    return output_file.with_name(f"{output_file.stem}_{shard_index:05d}{suffix}")


def process_shard(text, shard_index, options, output_file, single):
    """Worker entry: creates, writes and summarises one shard."""
    flat, pairs, documents, np_rng = create_pairs(text, shard_index, options)
    unknown = int(np.count_nonzero(flat == _tokenizer_for(options).vocab["[UNK]"]))
    summary = {"documents": documents, "instances": len(pairs), "tokens": 0, "masked": 0,
               "text_tokens": len(flat), "unknown": unknown, "path": None}
    if len(pairs):
        path = shard_path(output_file, shard_index, single)
        summary["tokens"], summary["masked"] = write_shard(flat, pairs, options, path, np_rng)
        summary["path"] = str(path)
    return summary


# ----------------------------------------------------------------------------- main

def _init_worker(parent_pid):
    utils.die_with_parent(parent_pid)
    # The processes already use every core; the tokenizer's own threads would oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def run_shards(shards, options, args, single, progress):
    """Runs process_shard over the stream, at most two shards per worker in flight."""
    num_workers = args.num_workers or len(os.sched_getaffinity(0))
    counts = ("documents", "instances", "tokens", "masked", "text_tokens", "unknown")
    totals = dict.fromkeys(counts, 0) | {"bytes": 0, "files": []}

    def record(result, size):
        for key in counts:
            totals[key] += result[key]
        totals["bytes"] += size
        if result["path"]:
            totals["files"].append(result["path"])
        progress.update(size, instances=f"{totals['instances']:,}")

    if num_workers == 1:
        for index, (text, size) in enumerate(shards):
            record(process_shard(text, index, options, args.output_file, single), size)
        return totals
    # fork: a worker's parent is this process, which utils.die_with_parent checks.
    with ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("fork"),
                             initializer=_init_worker, initargs=(os.getpid(),)) as pool:
        pending = deque()
        for index, (text, size) in enumerate(shards):
            pending.append((pool.submit(process_shard, text, index, options,
                                        args.output_file, single), size))
            if len(pending) >= 2 * num_workers:
                future, size = pending.popleft()
                record(future.result(), size)
        while pending:
            future, size = pending.popleft()
            record(future.result(), size)
    return totals


def summarize(totals, seconds, vocab_file):
    if totals["instances"] == 0:
        raise ValueError("the input holds no text: no document produced an instance "
                         "(expected one sentence per line, a blank line between documents)")
    megabytes = totals["bytes"] / 1e6
    logger.info("wrote %d file(s): %s%s", len(totals["files"]), totals["files"][0],
                " ..." if len(totals["files"]) > 1 else "")
    logger.info("documents %s, instances %s, tokens %s, masked fraction %.4f, "
                "%.1f s, %.2f MB of text, %.2f MB/s",
                f"{totals['documents']:,}", f"{totals['instances']:,}", f"{totals['tokens']:,}",
                totals["masked"] / totals["tokens"], seconds, megabytes, megabytes / seconds)
    unknown_share = totals["unknown"] / max(totals["text_tokens"], 1)
    if unknown_share > MAX_UNKNOWN_SHARE:
        logger.warning("%.1f%% of the text's tokens are [UNK] (%s of %s): --vocab_file %s does "
                       "not fit the text; is it the model's vocabulary, with the matching "
                       "--do_lower_case?", 100 * unknown_share, f"{totals['unknown']:,}",
                       f"{totals['text_tokens']:,}", vocab_file)


def files_under_prefix(output_file):
    """--output_file and the shards named after it (<stem>_<index>.<suffix>) that exist."""
    output_file = Path(output_file)
    if not output_file.parent.is_dir():
        return []
    shard_name = re.compile(rf"{re.escape(output_file.stem)}_\d{{5,}}"
                            rf"{re.escape(output_file.suffix or '.hdf5')}")
    return sorted(path for path in output_file.parent.iterdir()
                  if (path.name == output_file.name or shard_name.fullmatch(path.name))
                  and path.is_file())


def remove_shards_written_since(output_file, started):
    """After a failed run: deletes the shards it wrote (modified since `started`, a
    time.time()), so that the folder is not left holding part of this run's set beside an
    earlier run's. Returns their paths."""
    written = [path for path in files_under_prefix(output_file)
               if path.stat().st_mtime >= started]
    for path in written:
        path.unlink(missing_ok=True)
    return written


def warn_of_stale_shards(output_file, written):
    """Names files under the output prefix that this run did not write (an earlier run's
    shards): run_pretraining.py reads every HDF5 file of its --input_dir."""
    ours = {Path(path).name for path in written}
    stale = [path for path in files_under_prefix(output_file) if path.name not in ours]
    if stale:
        logger.warning("--output_file %s: %d file(s) with its prefix were not written by this "
                       "run but by an earlier one (%s%s); run_pretraining.py would read them "
                       "too: delete them, or write to a new folder", output_file, len(stale),
                       ", ".join(str(path) for path in stale[:3]),
                       " ..." if len(stale) > 3 else "")


def main(args):
    setup_logging()
    options = validate(args)
    files = expand_input_files(args.input_file)
    check_text_files(files)
    utils.check_writable_dir(Path(args.output_file).parent,
                             f"--output_file {args.output_file}: its folder")
    shard_bytes = int(args.shard_size_mb * 1e6)
    total_bytes = sum(f.stat().st_size for f in files)
    single = len(files) == 1 and total_bytes <= shard_bytes
    # File times come from the kernel's coarse clock, up to a tick behind time.time().
    start, started_at = time.monotonic(), time.time() - 0.05
    try:
        with Progress(total_bytes, "creating instances", unit="B",
                      disable=args.disable_progress_bar) as progress:
            totals = run_shards(read_shards(files, shard_bytes), options, args, single,
                                progress)
    except BaseException:
        removed = remove_shards_written_since(args.output_file, started_at)
        if removed:
            logger.error("removed the %d shard(s) this run had written (%s%s): a part of the "
                         "set would be read beside earlier files", len(removed), removed[0],
                         " ..." if len(removed) > 1 else "")
            warn_of_stale_shards(args.output_file, [])  # what an earlier run left, if anything
        raise
    summarize(totals, time.monotonic() - start, args.vocab_file)
    warn_of_stale_shards(args.output_file, totals["files"])
    return totals


if __name__ == "__main__":
    logging.captureWarnings(True)
    utils.run_entry_point(main, parse_args)
