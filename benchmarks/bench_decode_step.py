"""Decode steps in-process, without HTTP: how long the engine takes per step, and where it goes.

    python -m benchmarks.bench_decode_step --config gpu         # Llama-3-8B shapes, bf16, batch 64
    python -m benchmarks.bench_decode_step --config cpu         # llama-58m, float32, batch 32
    python -m benchmarks.bench_decode_step --config gpu --tiny  # the GPU path with tiny shapes, on CPU

The engine is built exactly as `loraplex serve` builds it for the serving benchmark's configuration
(same model, adapters and flags), then driven on this thread: `batch` requests with a fixed prompt and
output length start together, and every step in which they all decode is timed. For each adapter
count up to the batch size (round robin: each request its own adapter at the largest) it reports the median step,
the part spent in the model runner (forward and sampling; on GPU the wait for the device is here), the
rest (scheduling and bookkeeping; the requests have no HTTP sinks, so nothing is handed over), the
LoRA cost against the base model, and the
step's byte floor (see `bench_serving_floor`). Counts run in order, then in reverse, `--passes`
times in all; each keeps the median step over its passes (this drifts less than any one pass).

Against the serving benchmark's ITL p50 (one decode step, seen over HTTP) this separates what the
engine costs from what serving it over HTTP in the same process adds.

Results: benchmarks/results/decode_step_<config>.json (--tiny: the temporary directory).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.bench_serving import prepare_model
from benchmarks.bench_serving_configs import BenchConfig, add_config_arguments, chosen_config
from benchmarks.bench_serving_floor import copy_bandwidth, step_bytes
from benchmarks.bench_serving_runs import serve_args
from loraplex.loadgen.report import environment, write_report
from loraplex.router.cli import build_parser, engine_config
from loraplex.server.engine import Engine
from loraplex.server.request import SamplingParams

RESULTS = Path(__file__).parent / "results"
# (prompt tokens, new tokens) per configuration
LENGTHS = {"cpu": (32, 24), "gpu": (128, 32), "gpu-tiny": (16, 8)}


def build_engine(config: BenchConfig) -> tuple[Engine, list[str], dict]:
    """The engine `loraplex serve` would build for this configuration -> (engine, adapter ids, shape)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    model_dir, root, pool, shape = prepare_model(config)
    args = build_parser().parse_args(["serve", *serve_args(config, model_dir, root)])
    return Engine(engine_config(args)), pool, shape


class StepTimer:
    """Wraps the engine's runner to time `runner.run` inside each step."""

    def __init__(self, engine: Engine):
        self.last = 0.0
        self._run = engine.runner.run
        engine.runner.run = self._timed

    def _timed(self, batch):
        started = time.perf_counter()
        try:
            return self._run(batch)
        finally:
            self.last = time.perf_counter() - started


def decode_steps(
    engine: Engine, timer: StepTimer, adapters: list[str], batch: int, lengths: tuple[int, int], seed: int
) -> list[tuple[float, float]]:
    """(step seconds, runner seconds) of every step in which all `batch` requests decode."""
    prompt_len, new_tokens = lengths
    if adapters:  # load them first: the timed steps measure serving, not loading
        warm = SamplingParams(max_new_tokens=1)
        engine.generate(
            [engine.make_request([5, 6, 7], warm, adapter=engine.adapters.locate(a, None)) for a in adapters]
        )
    vocab = engine.info.vocab_size
    generator = torch.Generator().manual_seed(seed)
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos_token=True)
    requests = []
    for i in range(batch):
        tokens = torch.randint(3, vocab, (prompt_len,), generator=generator).tolist()
        location = engine.adapters.locate(adapters[i % len(adapters)], None) if adapters else None
        requests.append(engine.make_request(tokens, params, adapter=location))
    times = []
    step = engine.step

    def timed_step():
        decoding = all(r.num_output_tokens >= 1 for r in requests)
        started = time.perf_counter()
        outputs = step()
        if decoding and engine.last_step_ran:
            times.append((time.perf_counter() - started, timer.last))
        return outputs

    engine.step = timed_step  # Engine.generate drives the steps; this times each one
    try:
        engine.generate(requests)
    finally:
        del engine.step
    return times[1:]  # the first decode step may still replay a graph for the first time


def measure(config: BenchConfig, counts: tuple[int, ...], passes: int = 2) -> dict:
    engine, pool, shape = build_engine(config)
    timer = StepTimer(engine)
    batch = config.concurrency
    lengths = LENGTHS[config.name]
    samples: dict[int, list[tuple[float, float]]] = {n: [] for n in counts}
    for k in range(passes):
        for n in counts if k % 2 == 0 else tuple(reversed(counts)):
            samples[n] += decode_steps(engine, timer, pool[:n], batch, lengths, seed=k)
    engine.shutdown()
    element = torch.empty((), dtype=config.torch_dtype).element_size()
    bandwidth = copy_bandwidth(config.device, (1 << 30) if config.device.startswith("cuda") else (1 << 27))
    context = lengths[0] + lengths[1] / 2
    steps = {}
    for n, pairs in samples.items():
        step = statistics.median(s for s, _ in pairs)
        runner = statistics.median(r for _, r in pairs)
        need = step_bytes(shape, element, batch, context, min(n, batch), config.rank if n else 0)
        steps[n] = {
            "distinct_adapters": min(n, batch),
            "steps": len(pairs),
            "step_ms": 1e3 * step,
            "min_step_ms": 1e3 * min(s for s, _ in pairs),
            "runner_ms": 1e3 * runner,
            "rest_ms": 1e3 * (step - runner),
            "floor_ms": 1e3 * need["total"] / bandwidth,
            "fraction_of_floor": need["total"] / bandwidth / step,
        }
    base = steps[0]["step_ms"] if 0 in steps else None
    for n, entry in steps.items():
        entry["lora_cost_ms"] = entry["step_ms"] - base if base is not None and n else None
    return {
        "benchmark": "decode_step",
        "config": config.name,
        "environment": environment(config.device),
        "model": config.model,
        "dtype": config.dtype,
        "batch": batch,
        "prompt_tokens": lengths[0],
        "new_tokens": lengths[1],
        "rank": config.rank,
        "passes": passes,
        "copy_bandwidth_GBps": bandwidth / 1e9,
        "cuda_graphs": engine.info.cuda_graphs,
        "steps": {str(n): entry for n, entry in steps.items()},
    }


def table(report: dict) -> str:
    lines = ["adapters  step ms  runner ms  rest ms  LoRA cost ms  of byte floor"]
    for n, e in report["steps"].items():
        cost = "" if e["lora_cost_ms"] is None else f"{e['lora_cost_ms']:.2f}"
        lines.append(
            f"{n:>8}  {e['step_ms']:7.2f}  {e['runner_ms']:9.2f}  {e['rest_ms']:7.2f}  {cost:>12}"
            f"  {e['fraction_of_floor']:13.0%}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_arguments(parser, default="gpu")
    parser.add_argument("--passes", type=int, default=4, help="passes over the adapter counts")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    config = chosen_config(parser, args)
    counts = (0, *sorted({min(n, config.concurrency) for n in config.adapter_counts}))
    report = measure(config, counts, args.passes)
    folder = Path(tempfile.gettempdir()) if args.tiny else RESULTS
    out = args.out or folder / f"decode_step_{config.name.replace('-', '_')}.json"
    write_report(out, report)
    print(table(report))
    print(json.dumps({n: e["lora_cost_ms"] for n, e in report["steps"].items()}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
