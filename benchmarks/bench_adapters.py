"""Adapter serving costs, in one run:

1. cold load: disk -> host -> slot, seconds against adapter bytes (ranks 8, 16, 64);
2. stalls: while cold adapters load in the background, do steps for resident adapters keep running?
3. throughput: tokens/s with 1, 8 and 64 distinct adapters against the base model alone, same requests.

    python -m benchmarks.bench_adapters                     # CPU, llama-58m, float32
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import torch

from benchmarks.environment import environment
from benchmarks.random_adapters import build_adapters
from benchmarks.random_model import CACHE, build
from benchmarks.workload import synthetic_requests
from loraplex.server.config import EngineConfig
from loraplex.server.engine import Engine
from loraplex.server.request import SamplingParams

RESULTS = Path(__file__).parent / "results"


def make_engine(model_dir: Path, root: Path, device: str, slots: int, max_rank: int) -> Engine:
    return Engine(
        EngineConfig(
            model_id=str(model_dir),
            device=device,
            max_batch_total_tokens=64 * 1024,
            adapter_dirs=(str(root),),
            max_active_adapters=slots,
            max_lora_rank=max_rank,
        )
    )


def cold_loads(engine: Engine, root: Path, model_dir: Path, ranks: list[int], repeats: int = 3) -> list[dict]:
    rows = []
    for rank in ranks:
        ids = build_adapters(model_dir, root, repeats, rank, prefix="load")
        times, nbytes = [], 0
        for adapter_id in ids:
            location = engine.adapters.locate(adapter_id, "local")
            started = time.perf_counter()
            entry = engine.adapters.wait_loaded(location)
            engine.adapters.activate_now(location)
            if engine.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
            nbytes = entry.nbytes
            engine.adapters.unload(location)
        file_bytes = (root / ids[0] / "adapter_model.safetensors").stat().st_size
        seconds = statistics.median(times)
        rows.append(
            {
                "rank": rank,
                "bytes": nbytes,
                "file_bytes": file_bytes,
                "seconds": seconds,
                "MB_per_s": nbytes / seconds / 1e6,
            }
        )
    return rows


def stalls_while_loading(engine: Engine, root: Path, model_dir: Path, requests, cold_count: int) -> dict:
    """Resident adapters decode while `cold_count` cold rank-64 adapters load; count steps that could not run."""
    resident = build_adapters(model_dir, root, 4, 16, prefix="resident")
    cold = build_adapters(model_dir, root, cold_count, 64, prefix="cold")
    for adapter_id in resident:
        location = engine.adapters.locate(adapter_id, "local")
        engine.adapters.wait_loaded(location)
        engine.adapters.activate_now(location)
    work = []
    for i, spec in enumerate(requests[:16]):
        location = engine.adapters.locate(resident[i % len(resident)], "local")
        params = SamplingParams(max_new_tokens=64, ignore_eos_token=True)
        work.append(engine.make_request(spec.prompt_ids[:32], params, adapter=location))
    cold_requests = [
        engine.make_request(
            requests[i % len(requests)].prompt_ids[:32],
            SamplingParams(max_new_tokens=4, ignore_eos_token=True),
            adapter=engine.adapters.locate(adapter_id, "local"),
        )
        for i, adapter_id in enumerate(cold)
    ]
    for request in work:
        engine.submit(request)
    engine.step()
    for request in cold_requests:
        engine.submit(request)
    step_times, stalled, during_load = [], 0, 0
    loading = lambda: any(e.future is not None for e in engine.adapters.entries())  # noqa: E731
    while not all(r.is_finished for r in work):
        started = time.perf_counter()
        was_loading = loading()
        engine.step()
        elapsed = time.perf_counter() - started
        if was_loading:
            during_load += 1
            stalled += not engine.last_step_ran
        step_times.append((was_loading, elapsed))
    engine.generate([])
    loading_times = [t for flag, t in step_times if flag] or [0.0]
    other_times = [t for flag, t in step_times if not flag] or [0.0]
    return {
        "resident_requests": len(work),
        "cold_adapters": cold_count,
        "steps_while_loading": during_load,
        "stalled_steps": stalled,
        "step_ms_p50_while_loading": 1000 * statistics.median(loading_times),
        "step_ms_p50_otherwise": 1000 * statistics.median(other_times),
        "cold_requests_finished": sum(r.is_finished for r in cold_requests),
    }


def make_batch(engine: Engine, requests, ids: list[str], max_new_tokens: int | None = None) -> list:
    """The requests, round robin over `ids` (none: the base model), each to its own length or `max_new_tokens`."""
    return [
        engine.make_request(
            spec.prompt_ids,
            SamplingParams(max_new_tokens=max_new_tokens or spec.output_len, ignore_eos_token=True),
            adapter=engine.adapters.locate(ids[i % len(ids)], "local") if ids else None,
        )
        for i, spec in enumerate(requests)
    ]


def throughput(engine: Engine, root: Path, model_dir: Path, requests, counts: list[int], rank: int) -> dict:
    pools = {n: build_adapters(model_dir, root, n, rank, prefix="tput") for n in counts if n}
    results = {}
    for n in [0, *counts]:
        ids = pools.get(n, [])
        for adapter_id in ids:  # resident before timing: this measures serving, not loading
            location = engine.adapters.locate(adapter_id, "local")
            engine.adapters.wait_loaded(location)
            engine.adapters.activate_now(location)
        # The same shapes once, untimed: on GPU, kernels compile per shape on first use.
        engine.generate(make_batch(engine, requests, ids, 2))
        submitted = make_batch(engine, requests, ids)
        started = time.perf_counter()
        engine.generate(submitted)
        seconds = time.perf_counter() - started
        tokens = sum(r.num_output_tokens for r in submitted)
        results["base" if n == 0 else f"{n}_adapters"] = {
            "seconds": seconds,
            "tokens_per_second": tokens / seconds,
        }
    base = results["base"]["tokens_per_second"]
    for entry in results.values():
        entry["relative_to_base"] = entry["tokens_per_second"] / base
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="llama-58m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--adapter-counts", type=int, nargs="+", default=(1, 8, 64))
    parser.add_argument("--load-ranks", type=int, nargs="+", default=(8, 16, 64))
    parser.add_argument("--prompt-len", type=int, nargs=2, default=(16, 48))
    parser.add_argument("--output-len", type=int, nargs=2, default=(32, 64))
    parser.add_argument("--out", type=Path, default=None, help="default: results/adapters_<cpu|cuda>.json")
    args = parser.parse_args()

    out = args.out or RESULTS / f"adapters_{torch.device(args.device).type}.json"
    model_dir = build(args.model)
    root = CACHE / f"{args.model}-adapters"
    requests = synthetic_requests(
        args.requests, tuple(args.prompt_len), tuple(args.output_len), vocab_size=32000
    )
    slots = max(max(args.adapter_counts), 32)
    engine = make_engine(model_dir, root, args.device, slots=slots, max_rank=max(*args.load_ranks, args.rank))
    report = {
        "benchmark": "adapters",
        "environment": environment(args.device),
        "workload": {
            "model": args.model,
            "requests": args.requests,
            "rank": args.rank,
            "targets": "all seven projections",
            "prompt_len_range": list(args.prompt_len),
            "output_len_range": list(args.output_len),
            "adapters_assigned": "round robin, every adapter distinct within a batch when count >= requests",
            "gpu_slots": slots,
        },
        "cold_load": cold_loads(engine, root, model_dir, list(args.load_ranks)),
        "stalls": stalls_while_loading(engine, root, model_dir, requests, cold_count=24),
        "throughput": throughput(engine, root, model_dir, requests, list(args.adapter_counts), args.rank),
    }
    engine.shutdown()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
