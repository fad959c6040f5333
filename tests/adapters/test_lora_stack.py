"""Short segments batched through LoraStack compute what the reference computes, and the stack
follows the slots: reused while they hold the same adapter, refreshed when one is rewritten."""

from pathlib import Path

import torch

from loraplex.kernels.lora_reference import add_lora_ref
from loraplex.server.adapters import lora_batch, lora_stack
from loraplex.server.adapters.lora_batch import LoraBatch
from loraplex.server.adapters.lora_stack import LoraStack
from loraplex.server.adapters.peft_format import AdapterWeights
from loraplex.server.adapters.slots import AdapterSlots

WIDTHS = {"qkv_proj": (32, 8, 8), "o_proj": (32,), "down_proj": (32,)}
IN_FEATURES = {"qkv_proj": 32, "o_proj": 32, "down_proj": 48}
LAYERS = 2
CPU = torch.device("cpu")


def random_adapter(seed: int, rank: int, groups=tuple(WIDTHS), untargeted_slice: int | None = None):
    generator = torch.Generator().manual_seed(seed)
    weights = AdapterWeights(f"a{seed}", Path("unused"), max_rank=64)
    for layer in range(LAYERS):
        for group in groups:
            n = len(WIDTHS[group])
            ranks = [rank] * n
            if untargeted_slice is not None and n > 1:
                ranks[untargeted_slice] = 0
            a = torch.randn(n, rank, IN_FEATURES[group], generator=generator)
            b = torch.randn(sum(WIDTHS[group]), rank, generator=generator)
            weights.groups[(layer, group)] = (a, b, ranks, [0.25 * (1 + s) for s in range(n)])
    return weights


def expected(slots: AdapterSlots, y, x, starts, slot_ids, key):
    seg_starts = torch.tensor(starts, dtype=torch.int32)
    seg_slots = torch.tensor(slot_ids, dtype=torch.int32)
    offsets = slots.slice_offsets[key[1]]
    return add_lora_ref(
        y.clone(), x, slots.a[key], slots.b[key], slots.ranks[key], slots.scaling[key],
        seg_starts, seg_slots, offsets,
    )  # fmt: skip


def check_step(slots, stack, starts, slot_ids, seed=0):
    batch = LoraBatch(slots, starts, slot_ids, CPU, stack)
    generator = torch.Generator().manual_seed(seed)
    for layer in range(LAYERS):
        for group, widths in WIDTHS.items():
            key = (layer, group)
            x = torch.randn(starts[-1], IN_FEATURES[group], generator=generator)
            y = torch.randn(starts[-1], sum(widths), generator=generator)
            want = expected(slots, y, x, starts, slot_ids, key)
            got = y.clone()
            batch.apply(got, x, layer, group)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    return batch


def make_slots(count: int) -> AdapterSlots:
    return AdapterSlots(count, LAYERS, WIDTHS, IN_FEATURES, 64, torch.float32, CPU)


def rank4_stack(adapters: int) -> tuple[AdapterSlots, LoraStack, list[int]]:
    """Eight slots, the first `adapters` holding rank-4 adapters; a stack over them, and its copy log."""
    slots = make_slots(8)
    for slot in range(adapters):
        slots.write(slot, random_adapter(slot, rank=4))
    stack = LoraStack(slots)
    return slots, stack, record_copies(stack)


def record_copies(stack: LoraStack) -> list[int]:
    """The slots `stack` copies in from here on, in order."""
    copies = []
    copy_in = stack._copy_in
    stack._copy_in = lambda slot, position: (copies.append(slot), copy_in(slot, position))
    return copies


def test_short_segments_go_through_the_stack_and_match_the_reference(monkeypatch):
    slots = make_slots(8)
    slots.write(0, random_adapter(0, rank=4))
    slots.write(3, random_adapter(3, rank=16, untargeted_slice=0))
    slots.write(5, random_adapter(5, rank=8, groups=("qkv_proj",)))  # no o_proj, no down_proj
    slots.write(6, random_adapter(6, rank=2))
    stack = LoraStack(slots)
    monkeypatch.setattr(lora_batch, "SHORT_SEGMENT_ROWS", 3)
    # rows: base, slot 0 (1 row), slot 3 (3 rows), slot 5 (2 rows), slot 6 (a long segment)
    starts, slot_ids = [0, 2, 3, 6, 8, 20], [-1, 0, 3, 5, 6]
    batch = check_step(slots, stack, starts, slot_ids)
    assert batch.plan is not None and batch.plan.n == 3 and batch.plan.mask is not None
    assert batch.host_segments == [(8, 20, 6)]


def test_stack_is_reused_until_a_slot_is_rewritten_and_grows_in_rank_and_capacity():
    slots, stack, copies = rank4_stack(6)

    check_step(slots, stack, [0, 1, 2], [0, 1])
    assert sorted(copies) == [0, 1] and stack.capacity == 4
    copies.clear()
    check_step(slots, stack, [0, 2, 3, 4], [0, 1, 2], seed=1)  # 0 and 1 stay where they are
    assert copies == [2]
    copies.clear()
    check_step(slots, stack, [0, 1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, 5], seed=2)  # more than 4: grows
    assert sorted(copies) == [3, 4, 5] and stack.capacity == 8
    copies.clear()
    slots.write(1, random_adapter(11, rank=4))  # slot 1 now holds another adapter
    check_step(slots, stack, [0, 1, 2], [1, 4], seed=3)
    assert copies == [1]
    slots.write(2, random_adapter(12, rank=32))  # a larger rank empties the stack and refills it
    check_step(slots, stack, [0, 1, 2, 3], [0, 2, 5], seed=4)
    assert stack.rank == 32
    slots.clear(5)
    slots.write(7, random_adapter(7, rank=8))
    check_step(slots, stack, [0, 1, 3], [0, 7], seed=5)


def test_a_single_short_segment_stays_on_the_plain_path():
    slots = make_slots(4)
    slots.write(1, random_adapter(1, rank=8))
    batch = check_step(slots, LoraStack(slots), [0, 4, 6], [-1, 1])
    assert batch.plan is None and batch.host_segments == [(4, 6, 1)]


def test_stack_shrinks_back_after_steps_that_need_a_smaller_rank():
    slots = make_slots(4)
    slots.write(0, random_adapter(0, rank=32))
    slots.write(1, random_adapter(1, rank=4))
    slots.write(2, random_adapter(2, rank=8))
    stack = LoraStack(slots)
    check_step(slots, stack, [0, 1, 2], [0, 1])
    assert stack.rank == 32
    for step in range(lora_stack.SHRINK_AFTER_STEPS):
        assert stack.rank == 32
        check_step(slots, stack, [0, 1, 2], [1, 2], seed=step)
    assert stack.rank == 8
    check_step(slots, stack, [0, 2, 3], [0, 2], seed=9)  # the large one again: grows at once
    assert stack.rank == 32


def test_adapters_move_down_into_positions_left_unwanted_and_a_one_step_absence_keeps_its_place():
    slots, stack, copies = rank4_stack(5)

    check_step(slots, stack, [0, 1, 2, 3, 4], [0, 1, 2, 3])
    assert [stack._position[s] for s in range(4)] == [0, 1, 2, 3]
    # Slot 2 sits out one step (its request prefills on the plain path): nothing moves, a hole is masked.
    batch = check_step(slots, stack, [0, 1, 2, 3], [0, 1, 3], seed=1)
    assert batch.plan.n == 4 and batch.plan.mask is not None
    copies.clear()
    check_step(slots, stack, [0, 1, 2, 3, 4], [0, 1, 2, 3], seed=2)
    assert copies == [] and stack._position[2] == 2
    # Slots 0 and 1 finish: their positions are holes for one step, then 3 and 2 move into them.
    batch = check_step(slots, stack, [0, 1, 2], [2, 3], seed=3)
    assert batch.plan.n == 4
    for step in range(lora_stack.COMPACT_AFTER_STEPS - 1):
        batch = check_step(slots, stack, [0, 1, 2], [2, 3], seed=4 + step)
    assert batch.plan.n == 2 and batch.plan.mask is None
    assert {stack._position[2], stack._position[3]} == {0, 1} and copies == []
    assert 0 not in stack._position and 1 not in stack._position
    # A new adapter takes the lowest free position; the moved ones stay put.
    check_step(slots, stack, [0, 1, 2, 3], [2, 3, 4], seed=9)
    assert copies == [4] and stack._position[4] == 2 and stack._holder[3] is None
