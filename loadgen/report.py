"""The JSON report of a benchmark: where and when it ran, the workload, and one record per run.

    {"benchmark", "environment": {date, commit, machine, device, ...}, "workload", "server",
     "runs": [{"name", "system", "adapters", "summary": stats.summarize(...), "cdf": {...}}, ...]}

`cdf` holds each latency's quantiles at 0, 1, ..., 100 percent (101 values), enough to draw its CDF
without keeping every sample.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
from collections.abc import Sequence
from pathlib import Path

from .stats import RequestResult, Slo, percentile, summarize


def environment(device: str = "cpu") -> dict:
    """Date, commit, machine and device: `benchmarks.environment` when the repository is importable."""
    try:
        from benchmarks.environment import environment as repo_environment
    except ImportError:
        return {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": "unknown",
            "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
            "device": device,
            "python": platform.python_version(),
        }
    return repo_environment(device)


def quantiles(values: Sequence[float]) -> list[float]:
    """The 0th, 1st, ..., 100th percentiles (an empty list for no values)."""
    if not values:
        return []
    return [round(percentile(values, q), 6) for q in range(101)]


def run_record(
    name: str,
    system: str,
    results: Sequence[RequestResult],
    slo: Slo | float | None = None,
    duration: float | None = None,
    **extra,
) -> dict:
    """One run: its summary numbers, latency CDFs, and whatever `extra` describes it (adapters, ...)."""
    ok = [r for r in results if r.ok]
    return {
        "name": name,
        "system": system,
        **extra,
        "summary": summarize(results, slo, duration),
        "cdf": {
            "ttft_s": quantiles([r.ttft for r in ok]),
            "itl_s": quantiles([gap for r in ok for gap in r.itls]),
            "e2e_s": quantiles([r.e2e for r in ok]),
        },
    }


def _clean(value):
    """NaN and infinities become null so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_report(path: Path, report: dict) -> Path:
    """Write the report as indented, strict JSON (creating the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(report), indent=2) + "\n")
    return path


def summary_table(runs: Sequence[dict]) -> str:
    """A plain-text table of the runs for the terminal."""
    header = (
        f"{'run':<28} {'ok':>5} {'tok/s':>9} {'req/s':>7} {'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} "
        f"{'e2e p99':>8} {'in SLO':>7}"
    )
    lines = [header, "-" * len(header)]
    for run in runs:
        s = run["summary"]
        attainment = s.get("slo", {}).get("attainment")
        in_slo = "-" if attainment is None or not math.isfinite(attainment) else f"{100 * attainment:.0f}%"
        lines.append(
            f"{run['name']:<28} {s['completed']:>5} {s['output_tokens_per_s']:>9.1f} {s['requests_per_s']:>7.2f} "
            f"{_ms(s['ttft_s']['p50']):>9} {_ms(s['ttft_s']['p99']):>9} {_ms(s['itl_s']['p50']):>8} "
            f"{_ms(s['e2e_s']['p99']):>8} {in_slo:>7}"
        )
    return "\n".join(lines)


def _ms(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    return f"{seconds * 1000:.0f}ms"
