"""The fused RMSNorm, rotary and SiLU-and-multiply kernels against the PyTorch code they replace.

Under TRITON_INTERPRET on CPU (float32, float16) and compiled on CUDA (also bfloat16, and inside a
captured CUDA graph). The reference is always the model's own PyTorch path: `RMSNorm.forward_torch`,
`RotaryEmbedding.forward_torch` (rotate_half) and `silu_and_mul_torch`.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

from loraplex.server.models import layers
from loraplex.server.models import rotary as rotary_module
from loraplex.server.models.layers import RMSNorm, silu_and_mul, silu_and_mul_torch
from loraplex.server.models.rotary import RotaryEmbedding

try:
    import triton  # noqa: F401
except ImportError:
    fused = None
else:
    from loraplex.kernels import fused_ops_triton as fused

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
needs_triton = pytest.mark.skipif(fused is None, reason="Triton is not installed")
# float32 on both paths differs only in reduction order and rsqrt's last bit.
TIGHT = {"rtol": 1e-5, "atol": 1e-6}
FLOAT16 = {"rtol": 2e-3, "atol": 2e-3}  # one float16 rounding, either side


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator).to(device=DEVICE, dtype=dtype)


def make_norm(dim: int, dtype: torch.dtype, seed: int) -> RMSNorm:
    norm = RMSNorm(dim, 1e-5, dtype, torch.device(DEVICE))
    norm.weight.copy_(1 + 0.5 * randn(dim, seed=seed + 1))
    return norm


def make_rotary(head_dim: int, rotary_dim: int, dtype: torch.dtype, scaling: dict | None = None):
    config = SimpleNamespace(
        rope_theta=10000.0,
        rope_scaling=scaling,
        partial_rotary_factor=rotary_dim / head_dim,
        max_position_embeddings=64,
    )
    rotary = RotaryEmbedding(config, head_dim, 64, dtype, torch.device(DEVICE))
    assert rotary.rotary_dim == rotary_dim
    return rotary


def make_qkv(tokens: int, heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype, seed: int):
    """q [T, H, d], k and v [T, H_kv, d] as strided views of one fused qkv output, as the model splits it."""
    qkv = randn(tokens, (heads + 2 * kv_heads) * head_dim, seed=seed, dtype=dtype)
    q, k, v = qkv.split((heads * head_dim, kv_heads * head_dim, kv_heads * head_dim), dim=-1)
    return (
        qkv,
        q.view(tokens, heads, head_dim),
        k.view(tokens, kv_heads, head_dim),
        v.view(tokens, kv_heads, head_dim),
    )


# --- RMSNorm -----------------------------------------------------------------------------------------


@needs_triton
@pytest.mark.parametrize("tokens, dim", [(5, 96), (1, 64), (3, 130)])
def test_rms_norm_matches_module(tokens, dim):
    norm = make_norm(dim, torch.float32, seed=dim)
    x = 3 * randn(tokens, dim, seed=tokens)
    out = fused.rms_norm(x, norm.weight, norm.eps)
    torch.testing.assert_close(out, norm.forward_torch(x), **TIGHT)


@needs_triton
def test_rms_norm_strided_rows_and_out():
    """x rows at a stride wider than D (a slice of a wider tensor); the result lands in `out`."""
    norm = make_norm(96, torch.float32, seed=2)
    wide = randn(4, 96 + 13, seed=3)
    x = wide[:, 5 : 5 + 96]
    out = torch.full((4, 96), float("nan"), device=DEVICE)
    assert fused.rms_norm(x, norm.weight, norm.eps, out=out) is out
    torch.testing.assert_close(out, norm.forward_torch(x), **TIGHT)


@needs_triton
def test_rms_norm_float16():
    norm = make_norm(96, torch.float16, seed=4)
    x = randn(3, 96, seed=5, dtype=torch.float16)
    out, want = fused.rms_norm(x, norm.weight, norm.eps), norm.forward_torch(x)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out, want, **FLOAT16)
    # The normalised row is rounded to float16 before the weight multiplies it, as in the module:
    # equal roundings give equal results (skipping that rounding changes about a quarter of them).
    assert (out != want).float().mean() < 0.02


@needs_triton
def test_rms_norm_no_tokens(monkeypatch):
    monkeypatch.setattr(fused, "_rms_norm_kernel", None)  # a launch would fail
    norm = make_norm(96, torch.float32, seed=6)
    out = fused.rms_norm(torch.empty(0, 96, device=DEVICE), norm.weight, norm.eps)
    assert out.shape == (0, 96)


# --- rotary ------------------------------------------------------------------------------------------

ROTARY_CASES = [
    # tokens, heads, kv_heads, head_dim, rotary_dim
    (4, 4, 2, 32, 32),  # GQA, whole head rotated
    (3, 3, 1, 24, 12),  # partial rotary, a half (6) that is not a power of two
    (1, 2, 2, 16, 16),  # one token (decode), no grouping
]


def check_rotary(rotary, tokens, heads, kv_heads, head_dim, dtype, tolerance, seed):
    _, q, k, v = make_qkv(tokens, heads, kv_heads, head_dim, dtype, seed)
    positions = torch.randperm(64, generator=torch.Generator().manual_seed(seed))[:tokens].to(DEVICE)
    before_q, before_k, before_v = q.clone(), k.clone(), v.clone()
    want_q, want_k = rotary.forward_torch(positions, before_q, before_k)
    fused.rotary_(q, k, rotary.cos, rotary.sin, positions, rotary.rotary_dim)
    torch.testing.assert_close(q, want_q, **tolerance)
    torch.testing.assert_close(k, want_k, **tolerance)
    assert torch.equal(v, before_v), "v must be untouched"
    rest = rotary.rotary_dim
    assert torch.equal(q[..., rest:], before_q[..., rest:]) and torch.equal(
        k[..., rest:], before_k[..., rest:]
    )


@needs_triton
@pytest.mark.parametrize("case", ROTARY_CASES, ids=lambda c: "-".join(map(str, c)))
def test_rotary_matches_rotate_half(case):
    """q and k strided views of one qkv row, positions out of order, in place; v and the dimensions
    past rotary_dim stay as they were."""
    tokens, heads, kv_heads, head_dim, rotary_dim = case
    rotary = make_rotary(head_dim, rotary_dim, torch.float32)
    check_rotary(rotary, tokens, heads, kv_heads, head_dim, torch.float32, TIGHT, seed=sum(case))


@needs_triton
def test_rotary_scaled_tables():
    """yarn scales cos and sin by an attention factor: the kernel takes the tables as they are."""
    scaling = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
    rotary = make_rotary(32, 32, torch.float32, scaling)
    assert not torch.allclose(rotary.cos**2 + rotary.sin**2, torch.ones_like(rotary.cos))
    check_rotary(rotary, 3, 2, 1, 32, torch.float32, TIGHT, seed=11)


@needs_triton
def test_rotary_reads_both_halves_of_the_tables():
    """Arbitrary tables (halves not equal): the kernel applies x * cos + rotate_half(x) * sin literally."""
    rotary = make_rotary(16, 16, torch.float32)
    rotary.cos.copy_(randn(*rotary.cos.shape, seed=12))
    rotary.sin.copy_(randn(*rotary.sin.shape, seed=13))
    check_rotary(rotary, 3, 2, 1, 16, torch.float32, TIGHT, seed=14)


@needs_triton
def test_rotary_float16():
    rotary = make_rotary(24, 12, torch.float16)
    check_rotary(rotary, 3, 2, 1, 24, torch.float16, FLOAT16, seed=15)


@needs_triton
def test_rotary_no_tokens(monkeypatch):
    monkeypatch.setattr(fused, "_rotary_kernel", None)  # a launch would fail
    _, q, k, _ = make_qkv(0, 2, 1, 16, torch.float32, seed=0)
    rotary = make_rotary(16, 16, torch.float32)
    fused.rotary_(q, k, rotary.cos, rotary.sin, torch.empty(0, dtype=torch.int64, device=DEVICE), 16)


@needs_triton
def test_rotary_refuses_mismatched_shapes():
    _, q, k, _ = make_qkv(2, 2, 1, 16, torch.float32, seed=0)
    rotary = make_rotary(16, 16, torch.float32)
    positions = torch.zeros(2, dtype=torch.int64, device=DEVICE)
    with pytest.raises(ValueError, match="do not fit"):
        fused.rotary_(q, k, rotary.cos, rotary.sin, positions, 8)  # tables are [P, 16]
    strided_last = torch.zeros(2, 16, 2, device=DEVICE).transpose(1, 2)  # [T, H, d], d at stride 2
    with pytest.raises(ValueError, match="contiguous"):
        fused.rotary_(strided_last, k, rotary.cos, rotary.sin, positions, 16)


# --- silu_and_mul --------------------------------------------------------------------------------------


@needs_triton
@pytest.mark.parametrize("tokens, inter", [(5, 48), (1, 7), (2, 1500)])  # 1500: two column blocks
def test_silu_and_mul_matches_torch(tokens, inter):
    gate_up = 3 * randn(tokens, 2 * inter, seed=inter)
    torch.testing.assert_close(fused.silu_and_mul(gate_up), silu_and_mul_torch(gate_up), **TIGHT)


@needs_triton
def test_silu_and_mul_strided_rows_and_out():
    wide = randn(3, 2 * 40 + 9, seed=16)
    gate_up = wide[:, 9:]
    out = torch.full((3, 40), float("nan"), device=DEVICE)
    assert fused.silu_and_mul(gate_up, out=out) is out
    torch.testing.assert_close(out, silu_and_mul_torch(gate_up), **TIGHT)


@needs_triton
def test_silu_and_mul_float16():
    gate_up = randn(3, 2 * 40, seed=17, dtype=torch.float16)
    out = fused.silu_and_mul(gate_up)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out, silu_and_mul_torch(gate_up), **FLOAT16)


@needs_triton
def test_silu_and_mul_no_tokens(monkeypatch):
    monkeypatch.setattr(fused, "_silu_and_mul_kernel", None)  # a launch would fail
    assert fused.silu_and_mul(torch.empty(0, 32, device=DEVICE)).shape == (0, 16)


# --- wiring ----------------------------------------------------------------------------------------------


def test_cpu_paths_need_no_triton():
    """With Triton unimportable, the model's layers still import and run their PyTorch code on CPU."""
    script = textwrap.dedent(
        """
        import sys
        sys.modules["triton"] = None  # import triton -> ImportError
        import torch
        from loraplex.server.models import layers, llama, rotary
        assert layers.fused_ops() is None
        norm = layers.RMSNorm(8, 1e-5, torch.float32, torch.device("cpu"))
        norm.weight.fill_(1.0)
        x = torch.randn(2, 8)
        assert torch.equal(norm(x), norm.forward_torch(x))
        assert torch.equal(layers.silu_and_mul(torch.ones(2, 8)), layers.silu_and_mul_torch(torch.ones(2, 8)))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


def test_cpu_forward_is_the_torch_path(monkeypatch):
    """On CPU tensors the modules never reach for the fused kernels (CPU tests compare with transformers)."""

    def no_fused_ops():
        raise AssertionError("the fused kernels were asked for on CPU tensors")

    monkeypatch.setattr(layers, "fused_ops", no_fused_ops)
    monkeypatch.setattr(rotary_module, "fused_ops", no_fused_ops)
    device = torch.device("cpu")
    norm = RMSNorm(16, 1e-5, torch.float32, device)
    norm.weight.fill_(1.5)
    x = torch.randn(3, 16)
    assert torch.equal(norm(x), norm.forward_torch(x))
    rotary = RotaryEmbedding(SimpleNamespace(rope_theta=10000.0), 16, 8, torch.float32, device)
    q, k = torch.randn(3, 2, 16), torch.randn(3, 1, 16)
    positions = torch.tensor([5, 0, 2])
    got_q, got_k = rotary(positions, q, k)
    want_q, want_k = rotary.forward_torch(positions, q, k)
    assert got_q is not q and torch.equal(got_q, want_q) and torch.equal(got_k, want_k)
    gate_up = torch.randn(3, 16)
    assert torch.equal(silu_and_mul(gate_up), silu_and_mul_torch(gate_up))


# --- CUDA --------------------------------------------------------------------------------------------

BFLOAT16 = {"rtol": 1.6e-2, "atol": 1e-2}  # about two bfloat16 units in the last place


def relative_error(got: torch.Tensor, exact: torch.Tensor) -> float:
    return float((got.double() - exact).norm() / exact.norm())


@pytest.mark.skipif(not CUDA or fused is None, reason="needs CUDA and Triton")
def test_modules_in_bfloat16_on_cuda():
    """The modules' CUDA paths (fused) against their PyTorch paths at Llama-3-8B sizes, in bfloat16:
    within a unit or two in the last place, and no farther from the float64 result than PyTorch is."""
    tokens, hidden, heads, kv_heads, head_dim, inter = 37, 4096, 32, 8, 128, 14336
    dtype = torch.bfloat16

    norm = make_norm(hidden, dtype, seed=20)
    x = 4 * randn(tokens, hidden, seed=21, dtype=dtype)
    got, want = norm(x), norm.forward_torch(x)
    torch.testing.assert_close(got, want, **BFLOAT16)
    assert (got != want).float().mean() < 0.01, "the same roundings as PyTorch, up to rsqrt's last bit"

    rotary = make_rotary(head_dim, head_dim, dtype)
    _, q, k, _ = make_qkv(tokens, heads, kv_heads, head_dim, dtype, seed=22)
    positions = torch.randint(0, 64, (tokens,), device=DEVICE)
    cos, sin = (table[positions].double().unsqueeze(1) for table in (rotary.cos, rotary.sin))
    exact_q, exact_k = (rotary._rotate(t.double(), cos, sin) for t in (q, k))  # the same bfloat16 tables
    want_q, want_k = rotary.forward_torch(positions, q, k)
    got_q, got_k = rotary(positions, q, k)
    assert got_q is q and got_k is k, "rotated in place"
    for got, want, exact in ((got_q, want_q, exact_q), (got_k, want_k, exact_k)):
        torch.testing.assert_close(got, want, **BFLOAT16)
        assert relative_error(got, exact) <= relative_error(want, exact) * 1.05

    gate_up = 2 * randn(tokens, 2 * inter, seed=23, dtype=dtype)
    got, want = silu_and_mul(gate_up), silu_and_mul_torch(gate_up)
    exact = silu_and_mul_torch(gate_up.double())
    torch.testing.assert_close(got, want, **BFLOAT16)
    assert relative_error(got, exact) <= relative_error(want, exact) * 1.05


@pytest.mark.skipif(not CUDA or fused is None, reason="needs CUDA and Triton")
def test_captured_in_a_cuda_graph():
    """The three kernels replay from a captured graph on new contents of the same input buffers."""
    tokens, hidden, heads, kv_heads, head_dim, inter = 8, 256, 4, 2, 64, 96
    dtype = torch.bfloat16
    norm = make_norm(hidden, dtype, seed=30)
    rotary = make_rotary(head_dim, head_dim, dtype)
    x = torch.zeros(tokens, hidden, device=DEVICE, dtype=dtype)
    qkv, q, k, _ = make_qkv(tokens, heads, kv_heads, head_dim, dtype, seed=0)
    gate_up = torch.zeros(tokens, 2 * inter, device=DEVICE, dtype=dtype)
    positions = torch.zeros(tokens, dtype=torch.int64, device=DEVICE)

    def step():
        rotary(positions, q, k)
        return norm(x), silu_and_mul(gate_up)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # compiles the kernels before the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        normed, activated = step()

    x.copy_(randn(tokens, hidden, seed=31, dtype=dtype))
    qkv.copy_(randn(*qkv.shape, seed=32, dtype=dtype))
    gate_up.copy_(randn(tokens, 2 * inter, seed=33, dtype=dtype))
    positions.copy_(torch.randperm(64, device=DEVICE)[:tokens])
    want_q, want_k = rotary.forward_torch(positions, q.clone(), k.clone())
    graph.replay()
    torch.testing.assert_close(normed, norm.forward_torch(x), **BFLOAT16)
    torch.testing.assert_close(activated, silu_and_mul_torch(gate_up), **BFLOAT16)
    torch.testing.assert_close(q, want_q, **BFLOAT16)
    torch.testing.assert_close(k, want_k, **BFLOAT16)
