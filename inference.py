"""Answers one question about a context with a fine-tuned question-answering BERT.

    python inference.py --bert_model bert-large-uncased --init_checkpoint results/SQuAD/pytorch_model.bin \\
        --config_file bert_configs/large.json --vocab_file vocab.txt \\
        --question "Who wrote Moby-Dick?" --context "Moby-Dick is an 1851 novel by Herman Melville."

Prints the best answer; with --n_best_size N > 1 also the N best answers with their
probabilities as JSON. A long context (or --context_file) is cut into overlapping windows
exactly as run_squad.py does, and the answer decoding is run_squad's (squad.py).

Deliberate deviations from NVIDIA's inference.py: windows with --doc_stride instead of a
single truncated window; the SQuAD code is shared with run_squad.py, not pasted; --bf16, and
--tf32 as in the training scripts (without a precision flag: true fp32).
"""

import argparse
import json
from pathlib import Path

import torch

import finetuning
import squad
import utils
from model import BertForQuestionAnswering
from tokenization import FullTokenizer


def add_question_args(parser):
    """The question, its context, and how they are windowed and decoded; shared with
    triton/run_squad_client.py, which sends the same windows to a Triton server."""
    parser.add_argument("--bert_model", default="bert-large-uncased",
                        help="model name: selects lower-casing when --do_lower_case is not given")
    parser.add_argument("--do_lower_case", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--question", required=True)
    context = parser.add_mutually_exclusive_group(required=True)
    context.add_argument("--context", help="the text that holds the answer")
    context.add_argument("--context_file", help="a UTF-8 text file that holds the answer")
    parser.add_argument("--max_seq_length", type=int, default=384)
    parser.add_argument("--doc_stride", type=int, default=128)
    parser.add_argument("--max_query_length", type=int, default=64)
    parser.add_argument("--n_best_size", type=int, default=1,
                        help="> 1: also print that many answers with probabilities")
    parser.add_argument("--max_answer_length", type=int, default=30)
    parser.add_argument("--version_2_with_negative", action="store_true",
                        help="the model may answer that there is no answer")
    parser.add_argument("--null_score_diff_threshold", type=float, default=-11.0)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--init_checkpoint", required=True,
                        help="a fine-tuned question-answering model: ours, NVIDIA's or a "
                             "Hugging Face directory")
    parser.add_argument("--config_file", default=None, help="BERT config JSON")
    parser.add_argument("--vocab_file", default=None, help="WordPiece vocabulary")
    add_question_args(parser)
    utils.add_precision_args(parser)
    parser.add_argument("--no_cuda", action="store_true", help="use the CPU even with a GPU")
    return parser.parse_args(argv)


def read_context(args):
    if args.context is not None:
        return args.context
    try:
        return Path(args.context_file).read_text(encoding="utf-8")
    except OSError as e:
        raise ValueError(f"--context_file {args.context_file}: {e.strerror}") from None


def answer(model, tokenizer, question, context, args, device):
    """(best answer text, n-best list of {text, probability, start_logit, end_logit})."""
    examples = [squad.example_from_text(question, context)]
    features = squad.convert_examples_to_features(examples, tokenizer, args.max_seq_length,
                                                  args.doc_stride, args.max_query_length,
                                                  is_training=False)
    tensors = squad.features_to_tensors(features, is_training=False)
    del tensors["feature_index"]
    with torch.no_grad(), utils.autocast(utils.precision_of(args), device):
        start_logits, end_logits = model(**{k: v.to(device) for k, v in tensors.items()})
    results = [squad.RawResult(f.unique_id, s.float().tolist(), e.float().tolist())
               for f, s, e in zip(features, start_logits.cpu(), end_logits.cpu())]
    predictions, nbest, _ = squad.get_answers(
        examples, features, results, args.n_best_size, args.max_answer_length,
        finetuning.do_lower_case(args), args.version_2_with_negative,
        args.null_score_diff_threshold)
    qas_id = examples[0].qas_id
    return predictions[qas_id], nbest[qas_id]


def print_answer(best, nbest, n_best_size):
    """The answer line (the Triton client prints the same), and the n-best list if asked."""
    print(f"Answer: {best}" if best else "Answer: (no answer)")
    if n_best_size > 1:
        print(json.dumps(nbest, indent=2))


def main(args):
    utils.setup_logging()
    context = read_context(args)
    finetuning.resolve_model_files(args)
    utils.check_precision_args(args)
    utils.set_matmul_precision(utils.precision_of(args))
    device = torch.device("cuda" if torch.cuda.is_available() and not args.no_cuda else "cpu")
    tokenizer = FullTokenizer(args.vocab_file, finetuning.do_lower_case(args))
    model = finetuning.load_model(BertForQuestionAnswering, args, device,
                                  will_train=False).eval()
    best, nbest = answer(model, tokenizer, args.question, context, args, device)
    print_answer(best, nbest, args.n_best_size)
    return best, nbest


if __name__ == "__main__":
    utils.run_entry_point(main, parse_args)
