"""The paged decode attention kernel against a float64 loop over each sequence's cached keys.

Under TRITON_INTERPRET on CPU (float32) and compiled on CUDA (float32 and bfloat16).
"""

from __future__ import annotations

import math

import pytest
import torch

from loraplex.kernels.paged_attention_triton import paged_decode_attention, supports

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def reference(q, k_cache, v_cache, block_tables, context_lens, scale, window):
    """out[b, h] = softmax(q . K^T * scale) V over positions j < L_b (and L_b - 1 - j < window)."""
    batch, heads, _ = q.shape
    kv_heads, _, block_size, _ = k_cache.shape
    group = heads // kv_heads
    out = torch.empty(q.shape, dtype=torch.float64)
    for b in range(batch):
        length = int(context_lens[b])
        positions = torch.arange(length)
        blocks = block_tables[b, positions // block_size].long().cpu()
        keys = k_cache.cpu()[:, blocks, positions % block_size].double()
        values = v_cache.cpu()[:, blocks, positions % block_size].double()
        visible = torch.ones(length, dtype=torch.bool)
        if window is not None:
            visible &= length - 1 - positions < window
        for h in range(heads):
            scores = keys[h // group] @ q[b, h].cpu().double() * scale
            scores[~visible] = -math.inf
            out[b, h] = torch.softmax(scores, 0) @ values[h // group]
    return out


def make_inputs(batch, heads, kv_heads, head_dim, block_size, max_context, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    num_blocks = batch * -(-max_context // block_size) + 3
    k_cache = torch.randn(kv_heads, num_blocks, block_size, head_dim, generator=generator).to(dtype)
    v_cache = torch.randn(kv_heads, num_blocks, block_size, head_dim, generator=generator).to(dtype)
    context_lens = torch.randint(1, max_context + 1, (batch,), generator=generator)
    context_lens[0] = 1  # a sequence holding only its new token
    context_lens[-1] = max_context
    width = -(-max_context // block_size)
    # Blocks scattered over the pool, no two sequences sharing one.
    order = torch.randperm(num_blocks, generator=generator)[: batch * width].view(batch, width)
    q = torch.randn(batch, heads, head_dim, generator=generator).to(dtype)
    tensors = (q, k_cache, v_cache, order.to(torch.int32), context_lens)
    return [t.to(DEVICE) for t in tensors]


CASES = [
    # batch, heads, kv_heads, head_dim, block_size, max_context, window
    (4, 4, 2, 16, 16, 50, None),
    (3, 8, 2, 32, 16, 70, 20),  # sliding window shorter than the context
    (2, 4, 4, 16, 32, 40, None),  # no grouping; larger blocks
    (5, 6, 2, 16, 16, 33, None),  # group of 3: padded to the dot's 16 rows
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(x) for x in c))
def test_matches_reference_float32(case):
    batch, heads, kv_heads, head_dim, block_size, max_context, window = case
    q, k_cache, v_cache, tables, lens = make_inputs(
        batch, heads, kv_heads, head_dim, block_size, max_context, torch.float32, seed=sum(case[:6])
    )
    out = torch.full_like(q, float("nan"))
    paged_decode_attention(q, k_cache, v_cache, tables, lens, head_dim**-0.5, window, out=out)
    want = reference(q, k_cache, v_cache, tables, lens, head_dim**-0.5, window)
    assert torch.isfinite(out).all(), "every output element must be written"
    error = (out.cpu().double() - want).norm() / want.norm()
    assert error < 1e-5, error


def test_token_rows_of_a_wider_query_tensor():
    """q can be a strided view (as the split of a fused qkv output is) and int64 tables work too."""
    q, k_cache, v_cache, tables, lens = make_inputs(3, 4, 2, 16, 16, 40, torch.float32, seed=7)
    wide = torch.randn(3, 4 * 16 + 32, device=DEVICE)
    wide[:, : 4 * 16] = q.reshape(3, -1)
    view = wide[:, : 4 * 16].view(3, 4, 16)
    out = paged_decode_attention(view, k_cache, v_cache, tables.long(), lens, 0.25)
    want = reference(q, k_cache, v_cache, tables, lens, 0.25, None)
    assert ((out.cpu().double() - want).norm() / want.norm()) < 1e-5


@pytest.mark.skipif(not CUDA, reason="the interpreter computes bfloat16 wrongly")
def test_bfloat16_on_cuda():
    q, k_cache, v_cache, tables, lens = make_inputs(64, 32, 8, 128, 16, 300, torch.bfloat16, seed=3)
    out = paged_decode_attention(q, k_cache, v_cache, tables, lens, 128**-0.5)
    want = reference(q, k_cache, v_cache, tables, lens, 128**-0.5, None)
    assert ((out.cpu().double() - want).norm() / want.norm()) < 1e-2


def test_refuses_sizes_it_cannot_tile():
    assert supports(128, 16) and not supports(96, 16) and not supports(64, 8)
    q = torch.zeros(1, 2, 8)
    cache = torch.zeros(1, 2, 16, 8)
    with pytest.raises(ValueError, match="powers of two"):
        paged_decode_attention(q, cache, cache, torch.zeros(1, 1, dtype=torch.int32), torch.ones(1), 1.0)
