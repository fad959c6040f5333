"""Triton kernels for segmented multi-slice LoRA (SGMV-style shrink and expand).

Work decomposition. Rows are grouped into segments (one adapter slot each). Grid axis 0 enumerates
(segment, BLOCK_M-row tile) pairs of the segments that have an adapter; its size is fixed by shapes
(``T // BLOCK_M + min(S, T)`` is an upper bound) and each program finds its pair with a prefix sum
over ``cdiv(len, BLOCK_M)`` of the segment table, so a 1-token segment costs one tile and a long
prefill segment is tiled over its tokens. Programs past the real count exit at once. The slot, its
rank and its scaling are read on the device: nothing is synced with the host.

- shrink: axis 1 = (slice, rank block), axis 2 = split of ``in``. A rank block at or past the slot's
  rank exits before it loads anything, so rank 8 in a rank-64 pool reads rank 8's bytes. With
  SPLIT_K > 1 the partial sums go to a zeroed h by fp32 atomics (the order of those additions is
  not fixed: results can differ in the last float32 bit from run to run).
- expand: axis 1 = output-column tiles of all slices laid end to end (slice boundaries are
  constexpr, a fused qkv or gate/up projection is one launch). The loop over the rank stops at the
  slot's rank. h stays float32, B is upcast, the dot runs in tf32 (fp32 for float32 weights), and y
  is read, added to in float32 and written once in its own dtype.

Under the Triton interpreter (CPU tensors) float16 and bfloat16 operands of the shrink are upcast to
float32 after loading (UPCAST): the interpreter computes bfloat16 wrongly and float16 matmuls
slowly. Compiled kernels keep the native 16-bit dot with float32 accumulation.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
import triton
import triton.language as tl

from .lora_tuning import (
    ExpandConfig,
    ShrinkConfig,
    block_s,
    cdiv,
    expand_config,
    num_sms,
    shrink_config,
)


@triton.jit
def _locate_tile(pid_m, seg_starts_ptr, seg_slots_ptr, S, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr):
    """Map program pid_m to the pid_m-th (segment, row tile) among segments with slot >= 0.

    Returns (valid, first row of the tile, end row of the segment, slot).
    """
    offs = tl.arange(0, BLOCK_S)
    in_table = offs < S
    starts = tl.load(seg_starts_ptr + offs, mask=in_table, other=0)
    ends = tl.load(seg_starts_ptr + offs + 1, mask=in_table, other=0)
    slots = tl.load(seg_slots_ptr + offs, mask=in_table, other=-1)
    n_tiles = tl.where(slots >= 0, (ends - starts + BLOCK_M - 1) // BLOCK_M, 0)
    cum = tl.cumsum(n_tiles, 0)
    # Segments whose tiles all precede pid_m form a prefix; one max over (cum, lane) packed in a
    # key finds both its length (the segment index) and its tile count (the segment's first tile).
    lanes = 2 * BLOCK_S
    key = tl.where(cum <= pid_m, cum.to(tl.int64) * lanes + offs + 1, 0)
    key = tl.max(key, 0)
    seg = (key % lanes).to(tl.int32)
    first_tile = (key // lanes).to(tl.int32)
    valid = seg < S
    seg = tl.minimum(seg, S - 1)
    row_start = tl.load(seg_starts_ptr + seg) + (pid_m - first_tile) * BLOCK_M
    row_end = tl.load(seg_starts_ptr + seg + 1)
    slot = tl.load(seg_slots_ptr + seg)
    return valid, row_start, row_end, slot


# Segment count and split sizes vary from step to step: no 1 / multiple-of-16 specialisation for
# them, so a new batch composition does not trigger a recompile.
@triton.jit(do_not_specialize=["S", "K_PER_SPLIT", "N_RANK_BLOCKS"])
def _shrink_kernel(
    x_ptr,
    a_ptr,
    ranks_ptr,
    h_ptr,
    seg_starts_ptr,
    seg_slots_ptr,
    S,
    K,
    K_PER_SPLIT,
    N_RANK_BLOCKS,
    stride_xt,
    stride_xk,
    stride_a_slot,
    stride_a_slice,
    stride_ar,
    stride_ak,
    stride_rank_slice,
    stride_rank_slot,
    stride_ht,
    stride_h_slice,
    stride_hr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_S: tl.constexpr,
    EVEN_K: tl.constexpr,
    USE_ATOMIC: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """h[t, s, r] (+)= sum_k x[t, k] * A[slot, s, r, k] over this program's k range, r < rank."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    valid, row_start, row_end, slot = _locate_tile(pid_m, seg_starts_ptr, seg_slots_ptr, S, BLOCK_M, BLOCK_S)
    if not valid:
        return
    slice_id = pid_n // N_RANK_BLOCKS
    r_start = (pid_n % N_RANK_BLOCKS) * BLOCK_N
    slot64 = slot.to(tl.int64)
    rank = tl.load(ranks_ptr + slice_id * stride_rank_slice + slot64 * stride_rank_slot)
    if r_start >= rank:
        return

    offs_m = row_start + tl.arange(0, BLOCK_M)
    offs_n = r_start + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < row_end
    n_mask = offs_n < rank
    k_begin = pid_k * K_PER_SPLIT
    k_end = tl.minimum(k_begin + K_PER_SPLIT, K)

    x_ptrs = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xt + (k_begin + offs_k)[None, :] * stride_xk
    a_ptrs = (
        a_ptr
        + slot64 * stride_a_slot
        + slice_id.to(tl.int64) * stride_a_slice
        + offs_n[None, :] * stride_ar
        + (k_begin + offs_k)[:, None] * stride_ak
    )
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(k_begin, k_end, BLOCK_K):
        if EVEN_K:
            xt = tl.load(x_ptrs, mask=m_mask[:, None], other=0.0)
            at = tl.load(a_ptrs, mask=n_mask[None, :], other=0.0)
        else:
            k_mask = (k + offs_k) < k_end
            xt = tl.load(x_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
            at = tl.load(a_ptrs, mask=n_mask[None, :] & k_mask[:, None], other=0.0)
        if UPCAST:
            xt = xt.to(tl.float32)
            at = at.to(tl.float32)
        acc = tl.dot(xt, at, acc, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        a_ptrs += BLOCK_K * stride_ak

    h_ptrs = (
        h_ptr
        + offs_m.to(tl.int64)[:, None] * stride_ht
        + slice_id * stride_h_slice
        + offs_n[None, :] * stride_hr
    )
    out_mask = m_mask[:, None] & n_mask[None, :]
    if USE_ATOMIC:
        tl.atomic_add(h_ptrs, acc, mask=out_mask, sem="relaxed")
    else:
        tl.store(h_ptrs, acc, mask=out_mask)


@triton.jit(do_not_specialize=["S"])
def _expand_kernel(
    y_ptr,
    h_ptr,
    b_ptr,
    ranks_ptr,
    scaling_ptr,
    seg_starts_ptr,
    seg_slots_ptr,
    S,
    stride_yt,
    stride_yn,
    stride_ht,
    stride_h_slice,
    stride_hr,
    stride_b_slot,
    stride_bn,
    stride_br,
    stride_rank_slice,
    stride_rank_slot,
    stride_scale_slice,
    stride_scale_slot,
    SLICE_OFFSETS: tl.constexpr,
    TILE_OFFSETS: tl.constexpr,
    N_SLICES: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_S: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """y[t, c] += scaling[s, slot] * sum_{r < rank} h[t, s, r] * B[slot, c, r] for c in slice s."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    valid, row_start, row_end, slot = _locate_tile(pid_m, seg_starts_ptr, seg_slots_ptr, S, BLOCK_M, BLOCK_S)
    if not valid:
        return
    slice_id = 0
    col_begin = 0
    col_end = 0
    first_tile = 0
    for i in tl.static_range(N_SLICES):
        if pid_n >= TILE_OFFSETS[i]:
            slice_id = i
            col_begin = SLICE_OFFSETS[i]
            col_end = SLICE_OFFSETS[i + 1]
            first_tile = TILE_OFFSETS[i]
    slot64 = slot.to(tl.int64)
    rank = tl.load(ranks_ptr + slice_id * stride_rank_slice + slot64 * stride_rank_slot)
    if rank == 0:
        return
    scale = tl.load(scaling_ptr + slice_id * stride_scale_slice + slot64 * stride_scale_slot)

    offs_m = row_start + tl.arange(0, BLOCK_M)
    offs_n = col_begin + (pid_n - first_tile) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < row_end
    n_mask = offs_n < col_end
    h_ptrs = (
        h_ptr
        + offs_m.to(tl.int64)[:, None] * stride_ht
        + slice_id * stride_h_slice
        + offs_k[None, :] * stride_hr
    )
    b_ptrs = b_ptr + slot64 * stride_b_slot + offs_n[None, :] * stride_bn + offs_k[:, None] * stride_br
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, rank, BLOCK_K):
        k_mask = (k + offs_k) < rank
        ht = tl.load(h_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        bt = tl.load(b_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0).to(tl.float32)
        acc = tl.dot(ht, bt, acc, input_precision=DOT_PRECISION)
        h_ptrs += BLOCK_K * stride_hr
        b_ptrs += BLOCK_K * stride_br

    y_ptrs = y_ptr + offs_m.to(tl.int64)[:, None] * stride_yt + offs_n[None, :] * stride_yn
    y_mask = m_mask[:, None] & n_mask[None, :]
    y_old = tl.load(y_ptrs, mask=y_mask, other=0.0).to(tl.float32)
    tl.store(y_ptrs, (y_old + acc * scale).to(y_ptr.dtype.element_ty), mask=y_mask)


def _sm_count(device: torch.device) -> int | None:
    """SM count on CUDA; None on CPU, where the kernels run under TRITON_INTERPRET."""
    if device.type != "cuda":
        return None
    return num_sms(device.index if device.index is not None else torch.cuda.current_device())


def _row_grid(num_tokens: int, num_segments: int, block_m: int) -> int:
    """Upper bound on (segment, row tile) pairs: sum_i cdiv(len_i, BM) <= T // BM + #non-empty."""
    return num_tokens // block_m + min(num_segments, num_tokens)


Launch = tuple[tuple[int, ...], list, dict]


def shrink_launch(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    ranks: torch.Tensor,
    h: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slots: torch.Tensor,
    cfg: ShrinkConfig,
    interpret: bool,
) -> Launch:
    """(grid, positional args, constexpr/launch kwargs) of one ``_shrink_kernel`` launch."""
    num_tokens, num_segments = x.shape[0], seg_slots.shape[0]
    _, n_slices, r_max, in_features = lora_a.shape
    k_per_split = cdiv(cdiv(in_features, cfg.split_k), cfg.block_k) * cfg.block_k
    split_k = cdiv(in_features, k_per_split)
    n_rank_blocks = cdiv(r_max, cfg.block_n)
    grid = (_row_grid(num_tokens, num_segments, cfg.block_m), n_slices * n_rank_blocks, split_k)
    args = [x, lora_a, ranks, h, seg_starts, seg_slots, num_segments, in_features, k_per_split, n_rank_blocks]
    args += [*x.stride(), *lora_a.stride(), *ranks.stride(), *h.stride()]
    meta = {
        "BLOCK_M": cfg.block_m,
        "BLOCK_N": cfg.block_n,
        "BLOCK_K": cfg.block_k,
        "BLOCK_S": block_s(num_segments),
        "EVEN_K": in_features % cfg.block_k == 0,
        "USE_ATOMIC": split_k > 1,
        "UPCAST": interpret and x.dtype != torch.float32,
        "DOT_PRECISION": "ieee" if x.dtype == torch.float32 else "tf32",
        "num_warps": cfg.num_warps,
        "num_stages": cfg.num_stages,
    }
    return grid, args, meta


def expand_launch(
    y: torch.Tensor,
    h: torch.Tensor,
    lora_b: torch.Tensor,
    ranks: torch.Tensor,
    scaling: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slots: torch.Tensor,
    slice_offsets: tuple[int, ...],
    cfg: ExpandConfig,
) -> Launch:
    """(grid, positional args, constexpr/launch kwargs) of one ``_expand_kernel`` launch."""
    num_tokens, num_segments = y.shape[0], seg_slots.shape[0]
    tile_offsets = [0]
    for lo, hi in pairwise(slice_offsets):
        tile_offsets.append(tile_offsets[-1] + cdiv(hi - lo, cfg.block_n))
    grid = (_row_grid(num_tokens, num_segments, cfg.block_m), tile_offsets[-1])
    args = [y, h, lora_b, ranks, scaling, seg_starts, seg_slots, num_segments]
    args += [*y.stride(), *h.stride(), *lora_b.stride(), *ranks.stride(), *scaling.stride()]
    meta = {
        "SLICE_OFFSETS": slice_offsets,
        "TILE_OFFSETS": tuple(tile_offsets),
        "N_SLICES": len(slice_offsets) - 1,
        "BLOCK_M": cfg.block_m,
        "BLOCK_N": cfg.block_n,
        "BLOCK_K": cfg.block_k,
        "BLOCK_S": block_s(num_segments),
        "DOT_PRECISION": "ieee" if y.dtype == torch.float32 else "tf32",
        "num_warps": cfg.num_warps,
        "num_stages": cfg.num_stages,
    }
    return grid, args, meta


def lora_shrink_triton(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    ranks: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slots: torch.Tensor,
    *,
    config: ShrinkConfig | None = None,
    zero_fill: bool = True,
) -> torch.Tensor:
    """h[t, s, :rank] = x[t] @ A[a, s, :rank].T per segment with slot a >= 0 (Triton).

    x [T, in], lora_a [slots, n_slices, r_max, in] (same dtype), ranks [n_slices, slots] int32,
    seg_starts [S+1] int32, seg_slots [S] int32 -> h [T, n_slices, r_max] float32, zero elsewhere.
    ``config`` overrides the shape-based block choice (tests use it). ``zero_fill=False`` leaves the
    entries that no program writes (past a rank, rows without adapter) undefined, which saves a
    memset when the reduction is not split; ``add_lora`` uses it since expand never reads them.
    Inputs must be valid.
    """
    num_tokens, num_segments = x.shape[0], seg_slots.shape[0]
    _, n_slices, r_max, in_features = lora_a.shape
    shape = (num_tokens, n_slices, r_max)
    if num_tokens == 0 or num_segments == 0:
        return torch.zeros(shape, dtype=torch.float32, device=x.device)
    sm_count = _sm_count(x.device)
    cfg = config or shrink_config(
        num_tokens, num_segments, n_slices, r_max, in_features, sm_count, x.element_size()
    )
    if zero_fill or cfg.split_k > 1:
        h = torch.zeros(shape, dtype=torch.float32, device=x.device)
    else:
        h = torch.empty(shape, dtype=torch.float32, device=x.device)
    grid, args, meta = shrink_launch(x, lora_a, ranks, h, seg_starts, seg_slots, cfg, sm_count is None)
    _shrink_kernel[grid](*args, **meta)
    return h


def lora_expand_triton(
    y: torch.Tensor,
    h: torch.Tensor,
    lora_b: torch.Tensor,
    ranks: torch.Tensor,
    scaling: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slots: torch.Tensor,
    slice_offsets: Sequence[int],
    *,
    config: ExpandConfig | None = None,
) -> torch.Tensor:
    """y[t, cols_s] += (h[t, s, :rank] @ B[a, cols_s, :rank].T) * scaling[s, a], in place (Triton).

    y [T, out_total], h [T, n_slices, r_max] float32, lora_b [slots, out_total, r_max] (y's dtype),
    ranks [n_slices, slots] int32, scaling [n_slices, slots] float32, slice_offsets: n_slices + 1
    python ints (slice s owns columns slice_offsets[s]:slice_offsets[s+1]). Returns y.
    ``config`` overrides the shape-based block choice (tests use it). Inputs must be valid.
    """
    num_tokens, num_segments = y.shape[0], seg_slots.shape[0]
    offsets = tuple(int(o) for o in slice_offsets)
    if num_tokens == 0 or num_segments == 0 or offsets[-1] == 0:
        return y
    widest = max(hi - lo for lo, hi in pairwise(offsets))
    cfg = config or expand_config(num_tokens, num_segments, widest, lora_b.shape[2], _sm_count(y.device))
    grid, args, meta = expand_launch(y, h, lora_b, ranks, scaling, seg_starts, seg_slots, offsets, cfg)
    _expand_kernel[grid](*args, **meta)
    return y


def add_lora_triton(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    ranks: torch.Tensor,
    scaling: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slots: torch.Tensor,
    slice_offsets: Sequence[int],
    *,
    shrink_cfg: ShrinkConfig | None = None,
    expand_cfg: ExpandConfig | None = None,
) -> torch.Tensor:
    """y[seg, cols_s] += x[seg] @ A[a, s, :rank].T @ B[a, cols_s, :rank].T * scaling[s, a] (Triton).

    Shrink into a float32 h [T, n_slices, r_max], then expand; shapes as in the two ops. Returns y.
    """
    h = lora_shrink_triton(x, lora_a, ranks, seg_starts, seg_slots, config=shrink_cfg, zero_fill=False)
    return lora_expand_triton(
        y, h, lora_b, ranks, scaling, seg_starts, seg_slots, slice_offsets, config=expand_cfg
    )
