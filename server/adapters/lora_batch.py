"""The adapter segments of one step, applied by every LoRA layer through `loraplex.kernels`."""

from __future__ import annotations

import torch

from loraplex.kernels import add_lora
from loraplex.kernels.lora_reference import add_lora_prepared, add_lora_stacked

from .lora_stack import SHORT_SEGMENT_ROWS, LoraStack
from .slots import AdapterSlots


def extend_segments(seg_starts: list[int], seg_slots: list[int], slot: int, end: int) -> None:
    """Add a row ending at `end` with adapter `slot`: it joins the last segment when that has the same
    slot (rows come ordered by slot), else opens a new one. seg_starts begins as [0], seg_slots as []."""
    if seg_slots and seg_slots[-1] == slot:
        seg_starts[-1] = end
    else:
        seg_slots.append(slot)
        seg_starts.append(end)


def add_slot_lora(
    slots: AdapterSlots,
    key: tuple[int, str],
    y: torch.Tensor,
    x: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slots: torch.Tensor,
) -> None:
    """y += the LoRA delta of projection group `key` = (layer, group) for every segment, from the slot
    buffers, through the segmented kernels (inputs valid by construction: no checks)."""
    add_lora(
        y,
        x,
        slots.a[key],
        slots.b[key],
        slots.ranks[key],
        slots.scaling[key],
        seg_starts,
        seg_slots,
        slots.slice_offsets[key[1]],
        validate=False,
    )


class LoraBatch:
    """Rows [seg_starts[s], seg_starts[s+1]) use slot seg_slots[s] (-1: base model only).

    `apply` adds y += LoRA(x) for one projection group of one layer, skipping the call entirely when
    no adapter in this step touches that group. On CPU in float32 (`slots.prepared`), segments of up
    to SHORT_SEGMENT_ROWS rows go through `stack` together when there are several, the others one by one.
    """

    def __init__(
        self,
        slots: AdapterSlots,
        seg_starts: list[int],
        seg_slots: list[int],
        device: torch.device,
        stack: LoraStack | None = None,
    ):
        self.slots = slots
        active = [s for s in seg_slots if s >= 0]
        self.touched = frozenset().union(*(slots.targets[s] for s in active)) if active else frozenset()
        self.prepared = slots.prepared
        self.stack, self.plan = stack, None
        if self.prepared is not None:  # CPU float32: ready views, no device tensors needed
            segments = [
                (seg_starts[i], seg_starts[i + 1], slot) for i, slot in enumerate(seg_slots) if slot >= 0
            ]
            short = [seg for seg in segments if seg[1] - seg[0] <= SHORT_SEGMENT_ROWS]
            if stack is not None and len(short) > 1:
                self.plan = stack.plan(short)
                segments = [seg for seg in segments if seg[1] - seg[0] > SHORT_SEGMENT_ROWS]
            self.host_segments = segments
        else:
            self.seg_starts = torch.tensor(seg_starts, dtype=torch.int32).to(device, non_blocking=True)
            self.seg_slots = torch.tensor(seg_slots, dtype=torch.int32).to(device, non_blocking=True)

    def apply(self, y: torch.Tensor, x: torch.Tensor, layer: int, group: str) -> None:
        key = (layer, group)
        if key not in self.touched:
            return
        if self.prepared is not None:
            if self.host_segments:
                add_lora_prepared(y, x, self.host_segments, self.prepared[key])
            if self.plan is not None:
                plan = self.plan
                add_lora_stacked(y, x, plan.rows, plan.n, plan.mask, self.stack.a[key], self.stack.b[key])
            return
        add_slot_lora(self.slots, key, y, x, self.seg_starts, self.seg_slots)


class FixedLoraBatch:
    """The adapter segments of a captured CUDA graph: seg_starts [B+1] and seg_slots [B] are fixed
    device buffers, rewritten before each replay, so every group of every layer runs the segmented
    kernels (a group no adapter of the step targets has rank 0 there, and the kernels read nothing)."""

    def __init__(self, slots: AdapterSlots, seg_starts: torch.Tensor, seg_slots: torch.Tensor):
        self.slots = slots
        self.seg_starts = seg_starts
        self.seg_slots = seg_slots

    def apply(self, y: torch.Tensor, x: torch.Tensor, layer: int, group: str) -> None:
        add_slot_lora(self.slots, (layer, group), y, x, self.seg_starts, self.seg_slots)
