"""Serving benchmark: our server over HTTP at several adapter counts, the base model alone, and the
transformers + peft peer, all on the same model and the same prompts in one run.

    python -m benchmarks.bench_serving --config cpu         # ~58M random Llama, float32, 1/4/16/64 adapters
    python -m benchmarks.bench_serving --config gpu         # Llama-3-8B shapes, bf16, 1/8/64/512 adapters
    python -m benchmarks.bench_serving --config gpu --tiny  # the GPU path with tiny shapes, on CPU (a check)

The server runs as a subprocess (`loraplex serve`) with every adapter available; before each timed run
the adapters it names are loaded by a warm-up request, so the runs measure serving, not loading.
Adapters are assigned round robin over the first N of the pool, so a batch holds min(N, batch)
distinct adapters: the hard case. The load is a closed loop of `concurrency` clients; the peft peer
runs the same requests in static batches of that size, in arrival order. Each run's decode step is
set against its byte floor at the copy bandwidth measured on the device.

CPU: server and peers use one torch thread each (on a shared 2-core machine two OpenMP threads stall
each other: a [32, 512] x [512, 1376] matmul took 16 ms with 2 threads and 1.8 ms with 1), and each
run keeps the best of two passes (the second in reverse order) to damp other load on the machine.
GPU: random weights are drawn on the GPU and written straight to safetensors (/dev/shm when it has
room); 512 adapter folders share 8 weight files through hard links; one command, ~4 minutes.

Results: benchmarks/results/serving_<config>.json and serving_<config>_{throughput,latency,cdf}.png
(the --tiny check writes to the temporary directory unless --out is given).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
from pathlib import Path

import torch

from benchmarks.bench_serving_build import (
    llama_tensors,
    work_dir,
    write_random_adapters,
    write_random_model,
)
from benchmarks.bench_serving_configs import (
    PEFT_H200_REFERENCE,
    BenchConfig,
    add_config_arguments,
    chosen_config,
)
from benchmarks.bench_serving_floor import copy_bandwidth, floor_fraction
from benchmarks.bench_serving_runs import Clock, best_of, run_peft, run_server, workload
from benchmarks.random_adapters import build_adapters
from benchmarks.random_model import CACHE, SHAPES, build
from loraplex.loadgen.plots import plot_all
from loraplex.loadgen.report import environment, summary_table, write_report
from loraplex.loadgen.workload import build_workload

RESULTS = Path(__file__).parent / "results"


def prepare_model(config: BenchConfig) -> tuple[Path, Path, list[str], dict]:
    """(model folder, adapter root, adapter ids, model shape), built where the benchmark runs."""
    count = max(config.adapter_counts)
    if config.shape is None:
        model_dir = build("llama-58m")
        root = CACHE / "llama-58m-serving-adapters"
        ids = build_adapters(model_dir, root, count, config.rank, dtype=config.torch_dtype)
        return model_dir, root, ids, SHAPES["llama-58m"]
    element = torch.empty((), dtype=config.torch_dtype).element_size()
    params = sum(math.prod(shape) for _, shape in llama_tensors(config.shape))
    base = work_dir(params * element) / f"serving-{config.name}"
    model_dir = write_random_model(base / "model", config.shape, config.torch_dtype, config.device)
    root = base / "adapters"
    ids = write_random_adapters(
        model_dir, root, count, config.rank, config.unique_adapters, config.torch_dtype
    )
    return model_dir, root, ids, config.shape


def _tps(runs: list[dict], system: str, adapters: int) -> float | None:
    for run in runs:
        if run["system"] == system and run.get("adapters") == adapters and run["summary"]["completed"]:
            return run["summary"]["output_tokens_per_s"]
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def comparisons(config: BenchConfig, runs: list[dict]) -> dict:
    """Ratios the goals are stated in: against peft, against 1 adapter, against the base model."""
    base = _tps(runs, "loraplex base", 0)
    one = _tps(runs, "loraplex", 1)
    out = {
        "vs_peft": {
            n: _ratio(_tps(runs, "loraplex", n), _tps(runs, "peft", n)) for n in config.peft_order if n
        },
        "vs_one_adapter": {n: _ratio(_tps(runs, "loraplex", n), one) for n in config.adapter_counts},
        "lora_overhead_vs_base": {
            n: (1 - r) if (r := _ratio(_tps(runs, "loraplex", n), base)) is not None else None
            for n in config.adapter_counts
        },
        "loraplex_base_vs_transformers_base": _ratio(base, _tps(runs, "transformers base", 0)),
    }
    out["fraction_of_byte_floor_step"] = {
        run["adapters"]: run["byte_floor"]["fraction_of_floor_step"]
        for run in runs
        if run["system"].startswith("loraplex") and "byte_floor" in run
    }
    most = max(config.adapter_counts)
    if config.goals == "cpu":
        goals = {
            "3x peft at 16 adapters": (out["vs_peft"].get(16), 3.0),
            f"{most} adapters >= 90% of 1": (out["vs_one_adapter"][most], 0.9),
        }
    else:
        goals = {
            "100x peft at 64 adapters": (out["vs_peft"].get(64), 100.0),
            f"{most} adapters >= 97% of 1": (out["vs_one_adapter"][most], 0.97),
            "overhead <= 5% at 8 adapters": (_neg(out["lora_overhead_vs_base"].get(8)), -0.05),
            "overhead <= 30% all distinct (64)": (_neg(out["lora_overhead_vs_base"].get(64)), -0.30),
            f"decode step >= 70% of the byte floor ({most} adapters)": (
                out["fraction_of_byte_floor_step"].get(most),
                0.70,
            ),
        }
        # Not measured in this run: the H200 numbers for transformers + peft, same shapes.
        out["vs_peft_h200_reference"] = {
            key: _ratio(
                _tps(runs, "loraplex base", 0) if key == "base" else _tps(runs, "loraplex", int(key)), value
            )
            for key, value in PEFT_H200_REFERENCE.items()
        }
    out["goals"] = {
        name: {"value": value, "target": target, "met": None if value is None else value >= target}
        for name, (value, target) in goals.items()
    }
    return out


def _neg(value: float | None) -> float | None:
    return None if value is None else -value


def run_config(config: BenchConfig, out: Path, plots: Path | None, progress: bool = True) -> dict:
    clock = Clock(config.budget_s)
    if config.threads:
        torch.set_num_threads(config.threads)
    model_dir, root, pool, shape = prepare_model(config)
    build_s = clock.elapsed
    vocab = shape["vocab_size"]
    spec = workload(config, vocab)
    element = torch.empty((), dtype=config.torch_dtype).element_size()
    bandwidth = copy_bandwidth(config.device, (1 << 30) if config.device.startswith("cuda") else (1 << 27))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the server process needs the memory the build and copy used
    log = Path(tempfile.gettempdir()) / f"loraplex-bench-serving-{config.name}.log"
    runs, info = run_server(config, model_dir, root, pool, spec, log, progress, clock)
    server_s = clock.elapsed - build_s
    peft_runs, skipped = run_peft(config, model_dir, root, pool, spec, clock)
    peft_runs = best_of([peft_runs])
    runs += peft_runs
    requests = build_workload(dataclasses.replace(spec, popularity="base"))
    context = sum(r.prompt_len for r in requests) / len(requests) + sum(r.output_len for r in requests) / (
        2 * len(requests)
    )
    for run in runs:
        if run["system"].startswith("loraplex"):
            run["byte_floor"] = floor_fraction(
                run, shape, element, bandwidth, config.concurrency, context, config.rank
            )
    report = {
        "benchmark": "serving",
        "config": config.name,
        "environment": environment(config.device),
        "model": config.model,
        "dtype": config.dtype,
        "server": info,
        "workload": {
            **spec.describe(),
            "adapter_pool": len(pool),
            "adapter_counts": list(config.adapter_counts),
            "rank": config.rank,
            "targets": "all seven projections",
            "peft_batch_size": config.concurrency,
            "peft_requests": config.peft_requests or config.num_requests,
            "assignment": "round robin over the first N adapters of the pool",
            "torch_threads": config.threads or torch.get_num_threads(),
        },
        "options": {
            "budget_s": config.budget_s,
            "server_args": list(config.server_args),
            "threads": config.threads,
        },
        "copy_bandwidth_GBps": bandwidth / 1e9,
        "mean_decode_context_tokens": context,
        "runs": runs,
        "skipped": skipped,
        "comparisons": comparisons(config, runs),
        "timing_s": {
            "build": build_s,
            "server": server_s,
            "peft": clock.elapsed - build_s - server_s,
            "total": clock.elapsed,
        },
    }
    if config.goals == "gpu":
        report["peft_h200_reference_tokens_per_s"] = PEFT_H200_REFERENCE
    write_report(out, report)
    if plots is not None:
        plot_all(report, plots)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(parser, default="cpu")
    parser.add_argument(
        "--out", type=Path, default=None, help="default: benchmarks/results/serving_<config>.json"
    )
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--budget", type=float, default=None, help="seconds (default: the config's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of server and peers")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra `loraplex serve` argument, e.g. --server-arg=--no-cuda-graphs (repeatable)",
    )
    args = parser.parse_args(argv)
    config = chosen_config(parser, args)
    if args.budget:
        config = dataclasses.replace(config, budget_s=args.budget)
    if args.threads:
        config = dataclasses.replace(config, threads=args.threads)
    if args.server_arg:
        config = dataclasses.replace(config, server_args=(*config.server_args, *args.server_arg))
    folder = Path(tempfile.gettempdir()) if args.tiny else RESULTS
    out = args.out or folder / f"serving_{config.name.replace('-', '_')}.json"
    plots = None if args.no_plots else out.with_suffix("")
    report = run_config(config, out, plots, progress=not args.no_progress)
    print(summary_table(report["runs"]))
    print(json.dumps(report["comparisons"], indent=2))
    print(f"wrote {out} ({report['timing_s']['total']:.0f} s)")


if __name__ == "__main__":
    main()
