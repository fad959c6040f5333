"""The start-up warm-up reaches every LoRA kernel variant a step can launch."""

import os

import pytest
import torch

from loraplex.kernels.lora_warmup import step_shapes, variants

LLAMA3_8B = {"qkv": (4096, (4096, 1024, 1024)), "down": (14336, (4096,)), "gate_up": (4096, (14336, 14336))}


@pytest.mark.parametrize("sm_count", [132, 16, None])
@pytest.mark.parametrize("name", sorted(LLAMA3_8B))
def test_sampled_shapes_cover_every_step_shape(name, sm_count):
    in_features, widths = LLAMA3_8B[name]
    max_tokens, max_segments = 700, 80
    every = [(t, s) for s in range(1, max_segments + 1) for t in range(s, max_tokens + 1)]
    sampled = step_shapes(max_tokens, max_segments)
    assert len(sampled) < 100
    assert set(variants(in_features, widths, 16, 2, sm_count, sampled)) == set(
        variants(in_features, widths, 16, 2, sm_count, every)
    )


def test_shapes_stay_in_range():
    shapes = step_shapes(4352, 256)
    assert all(1 <= s <= 256 and s <= t <= 4352 for t, s in shapes)
    assert {s for _, s in shapes} == {1, 16, 17, 64, 65, 256}
    assert (4352, 65) in shapes and (1, 1) in shapes


@pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(), reason="Triton"
)
def test_warm_up_launches_without_touching_outputs():
    """Segments without adapter: the launches read and write nothing the engine owns."""
    from loraplex.kernels.lora_warmup import warm_up

    device = "cuda" if torch.cuda.is_available() else "cpu"
    slots, n, r, k, widths = 3, 2, 8, 32, (16, 24)
    a = torch.randn(slots, n, r, k, device=device)
    b = torch.randn(slots, r, sum(widths), device=device).transpose(1, 2)
    ranks = torch.full((n, slots), r, dtype=torch.int32, device=device)
    scaling = torch.ones(n, slots, device=device)
    before = (a.clone(), b.clone())
    assert warm_up(a, b, ranks, scaling, (0, 16, 40), max_tokens=64, max_segments=20) >= 2
    assert torch.equal(a, before[0]) and torch.equal(b, before[1])
