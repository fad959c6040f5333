"""Paged decode attention in Triton: one new token per sequence against its keys and values in the cache.

For sequence b with context length L_b (its new token included, already written to the cache) and
query head h, with kv head g = h // (H / H_kv) and key positions j visible to the query at position
L_b - 1 (all j < L_b, and L_b - 1 - j < window when a sliding window is set):

    out[b, h] = sum_j softmax_j(q[b, h] . K[b, g, j] * scale) V[b, g, j]

K[b, g, j] lives at k_cache[g, block_tables[b, j // bs], j % bs] (cache [H_kv, num_blocks, bs, d]).

One program per (sequence, kv head) handles the query heads that share that kv head together
(GQA: a [G, d] x [d, bs] dot per cache block), walks the sequence's blocks once with an online
softmax in float32, and writes [G, d]. Every tensor it reads is named by device values (block
table, context lengths); the grid depends on B and H_kv only, so a launch can be captured in a CUDA
graph and replayed for any contents. Padding rows of a captured batch point at a scratch block with
context length 1.

Needs head_dim and block size powers of two of at least 16 (``supports``), the smallest tl.dot tile.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _paged_decode_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    block_tables_ptr,
    context_lens_ptr,
    out_ptr,
    scale,
    window,
    stride_qt,
    stride_qh,
    stride_ch,
    stride_cb,
    stride_cs,
    stride_bt,
    stride_ot,
    stride_oh,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    context = tl.load(context_lens_ptr + seq).to(tl.int32)
    heads = tl.arange(0, GROUP_PAD)
    dims = tl.arange(0, HEAD_DIM)
    head_ok = heads < GROUP
    q_rows = q_ptr + seq * stride_qt + (kv_head * GROUP + heads)[:, None] * stride_qh + dims[None, :]
    q = tl.load(q_rows, mask=head_ok[:, None], other=0.0)

    first = 0
    if HAS_WINDOW:
        first = tl.maximum(context - window, 0)
    m = tl.full([GROUP_PAD], float("-inf"), tl.float32)  # running max; denom: running sum
    denom = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD_DIM], tl.float32)
    offsets = tl.arange(0, BLOCK_SIZE)
    cache_rows = offsets[:, None] * stride_cs + dims[None, :]
    for index in range(first // BLOCK_SIZE, tl.cdiv(context, BLOCK_SIZE)):
        block = tl.load(block_tables_ptr + seq * stride_bt + index).to(tl.int64)
        base = kv_head * stride_ch + block * stride_cb
        keys = tl.load(k_cache_ptr + base + cache_rows)
        values = tl.load(v_cache_ptr + base + cache_rows)
        scores = tl.dot(q, tl.trans(keys), input_precision=DOT_PRECISION) * scale
        position = index * BLOCK_SIZE + offsets
        visible = (position < context) & (position >= first)
        scores = tl.where(visible[None, :], scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, 1))
        p = tl.exp(scores - m_new[:, None])
        alpha = tl.exp(m - m_new)
        denom = denom * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(values.dtype), values, input_precision=DOT_PRECISION)
        m = m_new
    out = acc / denom[:, None]
    out_rows = out_ptr + seq * stride_ot + (kv_head * GROUP + heads)[:, None] * stride_oh + dims[None, :]
    tl.store(out_rows, out.to(out_ptr.dtype.element_ty), mask=head_ok[:, None])


def supports(head_dim: int, block_size: int) -> bool:
    """Whether the kernel handles these sizes (powers of two, at least 16)."""
    return all(n >= 16 and n & (n - 1) == 0 for n in (head_dim, block_size))


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """q [B, H, d]; k_cache, v_cache [H_kv, num_blocks, bs, d]; block_tables [B, n] int; context_lens
    [B] int (>= 1, each covered by its row of block_tables) -> out [B, H, d] in q's dtype (see the
    module docstring for the math)."""
    batch, num_heads, head_dim = q.shape
    num_kv_heads, _, block_size, cache_dim = k_cache.shape
    if cache_dim != head_dim or num_heads % num_kv_heads or not supports(head_dim, block_size):
        raise ValueError(
            f"paged_decode_attention: q {tuple(q.shape)} and cache {tuple(k_cache.shape)} do not fit "
            "(head_dim and block size must be powers of two >= 16, heads a multiple of kv heads)"
        )
    if q.stride(2) != 1 or k_cache.stride(3) != 1 or v_cache.stride() != k_cache.stride():
        raise ValueError("paged_decode_attention: q and the caches need a contiguous last dimension")
    group = num_heads // num_kv_heads
    if out is None:
        out = torch.empty_like(q)
    if batch == 0:
        return out
    _paged_decode_kernel[(batch, num_kv_heads)](
        q,
        k_cache,
        v_cache,
        block_tables,
        context_lens,
        out,
        scale,
        sliding_window or 0,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        GROUP=group,
        GROUP_PAD=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=head_dim,
        BLOCK_SIZE=block_size,
        HAS_WINDOW=sliding_window is not None,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=4,
    )
    return out
