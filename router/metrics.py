"""Prometheus metrics: per-request counters and latency histograms observed by the HTTP side, and
engine gauges (queue, batch, KV cache, adapter cache, GPU) read from the engine at scrape time."""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from loraplex.server.engine import Engine

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
BASE_MODEL_LABEL = "base"
OTHER_LABEL = "other"
# Requests whose adapter id could not be resolved (malformed, unknown): one label, so that made-up
# ids neither use up the label limit nor put client-chosen strings in the metrics.
UNRESOLVED_LABEL = "unresolved"


class AdapterLabels:
    """At most `limit` distinct adapter label values; later adapters are all counted as "other"."""

    def __init__(self, limit: int):
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, adapter_id: str | None) -> str:
        if not adapter_id:
            return BASE_MODEL_LABEL
        if adapter_id == UNRESOLVED_LABEL:
            return UNRESOLVED_LABEL
        with self._lock:
            if adapter_id in self._seen:
                return adapter_id
            if len(self._seen) < self.limit:
                self._seen.add(adapter_id)
                return adapter_id
        return OTHER_LABEL


class Metrics:
    def __init__(self, engine: Callable[[], Engine | None], adapter_label_limit: int = 100):
        self.registry = CollectorRegistry()
        self.label = AdapterLabels(adapter_label_limit)
        r = self.registry
        self.requests = Counter(
            "loraplex_requests",
            "Requests by adapter and outcome (success or error_type)",
            ["adapter", "outcome"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "loraplex_request_duration_seconds", "Arrival to last token", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_seconds = Histogram(
            "loraplex_request_queue_duration_seconds",
            "Arrival to first scheduled step",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "loraplex_request_inference_duration_seconds",
            "First scheduled step to last token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft_seconds = Histogram(
            "loraplex_time_to_first_token_seconds",
            "Arrival to first generated token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl_seconds = Histogram(
            "loraplex_inter_token_latency_seconds",
            "Time between consecutive generated tokens",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "loraplex_prompt_tokens", "Prompt tokens of finished requests", ["adapter"], registry=r
        )
        self.generated_tokens = Counter(
            "loraplex_generated_tokens", "Generated tokens of finished requests", ["adapter"], registry=r
        )
        r.register(EngineCollector(engine))

    def count(self, adapter_id: str | None, outcome: str) -> None:
        self.requests.labels(self.label(adapter_id), outcome).inc()

    def observe_finished(self, adapter_id: str | None, output, arrival: float, finished: float) -> None:
        """A request that completed: its counters and latencies (times are engine monotonic stamps)."""
        label = self.label(adapter_id)
        self.requests.labels(label, "success").inc()
        self.prompt_tokens.labels(label).inc(output.prompt_tokens)
        self.generated_tokens.labels(label).inc(output.generated_tokens)
        times = output.times
        self.request_seconds.observe(finished - arrival)
        if times is not None and times.scheduled is not None:
            self.queue_seconds.observe(max(times.scheduled - times.arrival, 0.0))
            self.inference_seconds.observe(max((times.finished or finished) - times.scheduled, 0.0))
        if times is not None and times.first_token is not None:
            self.ttft_seconds.observe(max(times.first_token - times.arrival, 0.0))

    def observe_token_gap(self, seconds: float) -> None:
        self.itl_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class EngineCollector:
    """Gauges read from the engine when Prometheus scrapes (nothing is added to the step loop)."""

    def __init__(self, engine: Callable[[], Engine | None]):
        self.engine = engine

    def collect(self):
        engine = self.engine()
        if engine is None:
            return
        yield _gauge("loraplex_running_requests", "Requests in the running batch", engine.num_running)
        yield _gauge("loraplex_waiting_requests", "Requests waiting to be scheduled", engine.num_waiting)
        rows = engine.last_batch_size if engine.scheduler.has_work else 0  # idle: no step, no rows
        yield _gauge("loraplex_batch_size", "Rows in the last engine step", rows)
        yield _counter("loraplex_engine_steps", "Engine steps run", engine.num_steps)
        yield _counter(
            "loraplex_batched_rows",
            "Rows over all steps (divide by steps for the mean batch)",
            engine.num_batched_rows,
        )
        yield _counter(
            "loraplex_preemptions", "Requests preempted for KV space", engine.scheduler.num_preemptions
        )
        allocator = engine.allocator
        used = allocator.num_blocks - allocator.num_free_blocks
        yield _gauge("loraplex_kv_cache_blocks_used", "KV cache blocks in use", used)
        # Not "_total": Prometheus keeps that suffix for counters.
        yield _gauge("loraplex_kv_cache_blocks_capacity", "KV cache blocks in the pool", allocator.num_blocks)
        yield _gauge(
            "loraplex_kv_cache_usage_ratio",
            "Fraction of KV cache blocks in use",
            used / max(allocator.num_blocks, 1),
        )
        tiers = GaugeMetricFamily("loraplex_adapters_resident", "Known adapters by tier", labels=["tier"])
        for tier, count in engine.adapters.tier_counts().items():
            tiers.add_metric([tier], count)
        yield tiers
        yield _gauge("loraplex_adapter_slots", "GPU adapter slots", engine.adapters.slots.num_slots)
        stats = engine.adapters.stats
        yield _counter("loraplex_adapter_loads", "Adapter loads from disk or hub", stats.loads)
        yield _counter("loraplex_adapter_load_failures", "Adapter loads that failed", stats.load_failures)
        yield _counter("loraplex_adapter_load_seconds", "Seconds spent loading adapters", stats.load_seconds)
        yield _counter("loraplex_adapter_evictions", "Adapters evicted from a GPU slot", stats.evictions)
        yield _counter(
            "loraplex_adapter_cache_hits", "Requests whose adapter was already in a GPU slot", stats.hits
        )
        yield _counter(
            "loraplex_adapter_cache_misses", "Adapter loads started by a request or the API", stats.misses
        )
        if engine.device.type == "cuda":
            yield from _gpu_metrics(engine.device)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gpu_metrics(device: torch.device):
    free, total = torch.cuda.mem_get_info(device)
    yield _gauge("loraplex_gpu_memory_used_bytes", "GPU memory in use (all processes)", total - free)
    yield _gauge("loraplex_gpu_memory_total_bytes", "GPU memory", total)
    try:
        utilization = torch.cuda.utilization(device)  # through NVML (nvidia-ml-py)
    except Exception:  # noqa: BLE001 - NVML missing or unsupported: leave the gauge out
        return
    yield _gauge(
        "loraplex_gpu_utilization_ratio", "GPU utilization over the last sample period", utilization / 100
    )
