"""Fine-tunes BERT for extractive question answering (SQuAD v1.1 / v2.0), predicts answers
and scores them as the official evaluation scripts do.

    python run_squad.py --do_train --do_predict --do_eval --train_file train-v1.1.json \\
        --predict_file dev-v1.1.json --init_checkpoint results/checkpoints/ckpt_8601.pt \\
        --config_file bert_configs/large.json --vocab_file vocab.txt --do_lower_case \\
        --output_dir results/SQuAD --bf16
    python run_squad.py --do_eval --predict_file dev-v1.1.json \\
        --predictions_file results/SQuAD/predictions.json --output_dir results/SQuAD

Outputs in --output_dir: predictions.json ({id: answer}), nbest_predictions.json,
null_odds.json (v2.0), pytorch_model.bin + config.json after training, dllogger.json.
--do_eval prints one JSON line as the official scripts do ({"exact_match": .., "f1": ..}).

Deliberate deviations from NVIDIA's run_squad.py: see finetuning.py (optimizer, clipping)
and squad.py (reader checks, decoding fixes, in-process evaluation instead of a subprocess
running evaluate-v1.1.py). Training features are cached as tensors (not a pickle) in
--cache_dir (default: beside --train_file), with a digest of --train_file's content: a
replaced file rebuilds them, as does a damaged cache (with a warning); a cache that cannot
be written is a warning. Prediction runs on rank 0. Every input file the chosen modes read
and --output_dir are checked before any work, and --predict_file is read before training.
"""

import argparse
import hashlib
import json
import math
from pathlib import Path

import torch

import finetuning
import squad
import utils
from model import BertForQuestionAnswering
from utils import logger


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--train_file", help="SQuAD JSON for training, e.g. train-v1.1.json")
    parser.add_argument("--predict_file", help="SQuAD JSON to answer, e.g. dev-v1.1.json")
    parser.add_argument("--do_train", action="store_true")
    parser.add_argument("--do_predict", action="store_true", help="answer --predict_file")
    parser.add_argument("--do_eval", action="store_true",
                        help="score the predictions against --predict_file")
    parser.add_argument("--predictions_file", default=None,
                        help="with --do_eval and no --do_predict: score this file, no model")
    parser.add_argument("--max_seq_length", type=int, default=384)
    parser.add_argument("--doc_stride", type=utils.positive_int, default=128,
                        help="tokens between the starts of overlapping context windows")
    parser.add_argument("--max_query_length", type=utils.positive_int, default=64)
    parser.add_argument("--predict_batch_size", type=int, default=8)
    parser.add_argument("--n_best_size", type=utils.positive_int, default=20)
    parser.add_argument("--max_answer_length", type=utils.positive_int, default=30)
    parser.add_argument("--version_2_with_negative", action="store_true",
                        help="SQuAD 2.0: questions may have no answer")
    parser.add_argument("--null_score_diff_threshold", type=float, default=0.0,
                        help="v2.0: answer nothing when null minus best score exceeds this")
    parser.add_argument("--cache_dir", default=None,
                        help="where training features are cached (default: beside the file)")
    parser.add_argument("--skip_cache", action="store_true", help="do not write the cache")
    parser.add_argument("--eval_script", help="accepted for compatibility: --do_eval scores "
                                              "with the official v1.1/v2.0 metrics built in")
    parser.add_argument("--verbose_logging", action="store_true",
                        help="accepted for compatibility")
    parser.add_argument("--use_env", action="store_true", help="accepted for compatibility")
    parser.add_argument("--profile", action="store_true", help="accepted for compatibility")
    finetuning.add_finetuning_args(parser, learning_rate=5e-5, epochs=3.0, batch_size=32)
    return parser.parse_args(argv)


def check_modes(args):
    if not (args.do_train or args.do_predict or args.do_eval):
        raise ValueError("nothing to do: pass at least one of --do_train, --do_predict, --do_eval")
    if args.do_train and not args.train_file:
        raise ValueError("--do_train needs --train_file")
    if (args.do_predict or args.do_eval) and not args.predict_file:
        raise ValueError("--do_predict and --do_eval need --predict_file")
    if args.do_eval and not args.do_predict and not args.predictions_file:
        raise ValueError("--do_eval without --do_predict needs --predictions_file")
    if args.predictions_file and (args.do_train or args.do_predict or not args.do_eval):
        raise ValueError("--predictions_file scores an existing file and goes with --do_eval "
                         "alone; with --do_predict the predictions are written to "
                         "<output_dir>/predictions.json and scored from there")


def check_input_files(args):
    """Every file the chosen modes read exists, before any work: a missing --predict_file
    found after training would lose the run."""
    needed = [("--train_file", args.train_file, args.do_train, "a SQuAD JSON file"),
              ("--predict_file", args.predict_file, args.do_predict or args.do_eval,
               "a SQuAD JSON file"),
              ("--predictions_file", args.predictions_file, bool(args.predictions_file),
               "a predictions.json written by --do_predict")]
    for flag, path, used, what in needed:
        if used and not Path(path).is_file():
            raise FileNotFoundError(f"{flag} {path} does not exist or is not a file: pass the "
                                    f"path of {what}")
    if args.do_eval and not args.version_2_with_negative:  # on every rank, before training
        squad.check_v1_scorable(squad.load_squad_json(args.predict_file, "--predict_file"),
                                f"--predict_file {args.predict_file}")


# ----------------------------------------------------------------------------- training

def cache_path(args):
    """The feature cache's name holds every setting the features depend on: the windowing
    flags, lower-casing, SQuAD 2.0 (which keeps the unanswerable questions) and a digest of
    the vocabulary's content. The training file's content is checked against the digest
    stored in the cache (see load_cached_features)."""
    train_file = Path(args.train_file)
    folder = Path(args.cache_dir) if args.cache_dir else train_file.parent
    lower = int(finetuning.do_lower_case(args))
    version = "v2" if args.version_2_with_negative else "v1"
    vocab = file_digest(args.vocab_file)[:12]
    return folder / (f"{train_file.name}_{Path(args.bert_model).name}_{args.max_seq_length}_"
                     f"{args.doc_stride}_{args.max_query_length}_{lower}_{version}_{vocab}"
                     ".features.pt")


def file_digest(path, block_bytes=1 << 20):
    """sha256 of a file, read in blocks (hashlib.file_digest is Python 3.11's; NGC's 24.10
    PyTorch image has 3.10)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(block_bytes):
            digest.update(block)
    return digest.hexdigest()


def read_examples(path, is_training, args):
    return squad.read_squad_examples(path, is_training,
                                     version_2_with_negative=args.version_2_with_negative)


def read_features(examples, is_training, args, tokenizer):
    """(features, model-input tensors) of SQuAD examples, windowed per the flags."""
    features = squad.convert_examples_to_features(examples, tokenizer, args.max_seq_length,
                                                  args.doc_stride, args.max_query_length,
                                                  is_training)
    tensors = squad.features_to_tensors(features, is_training)
    del tensors["feature_index"]  # prediction keeps the order; training needs no map back
    return features, tensors


def training_tensors(args, tokenizer, writes_cache=True):
    """Training features as tensors, from the cache when it was made with these settings
    from this content of --train_file; writes_cache: this process may write it (one rank
    does: each would write the same gigabytes)."""
    path = cache_path(args)
    digest = file_digest(args.train_file)
    tensors = load_cached_features(path, digest, args)
    if tensors is not None:
        return tensors
    examples = read_examples(args.train_file, True, args)
    features, tensors = read_features(examples, True, args, tokenizer)
    logger.info("%d training questions, %d features", len(examples), len(features))
    if writes_cache and not args.skip_cache:
        save_cached_features(path, tensors, digest)
    return tensors


CACHED_TENSORS = ("input_ids", "token_type_ids", "attention_mask", "start_positions",
                  "end_positions")


def load_cached_features(path, digest, args):
    """The cached tensors, or None (with a warning saying why) when the cache is absent,
    unreadable, incomplete, or made from another content of --train_file."""
    if not path.is_file():
        return None
    try:
        cache = torch.load(path, weights_only=True)
    except Exception as error:  # a damaged file raises any of a dozen types inside torch
        logger.warning("the feature cache %s cannot be read (%s: %s): rebuilding it from "
                       "--train_file", path, type(error).__name__, error)
        return None
    recorded = cache.get("train_file_sha256") if isinstance(cache, dict) else None
    if recorded is None:
        logger.warning("the feature cache %s does not record which --train_file content it "
                       "was made from (an older cache): rebuilding it", path)
        return None
    if recorded != digest:
        logger.warning("the feature cache %s was made from another version of --train_file "
                       "%s (its content changed since): rebuilding it", path, args.train_file)
        return None
    tensors = cache.get("tensors")
    if not _complete_features(tensors, args.max_seq_length):
        logger.warning("the feature cache %s is incomplete: rebuilding it from --train_file",
                       path)
        return None
    logger.info("loading cached training features from %s", path)
    return tensors


def _complete_features(tensors, max_seq_length):
    if not isinstance(tensors, dict) or set(tensors) != set(CACHED_TENSORS):
        return False
    if not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        return False
    rows = {len(t) for t in tensors.values()}
    return len(rows) == 1 and tensors["input_ids"].shape[1:] == (max_seq_length,)


def save_cached_features(path, tensors, digest):
    """Writes the cache atomically; a folder that cannot take it only costs the next run the
    conversion, so that is a warning, not an error after the work is done."""
    try:
        with utils.atomic_path(path) as temporary:
            torch.save({"train_file_sha256": digest, "tensors": tensors}, temporary)
    except OSError as error:
        logger.warning("cannot write the feature cache %s (%s): training goes on without it; "
                       "pass a writable --cache_dir, or --skip_cache", path,
                       error.strerror or error)


# ----------------------------------------------------------------------------- prediction

def predict_answers(model, examples, args, tokenizer, device):
    """Answers every question of --predict_file (its examples, read before training);
    returns (predictions, null_odds, timing)."""
    features, tensors = read_features(examples, False, args, tokenizer)
    (start_logits, end_logits), timing = finetuning.predict(
        model, finetuning.named_dataset(tensors), args.predict_batch_size, args, device,
        per_token=True)
    results = [squad.RawResult(f.unique_id, s.tolist(), e.tolist())
               for f, s, e in zip(features, start_logits, end_logits)]
    predictions, nbest, null_odds = squad.get_answers(
        examples, features, results, args.n_best_size, args.max_answer_length,
        finetuning.do_lower_case(args), args.version_2_with_negative,
        args.null_score_diff_threshold)
    output_dir = Path(args.output_dir)
    finetuning.write_json(output_dir / "predictions.json", predictions)
    finetuning.write_json(output_dir / "nbest_predictions.json", nbest)
    if args.version_2_with_negative:
        finetuning.write_json(output_dir / "null_odds.json", null_odds)
    return predictions, null_odds, timing


def score(args, predictions, null_odds):
    """The official scripts' metrics, printed as their one JSON line. The headline scores
    the predictions as written: they have had --null_score_diff_threshold applied, so the
    odds only serve the best_* threshold search, never a second cut-off."""
    metrics = squad.evaluate(squad.load_squad_json(args.predict_file), predictions, null_odds,
                             version_2=args.version_2_with_negative, na_prob_thresh=math.inf,
                             source=args.predict_file)
    print(json.dumps(metrics))
    return metrics


def read_question_map(path, values, what):
    """A JSON file holding {question id: value of type `values`}, or an error naming it."""
    expected = (f"a JSON object of question id to "
                f"{values.__name__ if isinstance(values, type) else 'number'} (the official "
                "predictions format)")
    content = utils.read_json_object(path, what, expected)
    if not all(isinstance(v, values) and not isinstance(v, bool) for v in content.values()):
        raise ValueError(f"{what} {path}: expected {expected}")
    return content


def score_predictions_file(args):
    """--do_eval --predictions_file: no model, just the scores of an existing file (and, for
    SQuAD 2.0, of the null_odds.json beside it when there is one)."""
    predictions = read_question_map(args.predictions_file, str, "--predictions_file")
    null_odds = None
    odds_file = Path(args.predictions_file).with_name("null_odds.json")
    if args.version_2_with_negative and odds_file.is_file():
        null_odds = read_question_map(odds_file, (int, float), "null odds file")
    return score(args, predictions, null_odds)


def main(args):
    check_modes(args)
    check_input_files(args)
    if args.do_eval and not args.do_predict:
        return score_predictions_file(args)
    utils.check_precision_args(args)
    utils.check_writable_dir(args.output_dir, "--output_dir")
    distributed, tokenizer, metrics = finetuning.start_run(args)
    model = finetuning.load_model(BertForQuestionAnswering, args, distributed.device,
                                  will_train=args.do_train)
    # Read before training, so that a malformed --predict_file fails now, not after it.
    predict_examples = (read_examples(args.predict_file, False, args)
                        if args.do_predict and distributed.is_main else None)

    results = {}
    if args.do_train:
        dataset = finetuning.named_dataset(training_tensors(args, tokenizer,
                                                            distributed.is_main))
        results.update(finetuning.train(model, dataset, args, distributed, metrics))
        if distributed.is_main:
            finetuning.save_model(model, args)
    # Prediction is rank 0's alone: waiting for it at the group's last barrier, the other
    # ranks would time out (30 minutes) on a long one, and torchrun would stop rank 0 too.
    utils.end_distributed(distributed)
    if args.do_predict and distributed.is_main:
        predictions, null_odds, timing = predict_answers(model, predict_examples, args,
                                                         tokenizer, distributed.device)
        results.update(timing)
        if args.do_eval:
            results.update(score(args, predictions, null_odds))
    metrics.log((), finetuning.with_nvidia_summary_names(results))
    metrics.close()
    return results


if __name__ == "__main__":
    utils.run_entry_point(main, parse_args)
