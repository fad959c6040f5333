"""What one request measured, and the arithmetic over a run: throughput, TTFT, ITL, TPOT, e2e, SLO.

Definitions (all times in seconds, from the client's clock):

- TTFT: first token received - request sent.
- ITL (inter-token latency): the gaps between consecutive tokens of a request, pooled over requests.
- TPOT (time per output token): (e2e - TTFT) / (tokens - 1) per request, requests with >= 2 tokens.
- e2e: last byte of the response - request sent.
- throughput: generated tokens / run duration and completed requests / run duration, where the run
  lasts from the first send to the last response.
- SLO attainment: the share of all requests (failed ones count as misses) within every bound the
  `Slo` sets (TTFT, TPOT, e2e; a request of one token has no TPOT and meets that bound); goodput: the
  requests within them per second of the run, as vLLM's benchmark reports it.

Percentiles interpolate linearly between order statistics (numpy's default "linear" method).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

PERCENTILES = (50, 90, 99)


@dataclass
class RequestResult:
    """Timestamps (absolute, time.perf_counter) and counts of one request."""

    index: int
    adapter_id: str | None
    prompt_len: int
    output_len: int
    start: float
    token_times: list[float] = field(default_factory=list)
    end: float | None = None
    prompt_tokens: int | None = None
    generated_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.end is not None and bool(self.token_times)

    @property
    def num_tokens(self) -> int:
        """Generated tokens: as the server's details report them, else as counted on the stream."""
        return self.generated_tokens if self.generated_tokens is not None else len(self.token_times)

    @property
    def ttft(self) -> float | None:
        return self.token_times[0] - self.start if self.token_times else None

    @property
    def itls(self) -> list[float]:
        times = self.token_times
        return [times[i + 1] - times[i] for i in range(len(times) - 1)]

    @property
    def e2e(self) -> float | None:
        return None if self.end is None else self.end - self.start

    @property
    def tpot(self) -> float | None:
        if not self.ok or self.num_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.num_tokens - 1)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between order statistics; nan for no values."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution(values: Iterable[float | None]) -> dict[str, float]:
    """mean, p50, p90, p99, min and max of the values that are not None."""
    present = [v for v in values if v is not None]
    summary = {"mean": sum(present) / len(present) if present else math.nan}
    summary.update({f"p{q}": percentile(present, q) for q in PERCENTILES})
    summary["min"] = min(present) if present else math.nan
    summary["max"] = max(present) if present else math.nan
    return summary


@dataclass(frozen=True)
class Slo:
    """Latency bounds in seconds (None: no bound on that measure)."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None

    def met_by(self, result: RequestResult) -> bool:
        if not result.ok:
            return False
        tpot = result.tpot
        return (
            (self.ttft_s is None or result.ttft <= self.ttft_s)
            and (self.tpot_s is None or tpot is None or tpot <= self.tpot_s)
            and (self.e2e_s is None or result.e2e <= self.e2e_s)
        )

    def describe(self) -> dict:
        bounds = {"ttft_bound_s": self.ttft_s, "tpot_bound_s": self.tpot_s, "e2e_bound_s": self.e2e_s}
        return {name: bound for name, bound in bounds.items() if bound is not None}


def as_slo(slo: Slo | float | None) -> Slo | None:
    """A bare number is a TTFT bound."""
    return Slo(ttft_s=slo) if isinstance(slo, int | float) else slo


def slo_attainment(results: Sequence[RequestResult], slo: Slo | float) -> float:
    """Share of all requests within `slo` (a number: a TTFT bound); failures count as misses."""
    if not results:
        return math.nan
    slo = as_slo(slo)
    return sum(1 for r in results if slo.met_by(r)) / len(results)


def run_duration(results: Sequence[RequestResult]) -> float:
    """From the first send to the last response among the requests that finished."""
    done = [r for r in results if r.end is not None]
    if not done:
        return math.nan
    return max(r.end for r in done) - min(r.start for r in results)


def summarize(
    results: Sequence[RequestResult], slo: Slo | float | None = None, duration: float | None = None
) -> dict:
    """The run's numbers as a JSON-ready dict (see the module docstring for the definitions)."""
    ok = [r for r in results if r.ok]
    seconds = run_duration(results) if duration is None else duration
    generated = sum(r.num_tokens for r in ok)
    prompt = sum(r.prompt_tokens if r.prompt_tokens is not None else r.prompt_len for r in ok)
    summary = {
        "requests": len(results),
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "length_mismatches": sum(1 for r in ok if r.num_tokens != r.output_len),
        "duration_s": seconds,
        "generated_tokens": generated,
        "prompt_tokens": prompt,
        "requests_per_s": len(ok) / seconds if seconds > 0 else math.nan,
        "output_tokens_per_s": generated / seconds if seconds > 0 else math.nan,
        "total_tokens_per_s": (generated + prompt) / seconds if seconds > 0 else math.nan,
        "ttft_s": distribution(r.ttft for r in ok),
        "itl_s": distribution(gap for r in ok for gap in r.itls),
        "tpot_s": distribution(r.tpot for r in ok),
        "e2e_s": distribution(r.e2e for r in ok),
    }
    slo = as_slo(slo)
    if slo is not None:
        met = sum(1 for r in results if slo.met_by(r))
        summary["slo"] = {
            **slo.describe(),
            "attainment": met / len(results) if results else math.nan,
            "goodput_requests_per_s": met / seconds if seconds > 0 else math.nan,
        }
    errors = sorted({r.error for r in results if r.error})
    if errors:
        summary["errors"] = errors[:5]
    return summary
