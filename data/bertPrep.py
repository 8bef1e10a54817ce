"""Prepares BERT's data sets step by step: download, text_formatting, sharding,
create_hdf5_files.

    python data/bertPrep.py --action download --dataset squad
    python data/bertPrep.py --action download --dataset google_pretrained_weights
    python data/bertPrep.py --action download --dataset wikicorpus_en
    python data/bertPrep.py --action text_formatting --dataset wikicorpus_en
    python data/bertPrep.py --action sharding --dataset wikicorpus_en
    python data/bertPrep.py --action create_hdf5_files --dataset wikicorpus_en \\
        --max_seq_length 128 --max_predictions_per_seq 20

Folders under --working_dir (default $BERT_PREP_WORKING_DIR, else data/ in the repo), named
as NVIDIA's so that its scripts' paths hold:
    download/<dataset>/...                           downloads (see data/downloader.py)
    extracted/wikicorpus_en/                         WikiExtractor output (or LDDL's
                                                     wikipedia/extracted/en/)
    formatted_one_article_per_line/<dataset>_one_article_per_line.txt
    sharded_training_shards_<N>_test_shards_<M>_fraction_<f>/<dataset>/
        <dataset>_training_<i>.txt, <dataset>_test_<i>.txt
    hdf5_lower_case_<l>_seq_len_<S>_max_pred_<P>_masked_lm_prob_<p>_random_seed_<r>_
    dupe_factor_<d>/<dataset>/
        the training HDF5 files: pass this folder to run_pretraining.py --input_dir

Deliberate deviations from NVIDIA's bertPrep.py:
- HDF5 files of the test shards go to the sibling folder <dataset>_test/, so that
  --input_dir holds training data only (run_pretraining.py reads every .hdf5 in it).
- Text shard i is turned into HDF5 with --random_seed + i, so that shards do not share one
  random stream; create_pretraining_data.py may split a large shard into
  <name>_<k:05d>.hdf5 files.
- Sentence splitting falls back to a rule-based splitter when NLTK's punkt data is absent
  (--segmentation_method auto, the default), so no step needs a download but `download`.
- No BookCorpus, TFRecord output or interactive JSON config generator.
- create_hdf5_files warns when --do_lower_case contradicts the vocabulary's casing.
"""

import argparse
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python data/bertPrep.py`
    sys.path.insert(0, str(REPO))

from data import downloader, sharding, text_formatting
from data.fetch import DownloadError, UnsafeArchiveError
from tokenization import load_vocab, warn_on_casing_mismatch
from utils import logger, setup_logging

ACTIONS = ("download", "text_formatting", "sharding", "create_hdf5_files")
DEFAULT_VOCAB = "download/google_pretrained_weights/uncased_L-24_H-1024_A-16/vocab.txt"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--action", required=True, choices=ACTIONS)
    parser.add_argument("--dataset", required=True,
                        help=f"download: one of {', '.join(downloader.DATASETS)}; the other "
                             f"actions: wikicorpus_en or any name given with --input_files")
    parser.add_argument("--working_dir", default=os.environ.get("BERT_PREP_WORKING_DIR",
                                                                str(REPO / "data")),
                        help="root of all data folders ($BERT_PREP_WORKING_DIR)")
    parser.add_argument("--input_files", nargs="+", default=None,
                        help="text_formatting: WikiExtractor folder; sharding: files with "
                             "one article per line (default: the previous step's output)")
    parser.add_argument("--n_training_shards", type=int, default=256)
    parser.add_argument("--n_test_shards", type=int, default=256)
    parser.add_argument("--fraction_test_set", type=float, default=0.1)
    parser.add_argument("--segmentation_method", default="auto",
                        choices=("auto", "nltk", "rules"),
                        help="sentence splitter; auto = NLTK punkt if installed, else rules")
    parser.add_argument("--n_processes", type=int, default=4,
                        help="parallel processes (sharding, WikiExtractor, HDF5 creation)")
    parser.add_argument("--random_seed", type=int, default=12345)
    parser.add_argument("--dupe_factor", type=int, default=5)
    parser.add_argument("--masked_lm_prob", type=float, default=0.15)
    parser.add_argument("--max_seq_length", type=int, default=512)
    parser.add_argument("--max_predictions_per_seq", type=int, default=20)
    parser.add_argument("--do_lower_case", type=int, default=1, choices=(0, 1))
    parser.add_argument("--vocab_file", default=None,
                        help=f"WordPiece vocabulary (default: <working_dir>/{DEFAULT_VOCAB})")
    parser.add_argument("--skip_wikiextractor", type=int, default=0, choices=(0, 1),
                        help="1: the WikiExtractor output is already in place")
    parser.add_argument("--google_models", nargs="+", default=list(downloader.GOOGLE_MODELS),
                        help="which of Google's BERT zips to download")
    parser.add_argument("--connect_timeout", type=float, default=10.0,
                        help="seconds to wait for a server to accept a download")
    parser.add_argument("--read_timeout", type=float, default=60.0,
                        help="seconds a download may stall before it fails")
    parser.add_argument("--skip_checksums", action="store_true",
                        help="accept downloads whose md5 differs from the known one")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- folders

class Folders:
    """The data folders of one configuration, named as NVIDIA's bertPrep names them."""

    def __init__(self, args):
        self.root = Path(args.working_dir)
        self.dataset = args.dataset
        self.extracted = self.root / "extracted" / args.dataset
        self.lddl_extracted = self.root / "wikipedia" / "extracted" / "en"
        self.formatted = (self.root / "formatted_one_article_per_line" /
                          f"{args.dataset}_one_article_per_line.txt")
        self.sharded = (self.root / f"sharded_training_shards_{args.n_training_shards}_test_"
                        f"shards_{args.n_test_shards}_fraction_{args.fraction_test_set}" /
                        args.dataset)
        self.hdf5 = (self.root / f"hdf5_lower_case_{args.do_lower_case}_seq_len_"
                     f"{args.max_seq_length}_max_pred_{args.max_predictions_per_seq}_masked_lm_"
                     f"prob_{args.masked_lm_prob}_random_seed_{args.random_seed}_dupe_factor_"
                     f"{args.dupe_factor}" / args.dataset)
        self.vocab = Path(args.vocab_file) if args.vocab_file else self.root / DEFAULT_VOCAB


# ----------------------------------------------------------------------------- actions

def download(args, folders):
    options = downloader.FetchOptions(args.connect_timeout, args.read_timeout,
                                      not args.skip_checksums)
    downloader.download(args.dataset, folders.root, options, args.google_models)


def format_text(args, folders):
    if args.dataset != "wikicorpus_en":
        raise ValueError(f"text_formatting knows wikicorpus_en only, not {args.dataset}; "
                         f"other corpora can go to sharding as one article per line "
                         f"(--input_files)")
    if args.input_files:
        extracted = Path(args.input_files[0])
    elif folders.lddl_extracted.is_dir() and not folders.extracted.is_dir():
        extracted = folders.lddl_extracted  # LDDL's download_wikipedia extracted it
    else:
        extracted = folders.extracted
        if not args.skip_wikiextractor:
            text_formatting.run_wikiextractor(find_dump(folders), extracted, args.n_processes)
    text_formatting.format_wikipedia(extracted, folders.formatted)


def find_dump(folders):
    candidates = [folders.root / "download" / "wikicorpus_en" / "wikicorpus_en.xml.bz2",
                  folders.root / "download" / "wikicorpus_en" / "wikicorpus_en.xml",
                  folders.root / "wikipedia" / "wikicorpus-en.xml.bz2"]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"no Wikipedia dump at {', '.join(map(str, candidates))}: run "
                            f"--action download --dataset wikicorpus_en first")


def shard(args, folders):
    input_files = args.input_files or [folders.formatted]
    missing = [str(p) for p in input_files if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"sharding input {', '.join(missing)} does not exist: run "
                                f"--action text_formatting first, or pass --input_files")
    sharding.shard_articles(input_files, folders.sharded, args.dataset, args.n_training_shards,
                            args.n_test_shards, args.fraction_test_set,
                            args.segmentation_method, args.n_processes)


def create_hdf5_files(args, folders):
    """Runs create_pretraining_data.py on every text shard, n_processes at a time."""
    if not folders.vocab.is_file():
        raise FileNotFoundError(f"vocabulary {folders.vocab} does not exist: download "
                                f"google_pretrained_weights or pass --vocab_file")
    # Once here: create_pretraining_data.py's own warning would be captured, and it names
    # its flags, not ours.
    remedies = ("pass --do_lower_case 1", "pass --do_lower_case 0")
    warn_on_casing_mismatch(load_vocab(folders.vocab), bool(args.do_lower_case),
                            str(folders.vocab), remedies)
    shards = [(path, folders.hdf5) for path in text_shards(folders, "training")]
    test_folder = folders.hdf5.with_name(f"{args.dataset}_test")
    shards += [(path, test_folder) for path in text_shards(folders, "test")]
    if not shards:
        raise FileNotFoundError(f"no text shards {args.dataset}_training_<i>.txt in "
                                f"{folders.sharded}: run --action sharding first (with the "
                                f"same --n_training_shards, --n_test_shards and "
                                f"--fraction_test_set)")
    commands = [hdf5_command(args, folders, path, out / f"{path.stem}.hdf5", args.random_seed + i)
                for i, (path, out) in enumerate(shards)]
    with ThreadPoolExecutor(max(1, args.n_processes)) as pool:
        for done, _ in enumerate(pool.map(run_command, commands), 1):
            logger.info("HDF5 files: %d of %d text shards done", done, len(commands))
    logger.info("training HDF5 files are in %s", folders.hdf5)


def text_shards(folders, split):
    paths = folders.sharded.glob(f"{folders.dataset}_{split}_*.txt")
    return sorted(paths, key=lambda p: int(p.stem.rsplit("_", 1)[1]))


def hdf5_command(args, folders, text_file, output_file, seed):
    return [sys.executable, str(REPO / "create_pretraining_data.py"),
            "--input_file", str(text_file), "--output_file", str(output_file),
            "--vocab_file", str(folders.vocab),
            "--do_lower_case" if args.do_lower_case else "--no-do_lower_case",
            "--max_seq_length", str(args.max_seq_length),
            "--max_predictions_per_seq", str(args.max_predictions_per_seq),
            "--masked_lm_prob", str(args.masked_lm_prob), "--random_seed", str(seed),
            "--dupe_factor", str(args.dupe_factor), "--num_workers", "1",
            "--disable_progress_bar"]


def run_command(command):
    # n_processes single-process jobs already fill the cores: no tokenizer threads on top.
    environment = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, check=False,
                            env=environment)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit {result.returncode}):\n"
                           f"{result.stderr[-3000:]}")
    # Its warnings ([UNK] share, earlier shards under the prefix) would die with the capture.
    for line in result.stdout.splitlines():
        if " WARNING " in line:
            logger.warning("%s: %s", Path(command[command.index("--input_file") + 1]).name,
                           line.split(" WARNING ", 1)[1])


def main(args):
    setup_logging()
    folders = Folders(args)
    {"download": download, "text_formatting": format_text, "sharding": shard,
     "create_hdf5_files": create_hdf5_files}[args.action](args, folders)


if __name__ == "__main__":
    try:
        main(parse_args())
    # A tool missing (wikiextractor, nltk's punkt) or a step that failed: its message, not a
    # traceback.
    except (DownloadError, UnsafeArchiveError, FileNotFoundError, ValueError, RuntimeError,
            subprocess.CalledProcessError) as error:
        sys.exit(f"bertPrep.py: error: {error}")
