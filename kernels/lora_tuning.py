"""Block sizes and split-K for the segmented LoRA Triton kernels, chosen from tensor SHAPES only.

No autotuning: a config depends on (T, S, sizes, device SM count), never on segment contents, so a
launch is reproducible and safe to capture in a CUDA graph. Under the Triton interpreter (CPU tensors)
the blocks are made large so that few Python-level programs run.

GPU reasoning, per token tile of a segment:
- shrink is a GEMV when a segment holds one token (decode with distinct adapters): it reads
  rank x in weights for a handful of FLOPs, so the reduction over ``in`` is split across SPLIT_K
  programs (fp32 atomics into a zeroed h): enough of them that the grid holds about two programs
  per SM, and at least one per 1024 input features, because a program that streams a long run of
  weights alone is bound by its own load latency (on an H200, Llama-3-8B qkv with 64 distinct
  adapters: 45 us unsplit, 25 us split four ways);
- expand parallelises over output-column tiles, enough of them that even T=1 fills the GPU; wide
  tiles (256 or 512 columns) and a rank block of 16 for rank <= 16 (the same H200 sweep: gate/up
  with 64 distinct adapters 75 us at 128 x 32, 40 us at 512 x 16);
- BLOCK_M follows the average segment length T/S: 16 rows (the smallest ``tl.dot`` tile) when
  segments are short (decode), 64 for prefill-like segments so weights are re-read less;
- few distinct constexpr combinations, because each one is a separate compile (about a second).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class ShrinkConfig:
    block_m: int
    block_n: int  # rank block
    block_k: int  # in-features block
    split_k: int
    num_warps: int = 4
    num_stages: int = 3


@dataclass(frozen=True)
class ExpandConfig:
    block_m: int
    block_n: int  # output-column block
    block_k: int  # rank block
    num_warps: int = 4
    num_stages: int = 2


@functools.lru_cache(maxsize=16)
def num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def block_s(num_segments: int) -> int:
    """Vector width that holds the segment table; powers of 4 so few variants get compiled."""
    width = 16
    while width < num_segments:
        width *= 4
    return width


def _block_m(num_tokens: int, num_segments: int) -> int:
    """16 rows (the smallest tl.dot tile) for decode-like segments, 64 for prefill-like ones."""
    return 16 if num_tokens <= 16 * max(1, num_segments) else 64


def _row_tiles_estimate(num_tokens: int, num_segments: int, block_m: int) -> int:
    """Roughly how many (segment, row tile) pairs are active: bounded by tokens and by segments."""
    return max(1, cdiv(num_tokens, block_m), min(num_segments, num_tokens))


def shrink_config(
    num_tokens: int,
    num_segments: int,
    n_slices: int,
    r_max: int,
    in_features: int,
    sm_count: int | None,
    dtype_bytes: int = 2,
) -> ShrinkConfig:
    """Pick shrink blocks; ``sm_count=None`` means the Triton interpreter (few, large programs)."""
    block_m = _block_m(num_tokens, num_segments)
    if sm_count is None:
        block_n = max(16, next_pow2(r_max))
        block_k = min(256, max(16, next_pow2(in_features)))
        return ShrinkConfig(block_m, block_n, block_k, split_k=1)
    block_n = 16 if block_m == 16 else min(64, max(16, next_pow2(r_max)))
    # Count only programs that surely do work, one rank block per (row tile, slice): the split then
    # does not depend on r_max, so a rank-8 slot is split alike in a rank-64 and a rank-8 pool.
    live = _row_tiles_estimate(num_tokens, num_segments, block_m) * n_slices
    # Decode tiles take 128 input features per load, 64 once the tiles alone fill the SMs (the
    # sweep's fastest for qkv with 64 distinct adapters); prefill tiles 64.
    block_k = 128 if block_m == 16 and live < sm_count else 64
    block_k = min(block_k // (2 if dtype_bytes == 4 else 1), max(16, next_pow2(in_features)))
    split_k = 1
    if live < sm_count:
        split_k = next_pow2(cdiv(2 * sm_count, live))
    if block_m == 16:
        split_k = max(split_k, next_pow2(cdiv(in_features, 1024)))
    split_k = max(1, min(split_k, cdiv(in_features, block_k)))
    if block_m == 16:
        return ShrinkConfig(block_m, block_n, block_k, split_k, num_warps=4, num_stages=3)
    return ShrinkConfig(block_m, block_n, block_k, split_k, num_warps=8, num_stages=4)


def expand_config(
    num_tokens: int,
    num_segments: int,
    out_features: int,
    r_max: int,
    sm_count: int | None,
) -> ExpandConfig:
    """Pick expand blocks (``out_features``: the widest slice); ``sm_count=None``: the interpreter."""
    block_m = _block_m(num_tokens, num_segments)
    if sm_count is None:
        return ExpandConfig(block_m, min(256, max(16, next_pow2(out_features))), max(16, next_pow2(r_max)))
    block_k = 16 if r_max <= 16 else 32
    row_tiles = _row_tiles_estimate(num_tokens, num_segments, block_m)
    if block_m == 16:
        block_n = 512 if row_tiles * cdiv(out_features, 512) >= 2 * sm_count else 256
        return ExpandConfig(block_m, block_n, block_k, num_warps=4, num_stages=2)
    block_n = 128 if row_tiles * cdiv(out_features, 128) >= 2 * sm_count else 64
    return ExpandConfig(block_m, block_n, block_k, num_warps=8, num_stages=2)
