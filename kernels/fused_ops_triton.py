"""Fused elementwise kernels for a decoder layer on CUDA: RMSNorm, rotary embedding, SiLU-and-multiply.

Each replaces a chain of small PyTorch kernels (about 6 for a norm, 10 for rope, 3 for the MLP
activation) with one launch. All arithmetic is in float32; inputs are read in their dtype (float32,
float16 or bfloat16) and results rounded to it once.

rms_norm, x [T, D] (rows at any stride) -> y [T, D]:

    y[t] = w * (x32[t] * rsqrt(mean_i(x32[t, i]^2) + eps)).to(x.dtype)

The normalised row is rounded to x's dtype before the weight multiplies it, as the PyTorch module
(and transformers) does; the product with w is then taken in float32 and rounded once to the output
dtype (the promotion of x's and w's dtypes). For bfloat16 or float16 inputs that product of two
values is exact in float32, so the single rounding equals PyTorch's elementwise multiply. The sum of
squares is reduced in another order than PyTorch's, so rsqrt can differ in the last float32 bit and
a handful of outputs by one unit in the last place of a 16-bit dtype.

rotary_, in place on q [T, H, d] and k [T, H_kv, d], with cos, sin [P, r] tables (r = rotary_dim,
rows indexed by positions [T]; rope's "rotate_half" / NeoX convention, h = r / 2, i < h):

    out[i]     = x[i]     * cos[p, i]     - x[i + h] * sin[p, i]
    out[i + h] = x[i + h] * cos[p, i + h] + x[i]     * sin[p, i + h]

Dimensions r..d are left as they are (partial rotary). PyTorch rounds x * cos, rotate_half(x) * sin
and their sum separately in a 16-bit dtype; this rounds once, so in bfloat16 an output can differ
from PyTorch's by about one unit in the last place (and is closer to the exact value).

silu_and_mul, gate_up [T, 2I] -> out [T, I]:  out = silu(g) * u = g / (1 + exp(-g)) * u, with g and u
the two halves of each row; PyTorch rounds silu(g) before the product, this does not.

The grids depend on shapes only and no value is read on the host, so every call can be captured in
a CUDA graph. T == 0 launches nothing.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def _num_warps(block: int) -> int:
    """Warps for a program over `block` elements: about 8 elements a thread for one vector load each."""
    return min(max(block // 256, 1), 8)


def _check_out(op: str, out: torch.Tensor, shape: tuple[int, int]) -> None:
    if tuple(out.shape) != shape or (shape[0] and out.stride(1) != 1):
        raise ValueError(
            f"{op}: out {tuple(out.shape)} (stride {out.stride()}) should be {shape}, last dimension "
            "contiguous"
        )


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    w_ptr,
    out_ptr,
    eps,
    stride_xt,
    stride_ot,
    D,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < D
    x = tl.load(x_ptr + row * stride_xt + cols, mask=mask, other=0.0)
    x32 = x.to(tl.float32)
    rstd = tl.math.rsqrt(tl.sum(x32 * x32, axis=0) / D + eps)
    normed = (x32 * rstd).to(x.dtype).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_ot + cols, (normed * w).to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, out: torch.Tensor | None = None
) -> torch.Tensor:
    """x [T, D] (rows at any stride), weight [D], eps -> y [T, D] in the promotion of x's and weight's
    dtypes, written to `out` (rows at any stride) if given (see the module docstring)."""
    tokens, dim = x.shape
    if weight.shape != (dim,):
        raise ValueError(f"rms_norm: weight {tuple(weight.shape)} does not fit x {tuple(x.shape)}")
    if x.stride(1) != 1:
        x = x.contiguous()
    if out is None:
        out = torch.empty((tokens, dim), dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    _check_out("rms_norm", out, (tokens, dim))
    if tokens == 0:
        return out
    block = triton.next_power_of_2(dim)
    _rms_norm_kernel[(tokens,)](
        x,
        weight.contiguous(),
        out,
        eps,
        x.stride(0),
        out.stride(0),
        dim,
        BLOCK_D=block,
        num_warps=_num_warps(block),
    )
    return out


@triton.jit
def _rotate_head(
    x_ptr,
    cos_lo,
    sin_lo,
    cos_hi,
    sin_hi,
    cols,
    mask,
    HALF: tl.constexpr,
):
    """One head's rotated dimensions, in place: x_ptr points at its first element."""
    lo = tl.load(x_ptr + cols, mask=mask, other=0.0)
    hi = tl.load(x_ptr + HALF + cols, mask=mask, other=0.0)
    lo32 = lo.to(tl.float32)
    hi32 = hi.to(tl.float32)
    tl.store(x_ptr + cols, (lo32 * cos_lo - hi32 * sin_lo).to(lo.dtype), mask=mask)
    tl.store(x_ptr + HALF + cols, (hi32 * cos_hi + lo32 * sin_hi).to(lo.dtype), mask=mask)


@triton.jit
def _rotary_kernel(
    q_ptr,
    k_ptr,
    cos_ptr,
    sin_ptr,
    positions_ptr,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_cos,
    stride_sin,
    NUM_Q_HEADS: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    position = tl.load(positions_ptr + token).to(tl.int64)
    cols = tl.arange(0, BLOCK_HALF)
    mask = cols < HALF
    cos_row = cos_ptr + position * stride_cos + cols
    sin_row = sin_ptr + position * stride_sin + cols
    cos_lo = tl.load(cos_row, mask=mask, other=0.0).to(tl.float32)
    sin_lo = tl.load(sin_row, mask=mask, other=0.0).to(tl.float32)
    cos_hi = tl.load(cos_row + HALF, mask=mask, other=0.0).to(tl.float32)
    sin_hi = tl.load(sin_row + HALF, mask=mask, other=0.0).to(tl.float32)
    if head < NUM_Q_HEADS:
        _rotate_head(
            q_ptr + token * stride_qt + head * stride_qh, cos_lo, sin_lo, cos_hi, sin_hi, cols, mask, HALF
        )
    else:
        kv_head = head - NUM_Q_HEADS
        _rotate_head(
            k_ptr + token * stride_kt + kv_head * stride_kh, cos_lo, sin_lo, cos_hi, sin_hi, cols, mask, HALF
        )


def rotary_(
    q: torch.Tensor,
    k: torch.Tensor,
    cos_table: torch.Tensor,
    sin_table: torch.Tensor,
    positions: torch.Tensor,
    rotary_dim: int,
) -> None:
    """Rotates q [T, H, d] and k [T, H_kv, d] in place by the rows `positions` [T] (int) of the cos and
    sin tables [P, rotary_dim], over their first rotary_dim dimensions (see the module docstring).

    q and k may be strided views (the split of a fused qkv projection) with a contiguous last
    dimension and the same dtype; one launch covers both, one program per (token, head).
    """
    tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    if (
        k.shape[0] != tokens
        or k.shape[2] != head_dim
        or q.dtype != k.dtype
        or rotary_dim % 2
        or not 0 < rotary_dim <= head_dim
        or cos_table.shape[-1] != rotary_dim
        or sin_table.shape[-1] != rotary_dim
        or positions.shape != (tokens,)
    ):
        raise ValueError(
            f"rotary_: q {tuple(q.shape)} {q.dtype}, k {tuple(k.shape)} {k.dtype}, tables "
            f"{tuple(cos_table.shape)}/{tuple(sin_table.shape)}, positions {tuple(positions.shape)} and "
            f"rotary_dim {rotary_dim} do not fit"
        )
    if q.stride(2) != 1 or k.stride(2) != 1 or cos_table.stride(-1) != 1 or sin_table.stride(-1) != 1:
        raise ValueError("rotary_: q, k and the tables need a contiguous last dimension")
    if tokens == 0:
        return
    half = rotary_dim // 2
    _rotary_kernel[(tokens, num_heads + num_kv_heads)](
        q,
        k,
        cos_table,
        sin_table,
        positions,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        cos_table.stride(0),
        sin_table.stride(0),
        NUM_Q_HEADS=num_heads,
        HALF=half,
        BLOCK_HALF=triton.next_power_of_2(half),
        num_warps=1 if half <= 64 else 2,
    )


@triton.jit
def _silu_and_mul_kernel(
    gate_up_ptr,
    out_ptr,
    stride_gt,
    stride_ot,
    INTER,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < INTER
    gate = tl.load(gate_up_ptr + row * stride_gt + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_up_ptr + row * stride_gt + INTER + cols, mask=mask, other=0.0).to(tl.float32)
    result = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(out_ptr + row * stride_ot + cols, result.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(gate_up: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """gate_up [T, 2I] (rows at any stride) -> out [T, I] = silu(gate) * up in gate_up's dtype, written
    to `out` (rows at any stride) if given (see the module docstring)."""
    tokens, width = gate_up.shape
    if width % 2:
        raise ValueError(f"silu_and_mul: gate_up {tuple(gate_up.shape)} needs an even last dimension")
    if gate_up.stride(1) != 1:
        gate_up = gate_up.contiguous()
    inter = width // 2
    if out is None:
        out = torch.empty((tokens, inter), dtype=gate_up.dtype, device=gate_up.device)
    _check_out("silu_and_mul", out, (tokens, inter))
    if tokens == 0:
        return out
    block = min(triton.next_power_of_2(inter), 1024)
    _silu_and_mul_kernel[(tokens, triton.cdiv(inter, block))](
        gate_up,
        out,
        gate_up.stride(0),
        out.stride(0),
        inter,
        BLOCK=block,
        num_warps=_num_warps(block),
    )
    return out
