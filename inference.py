"""Answers one question about a context with a fine-tuned question-answering BERT.

    python inference.py --bert_model bert-large-uncased --init_checkpoint results/SQuAD/pytorch_model.bin \\
        --config_file bert_configs/large.json --vocab_file vocab.txt \\
        --question "Who wrote Moby-Dick?" --context "Moby-Dick is an 1851 novel by Herman Melville."

Prints the best answer; with --n_best_size N > 1 also the N best answers with their
probabilities as JSON. A long context (or --context_file) is cut into overlapping windows
exactly as run_squad.py does, and the answer decoding is run_squad's (squad.py). Without
--question and --context it answers a built-in sample question.

Deliberate deviations from NVIDIA's inference.py: windows with --doc_stride instead of a
single truncated window, run through the model 64 at a time; the SQuAD code is shared with
run_squad.py, not pasted; --bf16, and --tf32 as in the training scripts (without a precision
flag: true fp32). A binary or non-UTF-8 --context_file is an error naming it; a text of which
more than 5% of the tokens are [UNK] is warned about (wrong --vocab_file or --do_lower_case).
--question and --context go together: NVIDIA's fills either one from its sample (ours is
its own), which answers a question about the wrong text.
"""

import argparse
import json

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
    parser.add_argument("--do_lower_case", action=argparse.BooleanOptionalAction, default=None,
                        help="lower-case input (default: as an --init_checkpoint directory's "
                             "tokenizer_config.json says, else from --bert_model)")
    parser.add_argument("--question", help="with --context or --context_file; leave all "
                                           "three out for a built-in sample question")
    context = parser.add_mutually_exclusive_group()
    context.add_argument("--context", help="the text that holds the answer")
    context.add_argument("--context_file", help="a UTF-8 text file that holds the answer")
    parser.add_argument("--max_seq_length", type=int, default=384)
    parser.add_argument("--doc_stride", type=utils.positive_int, default=128)
    parser.add_argument("--max_query_length", type=utils.positive_int, default=64)
    parser.add_argument("--n_best_size", type=utils.positive_int, default=1,
                        help="> 1: also print that many answers with probabilities")
    parser.add_argument("--max_answer_length", type=utils.positive_int, default=30)
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
    parser.add_argument("--seed", type=int, help="accepted for compatibility: inference "
                                                 "draws nothing at random")
    parser.add_argument("--verbose_logging", action="store_true",
                        help="accepted for compatibility")
    parser.add_argument("--local_rank", "--local-rank", type=int,
                        help="accepted for compatibility: one process")
    return parser.parse_args(argv)


UNKNOWN_SHARE_WARNING = 0.05  # more [UNK] than this: the vocabulary does not fit the text
WINDOWS_PER_FORWARD = 64  # a long context's windows go through the model in chunks


# Asked when no question is given, as NVIDIA's inference.py has a sample of its own.
SAMPLE_QUESTION = "Which ocean does the Amazon River flow into?"
SAMPLE_CONTEXT = ("The Amazon River in South America carries more water than any other river "
                  "on Earth. It rises in the Andes mountains of Peru and flows east for about "
                  "6,400 kilometres before it reaches the Atlantic Ocean.")


def question_and_context(args):
    """The question and its context: both given, or neither (the built-in sample)."""
    has_context = args.context is not None or args.context_file is not None
    if args.question is None and not has_context:
        return SAMPLE_QUESTION, SAMPLE_CONTEXT
    if args.question is None or not has_context:
        raise ValueError("--question and --context (or --context_file) go together: pass "
                         "both, or neither for the built-in sample question")
    return args.question, read_context(args)


def read_context(args):
    if args.context is not None:
        return args.context
    try:
        return utils.read_utf8_text(args.context_file, "--context_file")
    except OSError as e:  # every bad --context_file is the same kind of error
        raise ValueError(str(e)) from None


def answer(model, tokenizer, question, context, args, device):
    """(best answer text, n-best list of {text, probability, start_logit, end_logit})."""
    examples = [squad.example_from_text(question, context)]
    features = squad.convert_examples_to_features(examples, tokenizer, args.max_seq_length,
                                                  args.doc_stride, args.max_query_length,
                                                  is_training=False)
    check_word_pieces(features, args)
    warn_if_mostly_unknown(features, args)
    tensors = squad.features_to_tensors(features, is_training=False)
    del tensors["feature_index"]
    start_logits, end_logits = [], []
    for first in range(0, len(features), WINDOWS_PER_FORWARD):
        chunk = {k: v[first:first + WINDOWS_PER_FORWARD].to(device) for k, v in tensors.items()}
        with torch.no_grad(), utils.autocast(utils.precision_of(args), device):
            starts, ends = model(**chunk)
        start_logits += starts.float().cpu()
        end_logits += ends.float().cpu()
    results = [squad.RawResult(f.unique_id, s.tolist(), e.tolist())
               for f, s, e in zip(features, start_logits, end_logits)]
    predictions, nbest, _ = squad.get_answers(
        examples, features, results, args.n_best_size, args.max_answer_length,
        finetuning.do_lower_case(args), args.version_2_with_negative,
        args.null_score_diff_threshold)
    qas_id = examples[0].qas_id
    return predictions[qas_id], nbest[qas_id]


def check_word_pieces(features, args):
    """Refuses a question or context that the tokenizer reduces to nothing (only spaces,
    control or format characters such as U+200B), as an empty one is: the model would
    answer a question it was never shown."""
    context_flag = "--context" if args.context is not None else "--context_file"
    if not features:  # a context without word pieces makes no window
        raise ValueError(f"{context_flag} holds no text the tokenizer keeps (only spaces, "
                         f"control or format characters): pass the passage to answer from")
    if features[0].tokens[1] == "[SEP]":  # [CLS] [SEP]: no question between them
        raise ValueError("--question holds no text the tokenizer keeps (only spaces, control "
                         "or format characters): pass the text to ask about the context")


def unknown_share(features):
    """(number of [UNK], number of tokens) over the question and the context, each context
    token counted once (in its max-context window) although windows overlap."""
    if not features:
        return 0, 0
    first_doc_position = min(features[0].token_to_orig_map)
    tokens = features[0].tokens[1:first_doc_position - 1]        # [CLS] question [SEP]
    for feature in features:
        tokens += [feature.tokens[p] for p, is_max in feature.token_is_max_context.items()
                   if is_max]
    return tokens.count("[UNK]"), len(tokens)


def warn_if_mostly_unknown(features, args):
    """Many [UNK] tokens mean the model reads little of the text: the vocabulary does not
    fit it, or lower-casing does not fit the vocabulary (a cased vocab lower-cased)."""
    unknown, total = unknown_share(features)
    if total and unknown / total > UNKNOWN_SHARE_WARNING:
        utils.logger.warning(
            "%d of %d question and context tokens (%.0f%%) are [UNK]: the vocabulary does not "
            "fit this text; check that --vocab_file %s is the model's and --do_lower_case "
            "(%s here) matches it", unknown, total, 100 * unknown / total, args.vocab_file,
            "on" if finetuning.do_lower_case(args) else "off")


def print_answer(best, nbest, n_best_size):
    """The answer line (the Triton client prints the same), and the n-best list if asked."""
    print(f"Answer: {best}" if best else "Answer: (no answer)")
    if n_best_size > 1:
        print(json.dumps(nbest, indent=2))


def main(args):
    utils.setup_logging()
    question, context = question_and_context(args)
    finetuning.resolve_model_files(args)
    utils.check_precision_args(args)
    utils.set_matmul_precision(utils.precision_of(args))
    device = torch.device("cuda" if torch.cuda.is_available() and not args.no_cuda else "cpu")
    utils.warn_if_emulated(utils.precision_of(args), device)
    tokenizer = FullTokenizer(args.vocab_file, finetuning.do_lower_case(args))
    model = finetuning.load_model(BertForQuestionAnswering, args, device,
                                  will_train=False).eval()
    best, nbest = answer(model, tokenizer, question, context, args, device)
    print_answer(best, nbest, args.n_best_size)
    return best, nbest


if __name__ == "__main__":
    utils.run_entry_point(main, parse_args)
