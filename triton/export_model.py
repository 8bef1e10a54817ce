"""Exports a fine-tuned BERT (question answering or sequence classification) to ONNX and
TorchScript for Triton, and checks each export against PyTorch on fresh random inputs.

    python triton/export_model.py --task squad --init_checkpoint results/SQuAD/pytorch_model.bin \\
        --config_file bert_configs/large.json --vocab_file vocab.txt \\
        --output_dir results/triton_export --format onnx torchscript

Run it with the deployment environment (triton/setup_env.sh builds triton/.venv): the ONNX
exporter needs onnx and onnxscript, the check needs onnxruntime. The output directory gets
model.onnx (one self-contained file, opset --opset), model.pt (TorchScript), config.json,
vocab.txt, tokenizer_config.json (the casing, when known: --do_lower_case or the checkpoint
directory's; triton/run_squad_client.py reads it) and signature.json, which names every
tensor for triton/deployer.py:

    input__0  input_ids    (batch, seq)  int64 or int32 (--input_dtype)
    input__1  segment_ids  (batch, seq)
    input__2  input_mask   (batch, seq)
    output__0 start_logits (batch, seq)  float32      [squad]
    output__1 end_logits   (batch, seq)  float32      [squad]
    output__0 logits       (batch, num_labels) float32 [classification]

and, for a classifier from a Hugging Face directory, label_names: its config.json's labels
in the order of the logits (the checkpoint's own order, which run_glue.py may reorder).

Batch and sequence axes are dynamic in both formats. The check runs every export on a batch
whose size, length and padding differ from the example used to export it, and fails when
the largest absolute difference from PyTorch exceeds --atol. An export is written under a
temporary name and takes its final one only once it passes, and signature.json lists only
files that passed and belong to this checkpoint: a failed run leaves no unchecked model that
the deployer would serve. A second run into the same folder keeps the first run's other
format when the checkpoint file is unchanged (its path, size and modification time).

Deliberate deviations from NVIDIA's triton/ export (model_navigator): one script writes
both formats and the tensor signature, no navigator or TensorRT conversion, float32 only
(true fp32 unless --tf32, on a GPU --device); TorchScript is traced (not scripted); its graph
holds no device (tests/test_gpu_paths.py checks it), so Triton's libtorch backend runs it on
whichever GPU or CPU instance it loads it on, whatever --device traced it.
"""

import argparse
import contextlib
import json
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import utils  # noqa: E402,F401 - first: hides this folder from `import triton` (see utils)
import finetuning  # noqa: E402
import model as modeling  # noqa: E402
import torch  # noqa: E402
from tokenization import vocab_txt_bytes  # noqa: E402

INPUTS = [("input__0", "input_ids"), ("input__1", "segment_ids"), ("input__2", "input_mask")]
OUTPUTS = {"squad": [("output__0", "start_logits"), ("output__1", "end_logits")],
           "classification": [("output__0", "logits")]}
TRITON_TYPES = {torch.int32: "TYPE_INT32", torch.int64: "TYPE_INT64",
                torch.float32: "TYPE_FP32"}
FILE_NAMES = {"onnx": "model.onnx", "torchscript": "model.pt"}


# signature.json keys that do not tell whether an earlier export is of the same model, and
# keys that exports before them lack (such an export is judged by the rest, as then).
NOT_THE_MODEL = {"files", "do_lower_case"}
NEWER_KEYS = {"init_checkpoint_stamp", "label_names", "do_lower_case"}


class ExportMismatchError(ValueError):
    """An export whose outputs differ from PyTorch's: reported in one line, not a crash."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--task", choices=sorted(OUTPUTS), default="squad")
    parser.add_argument("--init_checkpoint", required=True,
                        help="the fine-tuned model: ours, NVIDIA's or a Hugging Face directory")
    parser.add_argument("--config_file", default=None, help="BERT config JSON")
    parser.add_argument("--vocab_file", default=None,
                        help="WordPiece vocabulary, copied beside the model for the clients")
    parser.add_argument("--do_lower_case", action=argparse.BooleanOptionalAction, default=None,
                        help="the model's casing, recorded for the clients (default: an "
                             "--init_checkpoint directory's tokenizer_config.json; else not "
                             "recorded, and the client needs the flag)")
    parser.add_argument("--num_labels", type=int, default=None,
                        help="classification only (default: the rows of the checkpoint's "
                             "classifier)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--format", nargs="+", choices=sorted(FILE_NAMES),
                        default=["onnx", "torchscript"])
    parser.add_argument("--input_dtype", choices=["int32", "int64"], default="int64",
                        help="dtype of the three inputs (NVIDIA's TensorRT models take int32)")
    parser.add_argument("--max_seq_length", type=int, default=384,
                        help="sequence length of the example the export traces")
    parser.add_argument("--batch_size", type=int, default=8,
                        help="batch size of the example the export traces")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset")
    parser.add_argument("--device", default="cpu",
                        help="device to export and check on (the exports run on any device)")
    parser.add_argument("--atol", type=float, default=1e-3,
                        help="largest absolute difference from PyTorch accepted")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tf32", action="store_true",
                        help="check on a GPU --device with TF32 matrix products (NVIDIA's "
                             "default on Ampere and later); without it: true fp32")
    return parser.parse_args(argv)


class TritonSignature(torch.nn.Module):
    """Positional (input_ids, segment_ids, input_mask) in --input_dtype -> a tuple of
    float32 outputs: the calling convention of NVIDIA's Triton models."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, segment_ids, input_mask):
        outputs = self.model(input_ids.long(), segment_ids.long(), input_mask.long())
        return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


@contextlib.contextmanager
def static_graph():
    """model.py packs the real tokens of a mostly padded batch and drops the attention mask
    of an unpadded one: branches on the data that torch.export cannot follow and
    torch.jit.trace would freeze. Exports run without them (always the mask, never packed;
    the outputs are the same, tests/test_model.py checks that)."""
    saved = modeling.TokenLayout.STATIC
    modeling.TokenLayout.STATIC = True
    try:
        yield
    finally:
        modeling.TokenLayout.STATIC = saved


def random_inputs(vocab_size, batch, seq, dtype, seed, device="cpu"):
    """(input_ids, segment_ids, input_mask): a question segment then a context segment,
    each row padded after a different length (at least one row unpadded)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, vocab_size, (batch, seq), generator=generator)
    lengths = torch.randint(2, seq + 1, (batch,), generator=generator)
    lengths[0] = seq
    positions = torch.arange(seq)[None, :]
    input_mask = (positions < lengths[:, None]).long()
    segment_ids = ((positions >= lengths[:, None] // 3) * input_mask).long()
    tensors = (input_ids * input_mask, segment_ids, input_mask)
    return tuple(t.to(dtype=dtype, device=device) for t in tensors)


def export_onnx(wrapper, example, path, task, opset):
    """One self-contained ONNX file with dynamic batch and sequence axes."""
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    with static_graph(), warnings.catch_warnings():
        # The three inputs share both axes, which the exporter reports once per input.
        warnings.filterwarnings("ignore", message="# The axis name")
        torch.onnx.export(wrapper, example, str(path), dynamo=True, external_data=False,
                          opset_version=opset, verbose=False,
                          input_names=[name for name, _ in INPUTS],
                          output_names=[name for name, _ in OUTPUTS[task]],
                          dynamic_shapes=({0: batch, 1: seq},) * len(INPUTS))


def export_torchscript(wrapper, example, path):
    with static_graph(), torch.no_grad():
        traced = torch.jit.trace(wrapper, example)
    torch.jit.save(traced, str(path))


def run_onnx(path, inputs):
    import onnxruntime
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {name: tensor.cpu().numpy() for (name, _), tensor in zip(INPUTS, inputs)}
    return [torch.from_numpy(array) for array in session.run(None, feed)]


def run_torchscript(path, inputs, device):
    loaded = torch.jit.load(str(path), map_location=device)
    with torch.no_grad():
        return [t.cpu() for t in loaded(*inputs)]


def check_export(fmt, path, wrapper, inputs, task, atol, device):
    """Prints the max abs difference of every output from PyTorch; raises past atol."""
    with torch.no_grad():
        expected = [t.cpu() for t in wrapper(*inputs)]
    found = run_onnx(path, inputs) if fmt == "onnx" else run_torchscript(path, inputs, device)
    failures = []
    for (name, field), want, got in zip(OUTPUTS[task], expected, found):
        if got.shape != want.shape:
            raise ExportMismatchError(f"{path}: {name} ({field}) has shape {tuple(got.shape)}, "
                                 f"PyTorch gives {tuple(want.shape)}")
        diff = (got.float() - want.float()).abs().max().item()
        print(f"{fmt}: {name} ({field}) max abs diff {diff:.3e} "
              f"on inputs {tuple(inputs[0].shape)} (atol {atol:g})")
        if not diff <= atol:
            failures.append(f"{name} ({field}) differs by {diff:.3e}")
    if failures:
        raise ExportMismatchError(f"{path} does not match PyTorch within --atol {atol:g}: "
                             + "; ".join(failures))


def signature(task, input_dtype, model_config, num_labels):
    """What triton/deployer.py needs to write config.pbtxt: names, Triton dtypes, dims
    without the batch axis (-1: dynamic)."""
    output_dims = [-1] if task == "squad" else [num_labels]
    return {
        "task": task,
        "vocab_size": model_config.vocab_size,
        "max_position_embeddings": model_config.max_position_embeddings,
        "inputs": [{"name": name, "field": field, "data_type": TRITON_TYPES[input_dtype],
                    "dims": [-1]} for name, field in INPUTS],
        "outputs": [{"name": name, "field": field, "data_type": "TYPE_FP32",
                     "dims": output_dims} for name, field in OUTPUTS[task]],
        "files": {},
    }


def checkpoint_stamp(init_checkpoint):
    """[size, modification time in ns] of the checkpoint file, or of each file of a
    checkpoint directory: a checkpoint retrained in place gets another stamp."""
    path = Path(init_checkpoint)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}


def describe(args, model_config, input_dtype):
    """signature.json's content, with what identifies the checkpoint and how clients
    tokenize for it (casing, classification label names)."""
    described = signature(args.task, input_dtype, model_config, args.num_labels)
    described["init_checkpoint"] = str(Path(args.init_checkpoint).resolve())
    described["init_checkpoint_stamp"] = checkpoint_stamp(args.init_checkpoint)
    described["do_lower_case"] = (args.do_lower_case if args.do_lower_case is not None
                                  else finetuning.recorded_lower_case(args.init_checkpoint))
    if args.task == "classification":
        described["label_names"] = finetuning.checkpoint_label_names(args.init_checkpoint)
    return described


def write_description(output_dir, described):
    """signature.json and tokenizer_config.json (only with a known casing: a stale one
    would mislead the client), each atomically."""
    casing = output_dir / "tokenizer_config.json"
    if described["do_lower_case"] is None:
        casing.unlink(missing_ok=True)
    else:
        utils.atomic_write_text(casing, json.dumps(
            {"do_lower_case": described["do_lower_case"]}, indent=2) + "\n")
    utils.atomic_write_text(output_dir / "signature.json",
                            json.dumps(described, indent=2) + "\n")


def earlier_exports(output_dir, described):
    """{format: file} of what an earlier run exported into output_dir from the same
    checkpoint with the same signature: listed beside this run's formats. An earlier
    export of anything else has its model files removed, as this run's config.json and
    signature.json no longer describe them."""
    try:
        earlier = utils.read_json_object(output_dir / "signature.json", "earlier export")
    except (OSError, ValueError):  # none, or unreadable: nothing to keep
        return {}
    same = all(earlier.get(key) == value for key, value in described.items()
               if key not in NOT_THE_MODEL and (key in earlier or key not in NEWER_KEYS))
    kept = {}
    for fmt, name in dict(earlier.get("files") or {}).items():
        path = output_dir / str(name)
        if not path.is_file():
            continue
        if same:
            kept[fmt] = path.name
        else:
            path.unlink()
            utils.logger.warning("removed %s: exported earlier from another checkpoint or "
                                 "with another signature than this export", path)
    return kept


def load_task_model(args, device):
    if args.task == "squad":
        return finetuning.load_model(modeling.BertForQuestionAnswering, args, device,
                                     will_train=False)
    if args.num_labels is None:
        args.num_labels = classifier_rows(args.init_checkpoint)
    return finetuning.load_model(modeling.BertForSequenceClassification, args, device,
                                 will_train=False, num_labels=args.num_labels)


def classifier_rows(init_checkpoint):
    """The number of labels of the checkpoint's classifier (the rows of its weight)."""
    weights = [tensor for key, tensor in modeling.read_state_dict(init_checkpoint).items()
               if key.endswith("classifier.weight")]
    if len(weights) != 1:
        raise ValueError(f"--init_checkpoint {init_checkpoint} holds no classifier "
                         "(classifier.weight): export it with --task squad, or pass a "
                         "fine-tuned classification checkpoint")
    return weights[0].shape[0]


def main(args):
    utils.setup_logging()
    finetuning.resolve_model_files(args)
    device = torch.device(args.device)
    utils.set_matmul_precision("tf32" if args.tf32 else "fp32")
    model = load_task_model(args, device).eval()
    wrapper = TritonSignature(model).eval()
    input_dtype = getattr(torch, args.input_dtype)
    # At least 2 along each axis: torch.export specialises an axis of size 1 to a constant.
    batch, length = max(args.batch_size, 2), max(args.max_seq_length, 2)
    example = random_inputs(model.config.vocab_size, batch, length, input_dtype, args.seed,
                            device)
    # Another size, length and padding than the example: the dynamic axes are exercised.
    other_length = max(length - 5, 2) if length > 2 else 3
    fresh = random_inputs(model.config.vocab_size, batch + 1, other_length, input_dtype,
                          args.seed + 1, device)

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    described = describe(args, model.config, input_dtype)
    described["files"] = earlier_exports(output_dir, described)
    model.config.to_json_file(output_dir / "config.json")
    with utils.atomic_path(output_dir / "vocab.txt") as partial:
        partial.write_bytes(vocab_txt_bytes(args.vocab_file))
    write_description(output_dir, described)
    for fmt in args.format:
        path = output_dir / FILE_NAMES[fmt]
        with utils.atomic_path(path) as partial:  # the final name only once it passes
            if fmt == "onnx":
                export_onnx(wrapper, example, partial, args.task, args.opset)
            else:
                export_torchscript(wrapper, example, partial)
            check_export(fmt, partial, wrapper, fresh, args.task, args.atol, device)
        described["files"][fmt] = path.name
        write_description(output_dir, described)
    print(f"exported {', '.join(args.format)} to {output_dir}")
    return described


if __name__ == "__main__":
    utils.run_entry_point(main, parse_args)
