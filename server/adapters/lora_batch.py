"""The adapter segments of one step, applied by every LoRA layer through `loraplex.kernels`."""

from __future__ import annotations

import torch

from loraplex.kernels import add_lora
from loraplex.kernels.lora_reference import add_lora_prepared

from .slots import AdapterSlots


class LoraBatch:
    """Rows [seg_starts[s], seg_starts[s+1]) use slot seg_slots[s] (-1: base model only).

    `apply` adds y += LoRA(x) for one projection group of one layer, skipping the call entirely when
    no adapter in this step touches that group.
    """

    def __init__(
        self, slots: AdapterSlots, seg_starts: list[int], seg_slots: list[int], device: torch.device
    ):
        self.slots = slots
        active = [s for s in seg_slots if s >= 0]
        self.touched = frozenset().union(*(slots.targets[s] for s in active)) if active else frozenset()
        self.prepared = slots.prepared
        if self.prepared is not None:  # CPU float32: ready views, no device tensors needed
            self.host_segments = [
                (seg_starts[i], seg_starts[i + 1], slot) for i, slot in enumerate(seg_slots) if slot >= 0
            ]
        else:
            self.seg_starts = torch.tensor(seg_starts, dtype=torch.int32).to(device, non_blocking=True)
            self.seg_slots = torch.tensor(seg_slots, dtype=torch.int32).to(device, non_blocking=True)

    def apply(self, y: torch.Tensor, x: torch.Tensor, layer: int, group: str) -> None:
        key = (layer, group)
        if key not in self.touched:
            return
        if self.prepared is not None:
            add_lora_prepared(y, x, self.host_segments, self.prepared[key])
            return
        slots = self.slots
        add_lora(
            y,
            x,
            slots.a[key],
            slots.b[key],
            slots.ranks[key],
            slots.scaling[key],
            self.seg_starts,
            self.seg_slots,
            slots.slice_offsets[group],
            validate=False,
        )
