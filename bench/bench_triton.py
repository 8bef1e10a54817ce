"""Requests per second and latency of a tiny question-answering BERT served by Triton on the
CPU (gRPC and HTTP), next to the same ONNX file run by onnxruntime in-process and the same
model in PyTorch eager, at several concurrency levels; prints a markdown table.

Run from the repository root with the deployment environment (bash triton/setup_env.sh):
    triton/.venv/bin/python bench/bench_triton.py                 # ~2 min on 2 cores
    triton/.venv/bin/python bench/bench_triton.py --duration 2 --concurrency 1 4

Every path gets the same request, one unpadded sequence of --seq_length tokens, and the same
model, exported by triton/export_model.py. Triton serves it from a repository built by
triton/deployer.py --backend python (the bundled CPU server, triton/server.py), with dynamic
batching up to --max_batch_size and --instance_count instances of --threads onnxruntime
threads each. In-process, --concurrency threads share one onnxruntime session (--threads
threads per call) or the one PyTorch model (torch.set_num_threads(--threads)). Latency is
measured by the caller, request in to answer out; for Triton it includes the Python client.
Other processes on the same cores move the numbers: compare rows of one run only.
"""

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "triton"))

import utils  # noqa: E402,F401 - first: hides triton/ from `import triton` (see utils)
import deployer  # noqa: E402
import export_model  # noqa: E402
import onnxruntime  # noqa: E402
import perf_client  # noqa: E402
import torch  # noqa: E402
from model import BertConfig, BertForQuestionAnswering  # noqa: E402

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=128)
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each")
    parser.add_argument("--seq_length", type=int, default=128)
    parser.add_argument("--vocab_size", type=int, default=1000)
    parser.add_argument("--max_batch_size", type=int, default=16)
    parser.add_argument("--instance_count", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1,
                        help="onnxruntime intra-op threads per instance; torch threads")
    parser.add_argument("--http_port", type=int, default=0, help="0: a free port")
    parser.add_argument("--grpc_port", type=int, default=0, help="0: a free port")
    args = parser.parse_args(argv)
    args.http_port = args.http_port or free_port()
    args.grpc_port = args.grpc_port or free_port()
    return args


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tiny_checkpoint(folder, vocab_size):
    """config.json, vocab.txt (special tokens then placeholders) and a random QA model."""
    vocab = SPECIALS + [f"[unused{i}]" for i in range(vocab_size - len(SPECIALS))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    config = BertConfig(vocab_size=vocab_size, **TINY)
    config.to_json_file(folder / "config.json")
    torch.manual_seed(0)
    model = BertForQuestionAnswering(config).eval()
    torch.save({"model": model.state_dict()}, folder / "qa.pt")
    return model


def build_repository(folder, args):
    export_model.main(export_model.parse_args([
        "--init_checkpoint", str(folder / "qa.pt"), "--config_file", str(folder / "config.json"),
        "--vocab_file", str(folder / "vocab.txt"), "--output_dir", str(folder / "export"),
        "--format", "onnx", "--max_seq_length", str(args.seq_length), "--batch_size", "2"]))
    deployer.main(deployer.parse_args([
        "--export_dir", str(folder / "export"), "--model_repository", str(folder / "models"),
        "--model_name", "bert_qa", "--backend", "python",
        "--max_batch_size", str(args.max_batch_size),
        "--instance_count", str(args.instance_count), "--intra_op_threads", str(args.threads)]))
    return folder / "models", folder / "export" / "model.onnx"


def start_server(repository, args, log):
    server = subprocess.Popen(
        [sys.executable, str(REPO / "triton" / "server.py"), "--model_repository",
         str(repository), "--http_port", str(args.http_port), "--grpc_port",
         str(args.grpc_port)], stdout=log, stderr=subprocess.STDOUT)
    import tritonclient.http
    client = tritonclient.http.InferenceServerClient(f"127.0.0.1:{args.http_port}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if client.is_model_ready("bert_qa"):
                return server
        except Exception:  # not listening yet
            pass
        time.sleep(0.2)
    server.terminate()
    raise RuntimeError(f"the Triton server did not become ready; see {log.name}")


def onnxruntime_sender(path, arrays, threads):
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options,
                                           providers=["CPUExecutionProvider"])
    feed = dict(zip(perf_client.INPUT_NAMES, arrays))
    return lambda: (lambda: session.run(None, feed))


def torch_sender(model, arrays):
    tensors = [torch.from_numpy(array) for array in arrays]

    def send():
        with torch.no_grad():
            model(*tensors)
    return lambda: send


def measure_all(args, repository, onnx_path, model):
    arrays = perf_client.random_batch(1, args.seq_length, args.vocab_size, seed=0)
    paths = {
        "Triton gRPC": perf_client.triton_sender("grpc", f"127.0.0.1:{args.grpc_port}",
                                                 "bert_qa", "", arrays),
        "Triton HTTP": perf_client.triton_sender("http", f"127.0.0.1:{args.http_port}",
                                                 "bert_qa", "", arrays),
        "onnxruntime in-process": onnxruntime_sender(onnx_path, arrays, args.threads),
        "PyTorch eager": torch_sender(model, arrays),
    }
    rows = []
    for name, make_sender in paths.items():
        for level in args.concurrency:
            row = perf_client.measure(make_sender, level, args.duration, args.warmup)
            rows.append({"path": name, **row})
            print(f"{name:24} concurrency {level:3}: {row['requests_per_s']:8.1f} req/s, "
                  f"p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms", flush=True)
    return rows


def markdown(rows):
    """Mean latency is concurrency / throughput (Little's law): with threads in one process
    the GIL serves them unfairly, so p50 alone would hide the queueing."""
    lines = ["| path | concurrency | requests/s | p50 ms | p99 ms | mean ms | errors |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['path']} | {r['concurrency']} | {r['requests_per_s']:.1f} | "
              f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
              f"{1000 * r['concurrency'] / max(r['requests_per_s'], 1e-9):.2f} | "
              f"{r['errors']} |" for r in rows]
    return "\n".join(lines)


def main(args):
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench_triton.") as scratch:
        folder = Path(scratch)
        model = tiny_checkpoint(folder, args.vocab_size)
        repository, onnx_path = build_repository(folder, args)
        with open(folder / "server.log", "w") as log:
            server = start_server(repository, args, log)
            try:
                rows = measure_all(args, repository, onnx_path, model)
            finally:
                server.terminate()  # SIGTERM: a background server ignores SIGINT
                server.wait(timeout=60)
    print(f"\nTiny QA BERT (hidden {TINY['hidden_size']}, {TINY['num_hidden_layers']} layers), "
          f"one sequence of {args.seq_length} tokens per request, {args.duration:g} s per "
          f"cell; {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, Triton "
          f"{args.instance_count} instance(s) x {args.threads} thread(s), dynamic batching "
          f"up to {args.max_batch_size}.\n")
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    main(parse_args())
