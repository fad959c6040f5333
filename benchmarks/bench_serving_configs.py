"""The serving benchmark's ready configurations: CPU (llama-58m, float32), GPU (Llama-3-8B shapes, bf16),
and the GPU one shrunk to tiny shapes on CPU, which checks its code path where no GPU is."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import torch

from benchmarks.bench_serving_build import LLAMA3_8B, TINY


@dataclass(frozen=True)
class BenchConfig:
    """One ready configuration; `shape` None means the cached llama-58m of benchmarks.random_model."""

    name: str
    model: str
    shape: dict | None
    dtype: str
    device: str
    adapter_counts: tuple[int, ...]
    rank: int
    num_requests: int
    prompt_len: str
    output_len: str
    concurrency: int
    peft_order: tuple[int, ...]
    peft_requests: int | None
    threads: int | None = None
    repeats: int = 1
    peer_reserve_s: float = 0.0
    budget_s: float = 540.0
    server_args: tuple[str, ...] = ()
    unique_adapters: int = 8
    slo_ttft: float = 1.0
    goals: str = "cpu"

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


CONFIGS = {
    "cpu": BenchConfig(
        name="cpu",
        model="llama-58m (random, hidden 512, 8 layers, vocab 32000)",
        shape=None,
        dtype="float32",
        device="cpu",
        adapter_counts=(1, 4, 16, 64),
        rank=16,
        num_requests=64,
        prompt_len="16:64",
        output_len="16:48",
        concurrency=32,
        peft_order=(16, 1, 0, 16, 1),
        peft_requests=None,
        threads=1,
        repeats=2,
        peer_reserve_s=150.0,
        budget_s=540.0,
        slo_ttft=2.0,
        goals="cpu",
    ),
    "gpu": BenchConfig(
        name="gpu",
        model="Llama-3-8B shapes (random, hidden 4096, 32 layers, 32/8 heads, vocab 128256)",
        shape=LLAMA3_8B,
        dtype="bfloat16",
        device="cuda",
        adapter_counts=(1, 8, 64, 512),
        rank=16,
        num_requests=512,  # runs of 256 (4-6 s on an H200) moved by up to half between two runs
        prompt_len="128",
        output_len="32",
        concurrency=64,
        peft_order=(1, 8, 0, 64),
        peft_requests=64,
        budget_s=225.0,
        server_args=("--max-batch-total-tokens", "32768", "--adapter-cpu-cache", "128"),
        unique_adapters=8,
        slo_ttft=1.0,
        goals="gpu",
    ),
}
TINY_GPU = dataclasses.replace(
    CONFIGS["gpu"],
    name="gpu-tiny",
    model="tiny Llama shapes (random, hidden 64, 2 layers), the GPU config's code path on CPU",
    shape=TINY,
    device="cpu",
    adapter_counts=(1, 2, 4, 8),
    num_requests=16,
    prompt_len="16",
    output_len="4",
    concurrency=4,
    peft_order=(1, 2, 0, 4),
    peft_requests=8,
    threads=1,
    budget_s=120.0,
    server_args=("--max-batch-total-tokens", "4096", "--adapter-cpu-cache", "4"),
    unique_adapters=2,
)

# transformers + peft on an H200 with the GPU config's shapes (issue 7), for context when not measured.
PEFT_H200_REFERENCE = {"base": 1554.0, "1": 391.0, "8": 126.0, "64": 17.0}


def add_config_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    """--config and --tiny, for the benchmarks that run these configurations."""
    parser.add_argument("--config", choices=sorted(CONFIGS), default=default)
    parser.add_argument(
        "--tiny", action="store_true", help="GPU config only: tiny shapes on CPU, a quick check"
    )


def chosen_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> BenchConfig:
    """The configuration that --config and --tiny name (--tiny goes with --config gpu only)."""
    if not args.tiny:
        return CONFIGS[args.config]
    if args.config != "gpu":
        parser.error("--tiny goes with --config gpu")
    return TINY_GPU
