"""Our engine against transformers' generate (static batching), same model, same requests, one run.

    python -m benchmarks.bench_engine_vs_transformers            # CPU, llama-58m, float32, 64 requests

Both generate exactly each request's output length (EOS ignored). transformers runs the requests in
arrival order in static batches (left-padded, each batch decoding until its longest request is done),
at several batch sizes; the engine takes all of them at once and batches continuously. Throughput
counts requested tokens only; the headline ratio is against the fastest transformers batch size.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.environment import environment
from benchmarks.random_model import build
from benchmarks.workload import synthetic_requests
from loraplex.server.config import EngineConfig
from loraplex.server.engine import Engine
from loraplex.server.request import SamplingParams

RESULTS = Path(__file__).parent / "results"


def run_engine(model_dir: Path, requests, device: str, repeats: int = 3) -> dict:
    """The median of `repeats` runs (the engine's run is short, so one run is noisier than the peer's)."""
    engine = Engine(EngineConfig(model_id=str(model_dir), device=device, max_batch_total_tokens=64 * 1024))
    warm = engine.make_request(
        requests[0].prompt_ids, SamplingParams(max_new_tokens=2, ignore_eos_token=True)
    )
    engine.generate([warm])
    times, steps = [], 0
    for _ in range(repeats):
        submitted = [
            engine.make_request(
                r.prompt_ids, SamplingParams(max_new_tokens=r.output_len, ignore_eos_token=True)
            )
            for r in requests
        ]
        steps = engine.num_steps
        start = time.perf_counter()
        engine.generate(submitted)
        times.append(time.perf_counter() - start)
        steps = engine.num_steps - steps
        assert all(r.num_output_tokens == q.output_len for r, q in zip(submitted, requests, strict=True))
    return {"seconds": sorted(times)[len(times) // 2], "all_seconds": times, "steps": steps}


def run_transformers(model_dir: Path, requests, batch_size: int, device: str) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0

    def generate_batch(batch) -> None:
        width = max(len(r.prompt_ids) for r in batch)
        ids = torch.tensor([[0] * (width - len(r.prompt_ids)) + r.prompt_ids for r in batch], device=device)
        mask = torch.tensor(
            [[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in batch], device=device
        )
        new_tokens = max(r.output_len for r in batch)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
            )
        assert out.shape[1] == width + new_tokens

    generate_batch(requests[:1])
    start = time.perf_counter()
    for i in range(0, len(requests), batch_size):
        generate_batch(requests[i : i + batch_size])
    return {"seconds": time.perf_counter() - start, "batch_size": batch_size}


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
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=RESULTS / "engine_vs_transformers_cpu.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model_dir = build(args.model)
    requests = synthetic_requests(
        args.requests, tuple(args.prompt_len), tuple(args.output_len), vocab_size=32000
    )
    useful_tokens = sum(r.output_len for r in requests)
    results = {"engine": run_engine(model_dir, requests, args.device)}
    for batch_size in args.hf_batch_sizes:
        results[f"transformers_static_b{batch_size}"] = run_transformers(
            model_dir, requests, batch_size, args.device
        )
    for entry in results.values():
        entry["tokens_per_second"] = useful_tokens / entry["seconds"]
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
