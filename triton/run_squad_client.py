"""Asks a question about a context through a Triton server (HTTP or gRPC) serving a
question-answering BERT exported by triton/export_model.py, and prints the answer.

    triton/.venv/bin/python triton/run_squad_client.py --url 127.0.0.1:8001 --protocol grpc \\
        --model_name bert_qa --vocab_file results/triton_export/vocab.txt \\
        --question "Who wrote Moby-Dick?" --context "Moby-Dick is an 1851 novel by Herman Melville."

The work around the model is inference.py's own `answer`: the same tokenization, windows
(--max_seq_length, --doc_stride, --max_query_length) and n-best decoding (squad.py), so the
answer is the one `python inference.py` prints for the same model and flags. Only the
forward pass is replaced: the windows go to the server in batches of at most the model's
max_batch_size, with the input dtype the model declares. Without --do_lower_case (or
--no-do_lower_case) the casing is the one export_model.py recorded in tokenizer_config.json
beside --vocab_file, else the one --bert_model's name implies.

Deliberate deviations from NVIDIA's run_squad_client.py: one question from the command line
(or --context_file; neither: inference.py's sample) rather than a SQuAD file; the answer
decoding is squad.py's, not a copy; bad input (a binary --context_file, say) prints one
`error:` line, as every entry script.
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import utils  # noqa: E402 - first: hides this folder from `import triton` (see utils)
import inference  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from finetuning import do_lower_case, recorded_lower_case  # noqa: E402
from tokenization import FullTokenizer  # noqa: E402

INPUT_NAMES = ["input__0", "input__1", "input__2"]  # input_ids, segment_ids, input_mask
OUTPUT_NAMES = ["output__0", "output__1"]  # start_logits, end_logits


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--url", default=None,
                        help="host:port (default 127.0.0.1:8000 for http, :8001 for grpc)")
    parser.add_argument("--protocol", choices=["http", "grpc"], default="http")
    parser.add_argument("--model_name", default="bert")
    parser.add_argument("--model_version", default="", help="empty: the server's choice")
    parser.add_argument("--vocab_file", required=True,
                        help="the model's WordPiece vocabulary (export_model.py copies it)")
    inference.add_question_args(parser)
    # inference.answer reads the precision from these; the served model has its own.
    parser.set_defaults(fp16=False, bf16=False)
    args = parser.parse_args(argv)
    if args.url is None:
        args.url = "127.0.0.1:8000" if args.protocol == "http" else "127.0.0.1:8001"
    return args


def max_positions(config):
    """The max_position_embeddings parameter (deployer.MAX_POSITIONS_KEY) of the model's
    config as JSON; None for a model deployed without it."""
    text = config.get("parameters", {}).get("max_position_embeddings", {}).get("string_value")
    return int(text) if text else None


def triton_client(protocol, url):
    if protocol == "http":
        import tritonclient.http as client_module
    else:
        import tritonclient.grpc as client_module
    return client_module, client_module.InferenceServerClient(url)


class TritonQuestionAnswering:
    """Stands in for BertForQuestionAnswering in inference.answer: called with the window
    tensors, returns (start_logits, end_logits) computed by the server."""

    def __init__(self, protocol, url, model_name, model_version=""):
        self.module, self.client = triton_client(protocol, url)
        self.model_name, self.model_version = model_name, model_version
        as_json = {"as_json": True} if protocol == "grpc" else {}  # http gives dicts
        from tritonclient.utils import InferenceServerException
        try:
            metadata = self.client.get_model_metadata(model_name, model_version, **as_json)
            config = self.client.get_model_config(model_name, model_version, **as_json)
        except (InferenceServerException, OSError) as error:  # no server, no such model
            raise ValueError(f"--url {url} ({protocol}), --model_name {model_name}"
                             f"{f' version {model_version}' if model_version else ''}: "
                             f"{error}") from None
        config = config.get("config", config)  # grpc wraps it
        self.datatypes = {tensor["name"]: tensor["datatype"] for tensor in metadata["inputs"]}
        missing = [name for name in INPUT_NAMES if name not in self.datatypes]
        if missing:
            raise ValueError(f"model {model_name} at {url} has inputs {sorted(self.datatypes)}, "
                             f"not {INPUT_NAMES}: was it exported by triton/export_model.py?")
        self.max_batch_size = max(int(config.get("max_batch_size", 0)), 1)
        self.max_positions = max_positions(config)

    def check_window(self, max_seq_length):
        """Refuses windows longer than the model's position table before any request (the
        server would fail each one with an index error)."""
        if self.max_positions is not None and max_seq_length > self.max_positions:
            raise ValueError(f"--max_seq_length {max_seq_length} is longer than model "
                             f"{self.model_name} takes ({self.max_positions} positions): "
                             f"pass --max_seq_length {self.max_positions} or less")

    def infer(self, arrays):
        """One request: arrays (input_ids, segment_ids, input_mask) -> numpy outputs."""
        inputs = []
        for name, array in zip(INPUT_NAMES, arrays):
            datatype = self.datatypes[name]
            tensor = self.module.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array.astype(datatype.lower()))
            inputs.append(tensor)
        outputs = [self.module.InferRequestedOutput(name) for name in OUTPUT_NAMES]
        result = self.client.infer(self.model_name, inputs, model_version=self.model_version,
                                   outputs=outputs)
        return [result.as_numpy(name) for name in OUTPUT_NAMES]

    def __call__(self, input_ids, token_type_ids, attention_mask):
        arrays = [t.numpy() for t in (input_ids, token_type_ids, attention_mask)]
        starts, ends = [], []
        for begin in range(0, len(arrays[0]), self.max_batch_size):
            start, end = self.infer([a[begin:begin + self.max_batch_size] for a in arrays])
            starts.append(start)
            ends.append(end)
        return torch.from_numpy(np.concatenate(starts)), torch.from_numpy(np.concatenate(ends))

    def close(self):
        self.client.close()


def main(args):
    question, context = inference.question_and_context(args)
    if args.do_lower_case is None:
        args.do_lower_case = recorded_lower_case(Path(args.vocab_file).parent,
                                                 "the export beside --vocab_file,")
    tokenizer = FullTokenizer(args.vocab_file, do_lower_case(args))
    model = TritonQuestionAnswering(args.protocol, args.url, args.model_name,
                                    args.model_version)
    try:
        model.check_window(args.max_seq_length)
        best, nbest = inference.answer(model, tokenizer, question, context, args,
                                       torch.device("cpu"))
    finally:
        model.close()
    inference.print_answer(best, nbest, args.n_best_size)
    return best, nbest


if __name__ == "__main__":
    utils.run_entry_point(main, parse_args)
