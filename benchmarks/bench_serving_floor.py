"""The byte floor of a decode step, and how close a measured run comes to it.

A decode step of B sequences must at least read every weight once (the embedding table only for the
B rows it looks up), the KV cache of every sequence, and the A and B matrices of every distinct
adapter in the batch. At the device's copy bandwidth that takes

    floor_s = (weight bytes + KV bytes + distinct adapters x adapter bytes) / bandwidth

Bandwidth is measured, not looked up: a device-to-device copy of a large buffer, counting the bytes
read and written. The fraction reached is floor_s over the measured decode step time (the median
inter-token latency, which in a steady closed loop is one decode step), and the measured tokens/s
over the floor's B / floor_s (lower: it also pays for prefill).
"""

from __future__ import annotations

import math
import time

import torch

from benchmarks.bench_serving_build import adapter_bytes, llama_tensors


def copy_bandwidth(device: str, nbytes: int = 1 << 30, repeats: int = 10) -> float:
    """Bytes/s of `dst.copy_(src)` (read + write), the best of `repeats`."""
    target = torch.device(device)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=target)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats + 1):
        if target.type == "cuda":
            torch.cuda.synchronize(target)
        started = time.perf_counter()
        dst.copy_(src)
        if target.type == "cuda":
            torch.cuda.synchronize(target)
        best = min(best, time.perf_counter() - started)
    del src, dst
    return 2 * nbytes / best


def step_bytes(
    shape: dict, element: int, batch: int, context: float, distinct_adapters: int, rank: int
) -> dict:
    """Bytes one decode step of `batch` sequences with `context` tokens each must read."""
    hidden = shape["hidden_size"]
    head_dim = hidden // shape["num_attention_heads"]
    weights = 0
    for name, tensor_shape in llama_tensors(shape):
        lookups = name == "model.embed_tokens.weight"
        weights += (batch * hidden if lookups else math.prod(tensor_shape)) * element
    kv_per_token = shape["num_hidden_layers"] * 2 * shape["num_key_value_heads"] * head_dim * element
    kv = int(batch * (context + 1) * kv_per_token)
    adapters = distinct_adapters * adapter_bytes(shape, rank, element) if rank else 0
    return {"weights": weights, "kv": kv, "adapters": adapters, "total": weights + kv + adapters}


def floor_fraction(
    run: dict, shape: dict, element: int, bandwidth: float, batch: int, context: float, rank: int
) -> dict:
    """The floor of a run's decode step and the fraction of it reached (see the module docstring)."""
    distinct = min(run.get("distinct_adapters", 0), batch)
    need = step_bytes(shape, element, batch, context, distinct, rank)
    floor_s = need["total"] / bandwidth
    summary = run["summary"]
    step_s = summary["itl_s"]["p50"]
    tokens_per_s = summary["output_tokens_per_s"]
    return {
        "distinct_adapters_per_step": distinct,
        "bytes": need,
        "floor_step_s": floor_s,
        "measured_step_s": step_s,
        "fraction_of_floor_step": floor_s / step_s if step_s else None,
        "floor_tokens_per_s": batch / floor_s,
        "fraction_of_floor_throughput": tokens_per_s / (batch / floor_s),
    }
