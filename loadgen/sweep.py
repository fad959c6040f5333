"""The same workload against one server at several adapter counts (and with no adapter at all)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from .apis import LORAX, Api
from .arrivals import Arrivals
from .report import run_record
from .runner import run, warm_up
from .stats import Slo
from .workload import WorkloadSpec, build_workload, distinct_adapters


def measure(
    url: str,
    spec: WorkloadSpec,
    name: str,
    system: str = "loraplex",
    slo: Slo | float | None = None,
    progress: bool = True,
    warm: bool = True,
    timeout: float = 600.0,
    api: Api = LORAX,
) -> dict:
    """Warm up, run the workload, return its record.

    The warm-up loads the adapters the workload names, then sends its first wave of requests (as many as
    run at once) with 2 output tokens each: batches of the run's own prompt lengths and adapter mix, so a
    server that compiles kernels per shape (Triton on GPU) has done so before anything is timed.
    """
    requests = build_workload(spec)
    named = sorted({r.adapter_id for r in requests if r.adapter_id is not None})
    warm_started = time.perf_counter()
    if warm:
        warm_up(url, named or [None], concurrency=64, timeout=timeout, api=api)
        in_flight = spec.arrivals.concurrency or 64  # open loop: a wave as large as the first warm-up
        wave = [dataclasses.replace(r, output_len=min(r.output_len, 2)) for r in requests[:in_flight]]
        run(url, wave, Arrivals(concurrency=len(wave)), timeout=timeout, progress=False, api=api)
    warmup_s = time.perf_counter() - warm_started
    outcome = run(url, requests, spec.arrivals, timeout=timeout, progress=progress, description=name, api=api)
    return run_record(
        name,
        system,
        outcome.results,
        slo,
        adapters=len(spec.adapters) if spec.popularity != "base" else 0,
        distinct_adapters=distinct_adapters(requests),
        popularity=spec.popularity,
        wall_s=outcome.wall_s,
        warmup_s=warmup_s,
    )


def sweep(
    url: str,
    spec: WorkloadSpec,
    pool: Sequence[str],
    counts: Sequence[int],
    include_base: bool = True,
    system: str = "loraplex",
    slo: Slo | float | None = None,
    progress: bool = True,
    warm: bool = True,
    timeout: float = 600.0,
    api: Api = LORAX,
) -> list[dict]:
    """One run per adapter count (the first `count` ids of `pool`), then one with the base model only.

    Prompts, lengths and arrivals are the same in every run; only the adapter names change.
    """
    runs = []
    for count in counts:
        if count > len(pool):
            raise ValueError(f"{count} adapters asked for, the pool has {len(pool)}")
        run_spec = dataclasses.replace(spec, adapters=tuple(pool[:count]))
        runs.append(
            measure(url, run_spec, f"{system} {count} adapters", system, slo, progress, warm, timeout, api)
        )
    if include_base:
        base_spec = dataclasses.replace(spec, popularity="base", adapters=())
        runs.append(
            measure(
                url,
                base_spec,
                f"{system} base model",
                f"{system} base",
                slo,
                progress,
                warm,
                timeout,
                api,
            )
        )
    return runs
