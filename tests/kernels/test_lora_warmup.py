"""The start-up warm-up reaches every LoRA kernel variant a step can launch."""

import os

import pytest
import torch

from loraplex.kernels.lora_tuning import block_s
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
def test_warm_up_launches_each_variant_once_on_segments_without_adapter(monkeypatch):
    """Every variant `variants` finds is launched once, with its own config and a segment table of
    its width, all of it without adapter (slot -1): nothing is read from or added for any adapter."""
    from loraplex.kernels import lora_warmup

    launched = []

    def recorder(kernel):
        real = getattr(lora_warmup, f"lora_{kernel}_triton")

        def record(*args, config, **kwargs):
            seg_starts, seg_slots = (args[3], args[4]) if kernel == "shrink" else (args[5], args[6])
            assert (seg_slots == -1).all() and seg_starts.numel() == seg_slots.numel() + 1
            launched.append((kernel, config, block_s(seg_slots.numel())))
            return real(*args, config=config, **kwargs)

        return record

    monkeypatch.setattr(lora_warmup, "lora_shrink_triton", recorder("shrink"))
    monkeypatch.setattr(lora_warmup, "lora_expand_triton", recorder("expand"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    slots, n, r, k, widths = 3, 2, 8, 32, (16, 24)
    a = torch.randn(slots, n, r, k, device=device)
    b = torch.randn(slots, r, sum(widths), device=device).transpose(1, 2)
    ranks = torch.full((n, slots), r, dtype=torch.int32, device=device)
    scaling = torch.ones(n, slots, device=device)
    count = lora_warmup.warm_up(a, b, ranks, scaling, (0, 16, 40), max_tokens=64, max_segments=20)
    sm_count = torch.cuda.get_device_properties(0).multi_processor_count if device == "cuda" else None
    expected = variants(k, widths, r, a.element_size(), sm_count, step_shapes(64, 20))
    assert count == len(launched) == len(expected) >= 2
    assert sorted(launched, key=repr) == sorted(expected, key=repr)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="the interpreter's configs")
def test_engine_warms_up_every_projection_group():
    from loraplex.server.adapters.slots import AdapterSlots
    from loraplex.server.engine import _warm_up_lora_kernels

    out_slices = {"qkv_proj": (32, 16, 16), "o_proj": (32,), "gate_up_proj": (48, 48), "down_proj": (32,)}
    in_features = {"qkv_proj": 32, "o_proj": 32, "gate_up_proj": 32, "down_proj": 48}
    slots = AdapterSlots(2, 2, out_slices, in_features, 8, torch.float32, torch.device("cpu"))
    shapes = step_shapes(40, 3)
    expected = sum(
        len(variants(in_features[group], widths, 8, 4, None, shapes)) for group, widths in out_slices.items()
    )
    assert _warm_up_lora_kernels(slots, 40, 3) == expected
