"""Builds a Triton model repository from triton/export_model.py's output, and validates
Triton model configurations offline.

    python triton/deployer.py --export_dir results/triton_export \\
        --model_repository results/triton_models --model_name bert_qa --backend onnxruntime
    python triton/deployer.py --check results/triton_models/bert_qa/config.pbtxt

writes <model_repository>/<model_name>/config.pbtxt and <model_version>/ with the model:

    --backend onnxruntime  model.onnx   platform "onnxruntime_onnx" (tritonserver container)
    --backend pytorch      model.pt     platform "pytorch_libtorch" (tritonserver container)
    --backend python       model.onnx + model.py (triton/onnx_python_model.py, onnxruntime
                           inside the python backend: the CPU server bundled in
                           nvidia-pytriton, which has no other backend)

Input and output names, dtypes and dims come from the export's signature.json. Every
config is parsed into Triton's own ModelConfig protobuf (tritonclient's model_config_pb2)
before it is written, so a misspelt field or enum value stops the build with its line and
the nearest valid names; --check does the same for configs written by hand.

Deliberate deviations from NVIDIA's deployer.py / model_navigator: reads a signature file
instead of tracing the model again; dynamic batching is on by default (queue delay 100 us);
no TensorRT plans or CUDA-graph settings (--onnx_accelerator tensorrt asks onnxruntime's
TensorRT execution provider instead).
"""

import argparse
import difflib
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import utils  # noqa: E402 - hides this folder from `import triton` (see utils)

HERE = Path(__file__).resolve().parent
PYTHON_MODEL_SOURCE = HERE / "onnx_python_model.py"
# backend -> (config line naming it, export format, files in the version directory)
BACKENDS = {
    "onnxruntime": ('platform: "onnxruntime_onnx"', "onnx", ["model.onnx"]),
    "pytorch": ('platform: "pytorch_libtorch"', "torchscript", ["model.pt"]),
    "python": ('backend: "python"', "onnx", ["model.onnx", "model.py"]),
}
PLATFORM_FILES = {"onnxruntime_onnx": ["model.onnx"], "pytorch_libtorch": ["model.pt"]}
BACKEND_FILES = {"onnxruntime": ["model.onnx"], "pytorch": ["model.pt"],
                 "python": ["model.py"]}
# The parameter each backend reads for its intra-op threads (the python backend's is read
# by triton/onnx_python_model.py and handed to onnxruntime).
INTRA_OP_THREADS_KEY = {"onnxruntime": "intra_op_thread_count",
                        "pytorch": "INTRA_OP_THREAD_COUNT",
                        "python": "intra_op_thread_count"}


class ConfigError(ValueError):
    """A model configuration Triton would refuse; the message says where and what to do."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--check", nargs="+", metavar="CONFIG",
                        help="only validate these config.pbtxt files (or model directories)")
    parser.add_argument("--export_dir", help="triton/export_model.py's --output_dir")
    parser.add_argument("--model_repository", help="the repository folder to write into")
    parser.add_argument("--model_name", default="bert")
    parser.add_argument("--model_version", type=int, default=1)
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="onnxruntime")
    parser.add_argument("--max_batch_size", type=int, default=8)
    parser.add_argument("--dynamic_batching", action=argparse.BooleanOptionalAction,
                        default=True)
    parser.add_argument("--preferred_batch_sizes", type=int, nargs="+", default=None,
                        help="default: half the max batch size and the max batch size")
    parser.add_argument("--max_queue_delay_us", type=int, default=100,
                        help="how long the dynamic batcher waits to fill a batch")
    parser.add_argument("--instance_kind", choices=["gpu", "cpu"], default=None,
                        help="default: cpu for --backend python, else gpu")
    parser.add_argument("--instance_count", type=int, default=1,
                        help="model instances (per GPU with --instance_kind gpu)")
    parser.add_argument("--gpus", type=int, nargs="+", default=None,
                        help="GPU ids for the instances (default: every GPU)")
    parser.add_argument("--intra_op_threads", type=int, default=0,
                        help="intra-op threads per instance (0: the backend's default)")
    parser.add_argument("--onnx_accelerator", choices=["none", "tensorrt"], default="none",
                        help="--backend onnxruntime on GPU: run through TensorRT's provider")
    args = parser.parse_args(argv)
    if not args.check and not (args.export_dir and args.model_repository):
        parser.error("give --export_dir and --model_repository, or --check CONFIG ...")
    kind = instance_kind(args)
    if args.onnx_accelerator == "tensorrt" and (args.backend != "onnxruntime" or kind == "cpu"):
        parser.error("--onnx_accelerator tensorrt needs --backend onnxruntime on GPU "
                     f"instances, not --backend {args.backend} on {kind}")
    if args.gpus and kind == "cpu":
        parser.error("--gpus places GPU instances, but these instances are cpu: pass "
                     "--instance_kind gpu, or drop --gpus")
    return args


def instance_kind(args):
    return args.instance_kind or ("cpu" if args.backend == "python" else "gpu")


# ----------------------------------------------------------------------------- writing

def _tensors(section, tensors, batch_axis):
    """batch_axis: the dims name the batch axis too (max_batch_size 0: Triton then adds
    none, and the exported graph still takes one)."""
    def entry(tensor):
        dims = [-1] * batch_axis + list(tensor["dims"])
        return (f'  {{\n    name: "{tensor["name"]}"\n    data_type: {tensor["data_type"]}\n'
                f'    dims: [ {", ".join(map(str, dims))} ]\n  }}')
    return f"{section} [\n" + ",\n".join(map(entry, tensors)) + "\n]"


MAX_POSITIONS_KEY = "max_position_embeddings"


def _parameter(key, value):
    return f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}'


def _preferred_batch_sizes(args):
    if args.preferred_batch_sizes:
        return args.preferred_batch_sizes
    return sorted({max(args.max_batch_size // 2, 1), args.max_batch_size})


def _instance_group(args):
    kind = instance_kind(args)
    lines = [f"    count: {args.instance_count}", f"    kind: KIND_{kind.upper()}"]
    if kind == "gpu" and args.gpus:
        lines.append(f"    gpus: [ {', '.join(map(str, args.gpus))} ]")
    return "instance_group [\n  {\n" + "\n".join(lines) + "\n  }\n]"


def config_text(args, signature):
    """config.pbtxt for `signature` (export_model.py's signature.json) as `args` ask."""
    sections = [f'name: "{args.model_name}"', BACKENDS[args.backend][0],
                f"max_batch_size: {args.max_batch_size}",
                _tensors("input", signature["inputs"], args.max_batch_size == 0),
                _tensors("output", signature["outputs"], args.max_batch_size == 0)]
    if args.dynamic_batching:
        sizes = ", ".join(map(str, _preferred_batch_sizes(args)))
        sections.append(f"dynamic_batching {{\n  preferred_batch_size: [ {sizes} ]\n"
                        f"  max_queue_delay_microseconds: {args.max_queue_delay_us}\n}}")
    sections.append(_instance_group(args))
    # For clients: the longest sequence the model takes (the dims say -1, any length).
    sections.append(_parameter(MAX_POSITIONS_KEY, signature["max_position_embeddings"]))
    if args.intra_op_threads:
        sections.append(_parameter(INTRA_OP_THREADS_KEY[args.backend], args.intra_op_threads))
    if args.onnx_accelerator == "tensorrt":
        sections.append("optimization {\n  execution_accelerators {\n"
                        '    gpu_execution_accelerator: [ { name: "tensorrt" } ]\n  }\n}')
    return "\n".join(sections) + "\n"


def read_signature(export_dir, backend):
    """export_model.py's signature.json, checked to list an existing export in the format
    --backend serves."""
    path = Path(export_dir) / "signature.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: --export_dir must be the "
                                f"--output_dir of triton/export_model.py")
    signature = utils.read_json_object(path, "--export_dir's")
    if not isinstance(signature.get("files"), dict):
        raise ValueError(f"{path} lists no exported files: rerun triton/export_model.py")
    fmt = BACKENDS[backend][1]
    if fmt not in signature["files"]:
        raise FileNotFoundError(f"{export_dir} holds no {fmt} export, which --backend "
                                f"{backend} serves: rerun export_model.py with --format {fmt}")
    export_file = Path(export_dir) / signature["files"][fmt]
    if not export_file.is_file():
        raise FileNotFoundError(f"{export_file}, listed in {path}, does not exist: rerun "
                                f"export_model.py with --format {fmt}")
    return signature


def write_model(args):
    """<repository>/<name>/config.pbtxt + <version>/<model files>; returns the model
    directory. A version directory already there is replaced only by a complete new one,
    and config.pbtxt atomically: a failed run leaves the deployed model as it was."""
    signature = read_signature(args.export_dir, args.backend)
    model_dir = Path(args.model_repository) / args.model_name
    text = config_text(args, signature)
    where = f"the config for {model_dir}"
    check_config(parse_config(text, where), where)  # nothing is written for a bad config
    model_dir.mkdir(parents=True, exist_ok=True)
    # A name Triton skips (not a version number), in the folder it is renamed within.
    staging = Path(tempfile.mkdtemp(dir=model_dir, prefix=f".{args.model_version}."))
    try:
        os.chmod(staging, 0o777 & ~utils.current_umask())  # mkdtemp: owner-only
        export_file = Path(args.export_dir) / signature["files"][BACKENDS[args.backend][1]]
        shutil.copyfile(export_file, staging / export_file.name)
        if args.backend == "python":
            shutil.copyfile(PYTHON_MODEL_SOURCE, staging / "model.py")
        _replace_dir(staging, model_dir / str(args.model_version))
        utils.atomic_write_text(model_dir / "config.pbtxt", text)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    check_model_dir(model_dir)
    print(f"wrote {model_dir} ({args.backend}, max_batch_size {args.max_batch_size})")
    return model_dir


def _replace_dir(source, target):
    """Renames folder `source` onto `target`; a `target` already there is moved aside
    first (a folder cannot be renamed onto a non-empty one), put back if the rename fails,
    and removed after."""
    aside = target.with_name(f".{target.name}.replaced")
    shutil.rmtree(aside, ignore_errors=True)
    if target.exists():
        target.rename(aside)
    try:
        source.rename(target)
    except OSError:
        if aside.exists():
            aside.rename(target)
        raise
    shutil.rmtree(aside, ignore_errors=True)


# ----------------------------------------------------------------------------- checking

def _nearest_names(message):
    """' Did you mean ...?' for a misspelt field or enum value in a ParseError message."""
    pool = model_config_pb2.DESCRIPTOR.pool
    field = re.search(r'Message type "([\w.]+)" has no field named "(\w+)"', message)
    enum = re.search(r'Enum type "([\w.]+)" has no value named (\w+)', message)
    if field:
        names = [f.name for f in pool.FindMessageTypeByName(field[1]).fields]
        wrong = field[2]
    elif enum:
        names = [v.name for v in pool.FindEnumTypeByName(enum[1]).values]
        wrong = enum[2]
    else:
        return ""
    close = difflib.get_close_matches(wrong, names, n=3, cutoff=0.75)
    return f" Did you mean {' or '.join(close)}?" if close else f" Valid: {', '.join(names)}."


def parse_config(text, where):
    """Parses config.pbtxt text into inference.ModelConfig; ConfigError on any error."""
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as error:
        raise ConfigError(f"{where}: not a Triton model configuration: {error}"
                          f"{_nearest_names(str(error))}") from None


def _check_batching(config, where):
    if config.max_batch_size < 0:
        raise ConfigError(f"{where}: max_batch_size is {config.max_batch_size}; it must be "
                          f">= 0 (0: the model takes no batch axis)")
    if not config.HasField("dynamic_batching"):
        return
    if config.max_batch_size == 0:
        raise ConfigError(f"{where}: dynamic_batching needs max_batch_size > 0")
    too_big = [s for s in config.dynamic_batching.preferred_batch_size
               if not 0 < s <= config.max_batch_size]
    if too_big:
        raise ConfigError(f"{where}: preferred_batch_size {too_big} outside 1.."
                          f"{config.max_batch_size} (max_batch_size)")


def _expected_files(config, where):
    if config.platform and config.backend:
        raise ConfigError(f"{where}: sets both platform and backend; give one")
    if config.platform in PLATFORM_FILES:
        return PLATFORM_FILES[config.platform]
    if config.backend in BACKEND_FILES:
        return BACKEND_FILES[config.backend]
    named = f'platform "{config.platform}"' if config.platform else f'backend "{config.backend}"'
    raise ConfigError(f"{where}: {named} is not one this repository writes "
                      f"(platforms {sorted(PLATFORM_FILES)}, backends {sorted(BACKEND_FILES)})")


def _runs_onnx(version_dir):
    """Whether the version's model.py is ours, which serves model.onnx beside it."""
    model_py = version_dir / "model.py"
    return model_py.is_file() and model_py.read_bytes() == PYTHON_MODEL_SOURCE.read_bytes()


def check_config(config, where, model_dir=None):
    """Refuses what Triton would refuse beyond the syntax; with `model_dir`, also checks the
    directory name and that every version directory holds the model files."""
    if not config.input or not config.output:
        raise ConfigError(f"{where}: needs at least one input and one output")
    for section in (config.input, config.output):
        names = [tensor.name for tensor in section]
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}: tensor names repeat: {names}")
    _check_batching(config, where)
    files = _expected_files(config, where)
    if model_dir is None:
        return
    if config.name and config.name != model_dir.name:
        raise ConfigError(f'{where}: name "{config.name}" differs from its directory '
                          f'"{model_dir.name}", which Triton requires to match')
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    if not versions:
        raise ConfigError(f"{where}: {model_dir} has no numbered version directory (1/)")
    for version in versions:
        needed = files + (["model.onnx"] if _runs_onnx(version) else [])
        missing = [name for name in needed if not (version / name).is_file()]
        if missing:
            raise ConfigError(f"{where}: {version} lacks {', '.join(missing)}")


def check_model_dir(path):
    """Validates a config.pbtxt (or the model directory holding one); returns the config."""
    path = Path(path)
    config_path = path / "config.pbtxt" if path.is_dir() else path
    if not config_path.is_file():
        raise ConfigError(f"{config_path} does not exist")
    config = parse_config(config_path.read_text(), str(config_path))
    check_config(config, str(config_path), model_dir=config_path.parent)
    return config


def main(args):
    if args.check:
        for path in args.check:
            check_model_dir(path)
            print(f"{path}: valid")
        return None
    return write_model(args)


if __name__ == "__main__":
    try:
        main(parse_args())
    except (ValueError, OSError) as error:  # ConfigError is a ValueError
        sys.exit(f"error: {error}")
