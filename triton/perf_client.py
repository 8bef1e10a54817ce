"""Measures a model served by Triton: concurrent requests for a fixed time per concurrency
level, then throughput and p50/p90/p99 latency, printed as a markdown table.

    triton/.venv/bin/python triton/perf_client.py --url 127.0.0.1:8001 --protocol grpc \\
        --model_name bert_qa --batch_size 1 --seq_length 384 --concurrency 1 4 16 --duration 10

Each concurrency level runs that many threads, each with its own client and one request in
flight, for --duration seconds after --warmup seconds whose requests are not counted.
Latency is the client's: request sent to response decoded. The inputs are random token ids
below --max_token_id (valid for any BERT vocabulary; they do not change the model's speed)
with padding in every other row, in the dtype the model declares.

Deliberate deviations from NVIDIA's run_perf_client.sh / perf_analyzer: a Python client
(tritonclient), so at high request rates the client's own overhead is in the numbers;
no shared-memory transport.
"""

import argparse
import sys
import threading
import time

import numpy as np

INPUT_NAMES = ["input__0", "input__1", "input__2"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--url", default=None,
                        help="host:port (default 127.0.0.1:8000 for http, :8001 for grpc)")
    parser.add_argument("--protocol", choices=["http", "grpc"], default="grpc")
    parser.add_argument("--model_name", default="bert")
    parser.add_argument("--model_version", default="")
    parser.add_argument("--batch_size", type=int, default=1, help="sequences per request")
    parser.add_argument("--seq_length", type=int, default=384)
    parser.add_argument("--max_token_id", type=int, default=100)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per level")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds per level")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.url is None:
        args.url = "127.0.0.1:8000" if args.protocol == "http" else "127.0.0.1:8001"
    return args


def random_batch(batch_size, seq_length, max_token_id, seed):
    """(input_ids, segment_ids, input_mask) as int64 arrays; odd rows padded to half length."""
    rng = np.random.default_rng(seed)
    input_mask = np.ones((batch_size, seq_length), dtype=np.int64)
    input_mask[1::2, seq_length // 2:] = 0
    input_ids = rng.integers(1, max_token_id, (batch_size, seq_length)) * input_mask
    segment_ids = np.zeros_like(input_mask)
    segment_ids[:, seq_length // 4:] = 1
    return input_ids, segment_ids * input_mask, input_mask


class Failures:
    """How many calls failed and the first failure: a server that went away fails every
    call, and keeping each exception (with its traceback) would fill the memory."""

    def __init__(self):
        self.count, self.first = 0, None

    def add(self, error, count=1):
        self.count += count
        self.first = self.first or error


FAILURE_BACKOFF_S = 0.05  # after a failed call: no busy loop against a dead server


def _timed_calls(send, warmup, duration, failures):
    """Calls send() for warmup + duration seconds; returns the latencies (s) of the calls
    that began after the warm-up. Failures are counted in `failures` and the loop goes on."""
    latencies = []
    counted_from = time.perf_counter() + warmup
    stop_at = counted_from + duration
    while (began := time.perf_counter()) < stop_at:
        try:
            send()
        except Exception as error:
            failures.add(error)
            time.sleep(FAILURE_BACKOFF_S)
            continue
        if began >= counted_from:
            latencies.append(time.perf_counter() - began)
    return latencies


def measure(make_sender, concurrency, duration, warmup):
    """Runs `concurrency` threads, each calling its own make_sender()() in a loop, for
    warmup + duration seconds. Returns requests/s and latency percentiles (ms) over the
    requests that started after the warm-up, and the number of failed requests.
    make_sender runs in the thread that will use the sender (tritonclient's HTTP client
    works only in the thread that created it)."""
    start_line = threading.Barrier(concurrency + 1)
    latencies, failures, lock = [], Failures(), threading.Lock()

    def worker():
        failed, mine = Failures(), []
        try:
            send = make_sender()
        except Exception as error:  # e.g. no server: reported, and the others still start
            send = None
            failed.add(error)
        start_line.wait()
        if send is not None:
            mine = _timed_calls(send, warmup, duration, failed)
        with lock:
            latencies.extend(mine)
            if failed.count:
                failures.add(failed.first, failed.count)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    start_line.wait()
    for thread in threads:
        thread.join()
    milliseconds = np.array(latencies) * 1000.0 if latencies else np.array([np.nan])
    p50, p90, p99 = np.percentile(milliseconds, [50, 90, 99])
    return {"concurrency": concurrency, "requests": len(latencies),
            "requests_per_s": len(latencies) / duration, "p50_ms": p50, "p90_ms": p90,
            "p99_ms": p99, "errors": failures.count,
            "first_error": (f"{type(failures.first).__name__}: {failures.first}"
                            if failures.first else None)}


def triton_sender(protocol, url, model_name, model_version, arrays):
    """make_sender for `measure`: each call builds a client with the inputs prepared once."""
    if protocol == "http":
        import tritonclient.http as client_module
    else:
        import tritonclient.grpc as client_module

    def make_sender():
        client = client_module.InferenceServerClient(url)
        metadata = client.get_model_metadata(model_name, model_version,
                                             **({"as_json": True} if protocol == "grpc" else {}))
        datatypes = {tensor["name"]: tensor["datatype"] for tensor in metadata["inputs"]}
        inputs = []
        for name, array in zip(INPUT_NAMES, arrays):
            tensor = client_module.InferInput(name, list(array.shape), datatypes[name])
            tensor.set_data_from_numpy(array.astype(datatypes[name].lower()))
            inputs.append(tensor)
        return lambda: client.infer(model_name, inputs, model_version=model_version)

    return make_sender


P99_MIN_REQUESTS = 100  # below this the 99th percentile is the slowest one or two requests


def markdown_table(rows, batch_size):
    lines = ["| concurrency | requests | requests/s | sequences/s | p50 ms | p90 ms | p99 ms "
             "| errors |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        p99 = (f"{row['p99_ms']:.2f}" if row["requests"] >= P99_MIN_REQUESTS
               else f"n/a (< {P99_MIN_REQUESTS})")
        lines.append(f"| {row['concurrency']} | {row['requests']} | "
                     f"{row['requests_per_s']:.1f} | {row['requests_per_s'] * batch_size:.1f} | "
                     f"{row['p50_ms']:.2f} | {row['p90_ms']:.2f} | {p99} | {row['errors']} |")
    return "\n".join(lines)


def main(args):
    arrays = random_batch(args.batch_size, args.seq_length, args.max_token_id, args.seed)
    make_sender = triton_sender(args.protocol, args.url, args.model_name, args.model_version,
                                arrays)
    rows = [measure(make_sender, level, args.duration, args.warmup)
            for level in args.concurrency]
    print(f"{args.model_name} over {args.protocol} at {args.url}: batch {args.batch_size}, "
          f"sequence length {args.seq_length}, {args.duration:g} s per level")
    print(markdown_table(rows, args.batch_size))
    failed = [row for row in rows if row["errors"]]
    if failed:
        print(f"failed requests, e.g.: {failed[0]['first_error']}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    sys.exit(1 if any(row["errors"] for row in main(parse_args())) else 0)
