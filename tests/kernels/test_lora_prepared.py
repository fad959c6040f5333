"""The CPU engine's prepared path (slots laid out by AdapterSlots) computes what the reference computes."""

from pathlib import Path

import torch

from loraplex.kernels.lora_reference import add_lora_prepared, add_lora_ref
from loraplex.server.adapters.peft_format import AdapterWeights
from loraplex.server.adapters.slots import AdapterSlots

WIDTHS = {"qkv_proj": (24, 8, 8), "o_proj": (40,)}
IN_FEATURES = {"qkv_proj": 40, "o_proj": 40}


def random_adapter(name: str, slice_ranks: dict[str, list[int]], seed: int) -> AdapterWeights:
    generator = torch.Generator().manual_seed(seed)
    weights = AdapterWeights(name, Path(name), max_rank=16)
    for group, ranks in slice_ranks.items():
        r = max(ranks)
        a = torch.randn(len(ranks), r, IN_FEATURES[group], generator=generator)
        b = torch.randn(sum(WIDTHS[group]), r, generator=generator)
        for s, rank in enumerate(ranks):  # zero padding beyond each slice's rank, as the loader leaves it
            a[s, rank:] = 0
        scalings = [0.5 + s for s in range(len(ranks))]
        weights.groups[(0, group)] = (a, b, ranks, scalings)
    return weights


def test_prepared_groups_match_the_reference():
    slots = AdapterSlots(5, 1, WIDTHS, IN_FEATURES, 16, torch.float32, torch.device("cpu"))
    assert slots.prepared is not None
    adapters = {
        0: {"qkv_proj": [4, 4, 4], "o_proj": [8]},
        1: {"qkv_proj": [16, 16, 1]},  # no o_proj
        2: {"qkv_proj": [0, 3, 3], "o_proj": [2]},  # q untargeted
        4: {"qkv_proj": [8, 0, 8], "o_proj": [16]},
    }
    # Slot 4 first holds a rank-16 adapter, then a smaller one: stale rows must not leak in.
    slots.write(4, random_adapter("old", {"qkv_proj": [16, 16, 16], "o_proj": [16]}, seed=9))
    for slot, ranks in adapters.items():
        slots.write(slot, random_adapter(f"a{slot}", ranks, seed=slot))
    x = torch.randn(20, 40, generator=torch.Generator().manual_seed(1))
    seg_starts = torch.tensor([0, 3, 3, 10, 11, 20], dtype=torch.int32)
    seg_slots = torch.tensor([2, 4, -1, 0, 1], dtype=torch.int32)
    starts = seg_starts.tolist()
    segments = [(starts[i], starts[i + 1], slot) for i, slot in enumerate(seg_slots.tolist()) if slot >= 0]
    for group in WIDTHS:
        key = (0, group)
        y = torch.randn(20, sum(WIDTHS[group]))
        offsets = slots.slice_offsets[group]
        expected = add_lora_ref(
            y.clone(), x, slots.a[key], slots.b[key], slots.ranks[key], slots.scaling[key],
            seg_starts, seg_slots, offsets,
        )  # fmt: skip
        got = add_lora_prepared(y.clone(), x, segments, slots.prepared[key])
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        assert not torch.equal(got, y)
    assert slots.prepared[(0, "o_proj")][1] is None
    slots.clear(0)
    assert all(per_slot[0] is None for per_slot in slots.prepared.values())


def test_one_segment_covering_every_row_and_every_column():
    slots = AdapterSlots(2, 1, WIDTHS, IN_FEATURES, 16, torch.float32, torch.device("cpu"))
    slots.write(1, random_adapter("a", {"o_proj": [8]}, seed=3))
    a, b, _, scalings = random_adapter("a", {"o_proj": [8]}, seed=3).groups[(0, "o_proj")]
    x = torch.randn(6, 40)
    y = torch.zeros(6, 40)
    add_lora_prepared(y, x, [(0, 6, 1)], slots.prepared[(0, "o_proj")])
    torch.testing.assert_close(y, (x @ a[0].t()) @ b.t() * scalings[0], rtol=1e-5, atol=1e-5)
