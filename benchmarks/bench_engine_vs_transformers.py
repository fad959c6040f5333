"""Our engine against transformers' generate (static batching), same model, same requests, one run.

    python -m benchmarks.bench_engine_vs_transformers            # CPU, llama-58m, float32, 64 requests

Both generate exactly each request's output length (EOS ignored). transformers runs the requests in
arrival order in static batches (left-padded, each batch decoding until its longest request is done),
at several batch sizes; the engine takes all of them at once and batches continuously. Throughput
counts requested tokens only; the headline ratio is against the fastest transformers batch size.

Every timed run is a fresh process (`--worker`) that loads its system, warms up and generates once, so
neither side inherits the other's heap or threads. Runs are interleaved in rounds so that a noisy
machine slows both sides alike: round 1 times the engine and every batch size; each later round times
the engine and the fastest batch size again. The engine and the fastest batch size report the median of
their rounds; the other sizes one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.environment import environment
from benchmarks.random_model import build
from benchmarks.workload import synthetic_requests
from loraplex.server.config import EngineConfig
from loraplex.server.engine import Engine
from loraplex.server.request import SamplingParams

RESULTS = Path(__file__).parent / "results"


def engine_runner(model_dir: Path, requests, device: str) -> Callable[[], float]:
    """A function that generates every request through the engine and returns the seconds it took."""
    engine = Engine(EngineConfig(model_id=str(model_dir), device=device, max_batch_total_tokens=64 * 1024))
    # Warm-up, as for transformers: the first batch (for the engine, every request) with 2 new tokens.
    engine.generate(
        [
            engine.make_request(r.prompt_ids, SamplingParams(max_new_tokens=2, ignore_eos_token=True))
            for r in requests
        ]
    )

    def run() -> float:
        submitted = [
            engine.make_request(
                r.prompt_ids, SamplingParams(max_new_tokens=r.output_len, ignore_eos_token=True)
            )
            for r in requests
        ]
        start = time.perf_counter()
        engine.generate(submitted)
        seconds = time.perf_counter() - start
        assert all(r.num_output_tokens == q.output_len for r, q in zip(submitted, requests, strict=True))
        return seconds

    return run


def transformers_runner(model_dir: Path, requests, device: str) -> Callable[[int], float]:
    """A function that generates every request with transformers in static batches of a given size."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0

    def generate_batch(batch, new_tokens: int | None = None) -> None:
        width = max(len(r.prompt_ids) for r in batch)
        ids = torch.tensor([[0] * (width - len(r.prompt_ids)) + r.prompt_ids for r in batch], device=device)
        mask = torch.tensor(
            [[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in batch], device=device
        )
        new_tokens = new_tokens or max(r.output_len for r in batch)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
            )
        assert out.shape[1] == width + new_tokens

    def run(batch_size: int) -> float:
        generate_batch(requests[:batch_size], new_tokens=2)  # warm-up: the first batch, 2 new tokens
        start = time.perf_counter()
        for i in range(0, len(requests), batch_size):
            generate_batch(requests[i : i + batch_size])
        return time.perf_counter() - start

    return run


def timed_rounds(
    run_engine: Callable[[], float], run_transformers: Callable[[int], float], batch_sizes, rounds: int
) -> dict[str, list[float]]:
    """Seconds of every run, by system name, in the interleaved order the module docstring describes."""
    seconds: dict[str, list[float]] = {"engine": [run_engine()]}
    for batch_size in batch_sizes:
        seconds[f"transformers_static_b{batch_size}"] = [run_transformers(batch_size)]
    fastest = min(batch_sizes, key=lambda b: seconds[f"transformers_static_b{b}"][0])
    for _ in range(rounds - 1):
        seconds["engine"].append(run_engine())
        seconds[f"transformers_static_b{fastest}"].append(run_transformers(fastest))
    return seconds


def isolated_run(args: argparse.Namespace, system: str, batch_size: int = 0) -> float:
    """Seconds of one run of `system` in a fresh worker process."""
    command = [sys.executable, "-m", "benchmarks.bench_engine_vs_transformers", "--worker", system]
    command += ["--model", args.model, "--device", args.device, "--requests", str(args.requests)]
    command += ["--prompt-len", *map(str, args.prompt_len), "--output-len", *map(str, args.output_len)]
    command += ["--worker-batch-size", str(batch_size)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{system} worker failed:\n{done.stderr[-3000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="llama-58m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, nargs=2, default=(32, 256))
    parser.add_argument("--output-len", type=int, nargs=2, default=(16, 128))
    parser.add_argument("--hf-batch-sizes", type=int, nargs="+", default=(8, 16, 32, 64))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", choices=("engine", "transformers"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-batch-size", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=RESULTS / "engine_vs_transformers_cpu.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model_dir = build(args.model)
    requests = synthetic_requests(
        args.requests, tuple(args.prompt_len), tuple(args.output_len), vocab_size=32000
    )
    if args.worker == "engine":
        print(json.dumps({"seconds": engine_runner(model_dir, requests, args.device)()}))
        return
    if args.worker == "transformers":
        print(
            json.dumps(
                {"seconds": transformers_runner(model_dir, requests, args.device)(args.worker_batch_size)}
            )
        )
        return
    useful_tokens = sum(r.output_len for r in requests)
    seconds = timed_rounds(
        lambda: isolated_run(args, "engine"),
        lambda batch_size: isolated_run(args, "transformers", batch_size),
        args.hf_batch_sizes,
        args.rounds,
    )
    results = {}
    for name, runs in seconds.items():
        median = statistics.median(runs)
        results[name] = {"seconds": median, "all_seconds": runs, "tokens_per_second": useful_tokens / median}
        if name != "engine":
            results[name]["batch_size"] = int(name.rsplit("_b", 1)[1])
    engine_tps = results["engine"]["tokens_per_second"]
    report = {
        "benchmark": "engine_vs_transformers",
        "environment": environment(args.device),
        "workload": {
            "model": args.model,
            "dtype": "float32",
            "requests": args.requests,
            "prompt_len_range": list(args.prompt_len),
            "output_len_range": list(args.output_len),
            "seed": 0,
            "rounds": args.rounds,
            "isolation": "each timed run in a fresh process",
            "generated_tokens": useful_tokens,
            "prompt_tokens": sum(len(r.prompt_ids) for r in requests),
        },
        "results": results,
        "speedup_vs": {
            name: engine_tps / entry["tokens_per_second"]
            for name, entry in results.items()
            if name != "engine"
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    best = max((n for n in results if n != "engine"), key=lambda n: results[n]["tokens_per_second"])
    report["speedup_vs_best_transformers"] = {"peer": best, "ratio": report["speedup_vs"][best]}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
