"""Segmented LoRA ops against a float32 per-token loop oracle, on the reference and the Triton path.

The Triton path runs under TRITON_INTERPRET on CPU (tests/conftest.py sets it) and compiled on CUDA.
The interpreter runs one Python program at a time (~10-30 ms each), so the largest grids (hundreds of
one-token segments) run on the reference here and on Triton only where CUDA is present.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from lora_cases import REGIMES, Spec, assert_close, make_case, oracle

from loraplex.kernels import add_lora, add_lora_single, lora_expand, lora_shrink, resolve_backend
from loraplex.kernels.lora_tuning import ExpandConfig, ShrinkConfig

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
BACKENDS = ("torch", "triton")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DTYPE_IDS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
CUDA_ONLY = pytest.mark.skipif(
    not CUDA, reason="interpreter too slow for this grid on CPU: reference here, Triton on CUDA"
)


def _run_add_lora(spec: Spec, backend: str, **triton_cfg) -> None:
    case = make_case(spec).to(DEVICE)
    want, touched, _ = oracle(case)
    y_in = case.y.clone()
    if triton_cfg:
        from loraplex.kernels.lora_triton import add_lora_triton

        out = add_lora_triton(case.y, *case.args, **triton_cfg)
    else:
        out = add_lora(case.y, *case.args, backend=backend)
    assert out is case.y, "add_lora must update y in place and return it"
    assert_close(out, want, spec.dtype)
    untouched = ~touched.to(out.device)
    assert torch.equal(out[untouched], y_in[untouched]), "rows/slices without LoRA must stay bit-identical"


# dtype x popularity regime: 3 fused slices (40/17/33 outputs, in=100), ranks 1..128 mixed in one call.
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_add_lora_regimes(dtype: torch.dtype, regime: str, backend: str) -> None:
    tokens = 12 if regime == "distinct" else 24
    _run_add_lora(Spec(tokens, regime, dtype, seed=10 * REGIMES.index(regime) + DTYPES.index(dtype)), backend)


def _token_sweep():
    for tokens in (1, 2, 64, 512):
        for i, regime in enumerate(REGIMES):
            if tokens == 1 and regime != "distinct":
                continue  # one token: every regime is the same problem
            dtype = DTYPES[(tokens + i) % 3]
            spec = Spec(tokens, regime, dtype, widths=(130, 70), in_features=72, seed=tokens + i)
            heavy = (tokens >= 64 and regime == "distinct") or (tokens >= 512 and regime == "skewed")
            for backend in BACKENDS:
                marks = [CUDA_ONLY] if heavy and backend == "triton" else []
                yield pytest.param(
                    spec, backend, marks=marks, id=f"T{tokens}-{regime}-{DTYPE_IDS[dtype]}-{backend}"
                )


@pytest.mark.parametrize(("spec", "backend"), list(_token_sweep()))
def test_add_lora_token_sweep(spec: Spec, backend: str) -> None:
    _run_add_lora(spec, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_layouts_and_sizes(backend: str) -> None:
    """Strided x, rank-major B, sizes that are no multiple of any block, one slot, no -1 rows."""
    spec = Spec(
        29,
        "uniform",
        torch.float16,
        in_features=33,
        widths=(5, 300, 1),
        rank_choices=(2, 5, 31),
        r_max=31,
        base_rows=False,
        rank_major_b=True,
        strided_x=True,
        seed=7,
    )
    _run_add_lora(spec, backend)


@pytest.mark.parametrize(
    ("dtype", "in_features"),
    [(torch.bfloat16, 100), (torch.float32, 96), (torch.float16, 96)],
    ids=["bf16-odd-in", "fp32-even-in", "fp16-even-in"],
)
def test_triton_gpu_blocking_on_interpreter(dtype: torch.dtype, in_features: int) -> None:
    """Force the GPU-style blocking (split-K atomics, 16-wide rank blocks skipped past a slot's rank,
    several column tiles per slice) so the interpreter runs those paths too."""
    spec = Spec(
        14,
        "skewed",
        dtype,
        in_features=in_features,
        widths=(40, 70),
        rank_choices=(1, 8, 20, 32),
        r_max=32,
        rank_major_b=dtype == torch.float16,
        seed=11,
    )
    _run_add_lora(
        spec,
        "triton",
        shrink_cfg=ShrinkConfig(block_m=16, block_n=16, block_k=32, split_k=3),
        expand_cfg=ExpandConfig(block_m=16, block_n=32, block_k=16),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_shrink_and_expand_separately(backend: str) -> None:
    spec = Spec(21, "skewed", torch.float32, seed=3)
    case = make_case(spec).to(DEVICE)
    want_y, _, want_h = oracle(case)
    h = lora_shrink(case.x, case.lora_a, case.ranks, case.seg_starts, case.seg_slots, backend=backend)
    assert h.dtype == torch.float32 and h.shape == want_h.shape
    assert_close(h, want_h, torch.float32)  # also: zero past each rank and on rows without adapter
    # poison h past each rank: expand must not read it
    h_poisoned = h.clone()
    h_poisoned[want_h == 0] = float("nan")
    out = lora_expand(
        case.y,
        h_poisoned,
        case.lora_b,
        case.ranks,
        case.scaling,
        case.seg_starts,
        case.seg_slots,
        spec.slice_offsets,
        backend=backend,
    )
    assert out is case.y
    assert_close(out, want_y, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS.get)
def test_add_lora_single(dtype: torch.dtype, backend: str) -> None:
    spec = Spec(19, "uniform", dtype, widths=(50,), rank_choices=(4, 16), r_max=16, seed=5)
    case = make_case(spec).to(DEVICE)
    want, _, _ = oracle(case)
    out = add_lora_single(
        case.y,
        case.x,
        case.lora_a[:, 0],
        case.lora_b,
        case.ranks[0],
        case.scaling[0],
        case.seg_starts,
        case.seg_slots,
        backend=backend,
    )
    assert_close(out, want, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_tokens_or_no_segments(backend: str) -> None:
    case = make_case(Spec(0, "uniform", base_rows=False)).to(DEVICE)
    assert case.seg_slots.numel() >= 1  # only empty segments
    add_lora(case.y, *case.args, backend=backend)
    none = make_case(Spec(3, "identical", base_rows=False)).to(DEVICE)
    y_in = none.y.clone()
    starts, slots = torch.tensor([0, 3], dtype=torch.int32), torch.tensor([-1], dtype=torch.int32)
    args = list(none.args)
    args[5], args[6] = starts.to(DEVICE), slots.to(DEVICE)
    add_lora(none.y, *args, backend=backend)
    assert torch.equal(none.y, y_in)


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a GPU")
def test_cuda_graph_replay_with_new_segments() -> None:
    """The launch depends on shapes only: capture once, change the segment table, replay."""
    spec = Spec(32, "uniform", torch.bfloat16, seed=9)
    case = make_case(spec).to("cuda")
    y_static = case.y.clone()
    add_lora(y_static.clone(), *case.args)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        add_lora(y_static, *case.args)
    gen = torch.Generator().manual_seed(1)
    num_segments = case.seg_slots.numel()
    for _ in range(3):  # same slots, new boundaries and order: same shapes, new values
        cuts = torch.randint(0, spec.tokens + 1, (num_segments - 1,), generator=gen).sort().values
        starts = torch.cat([torch.tensor([0]), cuts, torch.tensor([spec.tokens])]).to(torch.int32)
        slots = case.seg_slots.cpu()[torch.randperm(num_segments, generator=gen)]
        case.seg_starts.copy_(starts)
        case.seg_slots.copy_(slots)
        y_in = torch.randn(case.y.shape, generator=gen).to(case.y.dtype)
        y_static.copy_(y_in)
        graph.replay()
        want, _, _ = oracle(dataclasses.replace(case, y=y_in))
        assert_close(y_static, want, spec.dtype)


def test_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORAPLEX_LORA_BACKEND", raising=False)
    assert resolve_backend(torch.device("cuda")) == "triton"
    assert resolve_backend(torch.device("cpu")) == "torch"
    monkeypatch.setenv("LORAPLEX_LORA_BACKEND", "torch")
    assert resolve_backend(torch.device("cuda")) == "torch"
    assert resolve_backend(torch.device("cuda"), "triton") == "triton"
    monkeypatch.setenv("LORAPLEX_LORA_BACKEND", "cutlass")
    with pytest.raises(ValueError, match="backend"):
        resolve_backend(torch.device("cuda"))
    monkeypatch.delenv("LORAPLEX_LORA_BACKEND")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        resolve_backend(torch.device("cpu"), "triton")
