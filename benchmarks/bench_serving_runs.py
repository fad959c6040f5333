"""The serving benchmark's runs: our server over HTTP (one process, every adapter count, best of
`repeats` passes) and the transformers + peft peer in this process, both within a time budget."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path

from benchmarks.bench_serving_configs import BenchConfig
from loraplex.loadgen.arrivals import Arrivals
from loraplex.loadgen.lengths import LengthDist
from loraplex.loadgen.report import run_record
from loraplex.loadgen.runner import server_info
from loraplex.loadgen.server import local_server
from loraplex.loadgen.sweep import measure, sweep
from loraplex.loadgen.workload import WorkloadSpec, build_workload, distinct_adapters


class Clock:
    """Seconds since the benchmark began, and what is left of its budget."""

    def __init__(self, budget_s: float):
        self.started = time.perf_counter()
        self.budget_s = budget_s

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def left(self) -> float:
        return self.budget_s - self.elapsed


def serve_args(config: BenchConfig, model_dir: Path, root: Path) -> list[str]:
    return [
        "--model-id", str(model_dir),
        "--adapter-dir", str(root),
        "--max-active-adapters", str(max(config.adapter_counts)),
        "--max-lora-rank", str(config.rank),
        "--device", config.device,
        "--dtype", config.dtype,
        "--max-concurrent-requests", str(max(4 * config.concurrency, 256)),
        "--log-level", "warning",
        *config.server_args,
    ]  # fmt: skip


def workload(config: BenchConfig, vocab_size: int) -> WorkloadSpec:
    return WorkloadSpec(
        num_requests=config.num_requests,
        prompt_len=LengthDist.parse(config.prompt_len),
        output_len=LengthDist.parse(config.output_len),
        popularity="roundrobin",
        arrivals=Arrivals(concurrency=config.concurrency),
        seed=0,
        vocab=(3, vocab_size),
    )


def best_of(passes: list[list[dict]]) -> list[dict]:
    """Per run name, the pass with the highest tokens/s (the least disturbed by other load on the
    machine), with every pass's tokens/s kept in `passes_tokens_per_s`; in the first pass's order."""
    by_name: dict[str, list[dict]] = {}
    for runs in passes:
        for run in runs:
            by_name.setdefault(run["name"], []).append(run)
    best = []
    for runs in by_name.values():
        speeds = [r["summary"]["output_tokens_per_s"] for r in runs]
        chosen = dict(max(runs, key=lambda r: r["summary"]["output_tokens_per_s"]))
        chosen["passes_tokens_per_s"] = speeds
        best.append(chosen)
    return best


def run_server(
    config: BenchConfig,
    model_dir: Path,
    root: Path,
    pool: list[str],
    spec: WorkloadSpec,
    log: Path,
    progress: bool,
    clock: Clock,
) -> tuple[list[dict], dict]:
    """Every adapter count and the base model through one server process -> (runs, /info).

    With `repeats` > 1 the sweep runs again in reverse order (base model first) while the budget
    leaves `peer_reserve_s` for the peers, and each run keeps its best pass.
    """
    env = {"OMP_NUM_THREADS": str(config.threads)} if config.threads else None
    passes: list[list[dict]] = []
    with local_server(serve_args(config, model_dir, root), log_path=log, timeout=600, env=env) as url:
        info = server_info(url)
        pass_s = 0.0
        for k in range(config.repeats):
            if k and clock.left < pass_s + config.peer_reserve_s:
                break
            started = time.perf_counter()
            counts = config.adapter_counts if k % 2 == 0 else tuple(reversed(config.adapter_counts))
            base = dataclasses.replace(spec, popularity="base", adapters=())
            runs = []
            if k % 2:
                runs.append(
                    measure(url, base, "loraplex base model", "loraplex base", config.slo_ttft, progress)
                )
            runs += sweep(url, spec, pool, counts, k % 2 == 0, "loraplex", config.slo_ttft, progress)
            passes.append(runs)
            pass_s = time.perf_counter() - started
    return best_of(passes), info


def run_peft(
    config: BenchConfig, model_dir: Path, root: Path, pool: list[str], spec: WorkloadSpec, clock: Clock
) -> tuple[list[dict], list[dict]]:
    """transformers + peft at each count of `peft_order` (0: the base model), while the budget lasts.

    A run is skipped when the time left is less than an estimate: the same count's earlier wall time,
    else the previous run's scaled by the ratio of adapter counts when that grows (peft's cost grows
    with distinct adapters). A count listed twice is run twice and keeps its best pass.
    """
    from benchmarks.peft_peer import load_peer, run_peer

    runs, skipped = [], []
    started = time.perf_counter()
    model, tokenizer = load_peer(model_dir, None, [], config.device, config.torch_dtype)
    load_s = time.perf_counter() - started
    loaded: list[str] = []
    last_wall, last_count = 0.0, 1
    walls: dict[int, float] = {}
    for count in config.peft_order:
        estimate = walls.get(count, last_wall * max(1.0, count / last_count))
        if clock.left < estimate + 10:
            reason = f"time budget: {clock.left:.0f} s left, needs ~{estimate:.0f} s"
            skipped.append(
                {"system": "peft" if count else "transformers base", "adapters": count, "reason": reason}
            )
            continue
        if count:
            wanted = pool[:count]
            if not loaded:
                from peft import PeftModel

                model = PeftModel.from_pretrained(
                    model, root / wanted[0], adapter_name=wanted[0], low_cpu_mem_usage=True
                ).eval()
                loaded.append(wanted[0])
            for adapter_id in wanted[len(loaded) :]:
                # peft loads each adapter in seconds on large models; low_cpu_mem_usage skips the
                # random init of weights that the file then overwrites
                if clock.left < estimate + 10:
                    break
                model.load_adapter(root / adapter_id, adapter_name=adapter_id, low_cpu_mem_usage=True)
                loaded.append(adapter_id)
            if len(loaded) < count:
                reason = f"time budget: ran out loading adapters ({len(loaded)} of {count} loaded)"
                skipped.append({"system": "peft", "adapters": count, "reason": reason})
                continue
            run_spec = dataclasses.replace(spec, adapters=tuple(wanted))
        else:
            run_spec = dataclasses.replace(spec, popularity="base", adapters=())
        requests = build_workload(run_spec)[: config.peft_requests]
        deadline = clock.started + clock.budget_s - 5
        base_only = model.disable_adapter() if (loaded and not count) else contextlib.nullcontext()
        with base_only:
            results, wall = run_peer(model, tokenizer, requests, config.concurrency, config.device, deadline)
        last_wall, last_count = wall, max(count, 1)
        walls[count] = wall
        runs.append(
            run_record(
                f"peft {count} adapters" if count else "transformers base model",
                "peft" if count else "transformers base",
                results,
                config.slo_ttft,
                adapters=count,
                distinct_adapters=distinct_adapters(requests[: len(results)]),
                popularity=run_spec.popularity,
                wall_s=wall,
                requests_sent=len(results),
                model_load_s=load_s,
            )
        )
    return runs, skipped
