"""The CPU engine's prepared-view path computes exactly what the reference computes."""

import torch

from loraplex.kernels.lora_reference import add_lora_prepared, add_lora_ref


def test_prepared_views_match_the_reference():
    torch.manual_seed(0)
    slots, n, r_max, in_features, widths = 5, 3, 16, 40, (24, 8, 8)
    offsets = (0, 24, 32, 40)
    a = torch.randn(slots, n, r_max, in_features)
    b = torch.randn(slots, r_max, sum(widths)).transpose(1, 2)
    ranks = torch.tensor([[4, 16, 0, 8, 2], [4, 16, 3, 0, 2], [4, 1, 3, 8, 2]], dtype=torch.int32)
    scaling = torch.rand(n, slots) + 0.5
    seg_starts = torch.tensor([0, 3, 3, 10, 11, 20], dtype=torch.int32)
    seg_slots = torch.tensor([2, 4, -1, 0, 1], dtype=torch.int32)
    x = torch.randn(20, in_features)
    y = torch.randn(20, sum(widths))
    expected = add_lora_ref(y.clone(), x, a, b, ranks, scaling, seg_starts, seg_slots, offsets)
    slot_slices = [
        [
            (a[slot, s, :rank].t(), b[slot, lo:hi, :rank].t(), float(scaling[s, slot]), lo, hi)
            for s in range(n)
            if (rank := int(ranks[s, slot])) and (lo := offsets[s]) < (hi := offsets[s + 1])
        ]
        for slot in range(slots)
    ]
    starts = seg_starts.tolist()
    segments = [(starts[i], starts[i + 1], slot) for i, slot in enumerate(seg_slots.tolist()) if slot >= 0]
    got = add_lora_prepared(y.clone(), x, segments, slot_slices)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.equal(got, y)
