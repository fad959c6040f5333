"""Batched LoRA for many short segments on CPU: the step's adapters stacked so one bmm serves them all.

With many adapters in a decode step, most segments are one to three rows, and two small matmuls per
segment and projection cost far more in per-call overhead than in arithmetic. `LoraStack` keeps the
weights of the adapters that recent steps used side by side, one position per adapter,

    a[(layer, group)]     [P, in, n_slices * R]   position p's A^T of slice s in columns [s R, s R + r_s)
    b[(layer, group)][s]  [P, R, w_s]             position p's B^T of slice s times its scaling

(R: the largest rank among the adapters of recent steps; rows and columns past an adapter's rank are
zero, so a step that mixes ranks pays the largest for each of its adapters), so that a step
computes every short segment of a projection group with one gather, two bmm and one scatter-add
(`add_lora_stacked`). An adapter is copied in when a step first needs it and stays until its position
is needed for another; in a steady decode batch the stack is reused step after step.

Positions are handed out lowest first, and an adapter that sits above a position no step has wanted
for COMPACT_AFTER_STEPS steps in a row is moved down into it (a copy of one adapter, against reading
the hole's weights on every step): as requests finish and the batch thins out, a step's bmm still spans
about as many positions as it has adapters. A position left for only one step (its request is
prefilling, which runs on the plain path) is kept, so the adapter finds it again. The stack holds at most `slots.num_slots` positions, as much host memory again as the slots
(CPU float32 only, where slots are host memory too).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .slots import AdapterSlots

# Segments of at most this many rows go through the stack; longer ones (prefill chunks) are matmuls
# big enough to run one by one.
SHORT_SEGMENT_ROWS = 16
# Steps in a row whose adapters need at most half the stack's rank before it is rebuilt at their rank
# (zero padding costs bytes and arithmetic on every step; rebuilding costs one copy of each adapter).
SHRINK_AFTER_STEPS = 8
# Steps in a row a position's adapter must go unwanted before a higher adapter is moved into it.
COMPACT_AFTER_STEPS = 2


@dataclass(frozen=True)
class StackPlan:
    """One step's short segments laid out on the stack's positions [0, n).

    rows [n * L] int64: the step row that fills each (position, row-in-segment) cell; cells without a
    row repeat a valid row and are zeroed by `mask` [n, L, 1] (None when every cell is real).
    """

    n: int
    rows: torch.Tensor
    mask: torch.Tensor | None


class LoraStack:
    def __init__(self, slots: AdapterSlots):
        self.slots = slots
        self.rank = 0
        self.capacity = 0
        self.a: dict[tuple[int, str], torch.Tensor] = {}
        self.b: dict[tuple[int, str], list[torch.Tensor]] = {}
        self._holder: list[int | None] = []  # slot held at each position
        self._version: list[int] = []  # the slot's write version when it was copied
        self._position: dict[int, int] = {}
        self._unwanted: list[int] = []  # steps in a row each position's holder went unwanted
        self._small_steps = 0

    def forget(self) -> None:
        """Forget every placement (the tensors stay): after a step that raised, a placement may be half
        made, so each adapter is copied in again when next wanted."""
        self._holder = [None] * self.capacity
        self._version = [-1] * self.capacity
        self._position = {}
        self._unwanted = [0] * self.capacity
        self._small_steps = 0

    def plan(self, segments: list[tuple[int, int, int]]) -> StackPlan:
        """Place the adapters of `segments` (begin, end, slot), copying in those not already placed."""
        wanted = {slot for _, _, slot in segments}
        rank = max(self.slots.slot_ranks[slot] for slot in wanted)
        # A resize empties the stack, so it happens before placing any adapter: at once for a larger
        # rank, and only after SHRINK_AFTER_STEPS steps in a row that need half the rank or less.
        self._small_steps = self._small_steps + 1 if rank < self.rank and 2 * rank <= self.rank else 0
        if rank > self.rank or self._small_steps >= SHRINK_AFTER_STEPS:
            self._allocate(self.capacity, rank)  # a new rank: placements (and the count) start over
        placed = {slot: self._place(slot, wanted) for _, _, slot in segments}
        self._unwanted = [
            0 if holder in wanted else age + 1
            for holder, age in zip(self._holder, self._unwanted, strict=True)
        ]
        self._compact(placed)
        positions = [placed[slot] for _, _, slot in segments]
        n = max(positions) + 1
        width = max(end - begin for begin, end, _ in segments)
        rows = [segments[0][0]] * (n * width)
        for (begin, end, _), position in zip(segments, positions, strict=True):
            rows[position * width : position * width + end - begin] = range(begin, end)
        mask = None
        if sum(end - begin for begin, end, _ in segments) < n * width:
            mask = torch.zeros(n, width, 1)
            for (begin, end, _), position in zip(segments, positions, strict=True):
                mask[position, : end - begin] = 1.0
        return StackPlan(n, torch.tensor(rows, dtype=torch.int64), mask)

    def _place(self, slot: int, wanted: set[int]) -> int:
        version = self.slots.versions[slot]
        position = self._position.get(slot)
        if position is not None and self._version[position] == version:
            return position
        if position is None:
            position = next(
                (p for p, holder in enumerate(self._holder) if holder is None or holder not in wanted), None
            )
            if position is None:
                position = self.capacity
                self._allocate(min(self.slots.num_slots, max(4, 2 * self.capacity)), self.rank)
            previous = self._holder[position]
            if previous is not None:
                del self._position[previous]
        self._copy_in(slot, position)
        self._holder[position] = slot
        self._version[position] = version
        self._position[slot] = position
        return position

    def _compact(self, placed: dict[int, int]) -> None:
        """Move the highest placed adapters down into positions unwanted for COMPACT_AFTER_STEPS steps."""
        taken = set(placed.values())
        holes = [
            p
            for p in range(max(taken))
            if p not in taken and (self._holder[p] is None or self._unwanted[p] >= COMPACT_AFTER_STEPS)
        ]
        for slot, position in sorted(placed.items(), key=lambda item: -item[1]):
            if not holes or holes[0] > position:
                return
            hole = holes.pop(0)
            self._move(position, hole)
            placed[slot] = hole

    def _move(self, source: int, target: int) -> None:
        """Copy position `source`'s adapter to `target` (evicting target's) and free `source`."""
        for key, a in self.a.items():
            a[target].copy_(a[source])
            for b in self.b[key]:
                b[target].copy_(b[source])
        evicted, slot = self._holder[target], self._holder[source]
        if evicted is not None:
            del self._position[evicted]
        self._holder[target], self._version[target] = slot, self._version[source]
        self._holder[source], self._version[source] = None, -1
        self._position[slot] = target
        self._unwanted[target] = 0

    def _allocate(self, capacity: int, rank: int) -> None:
        """(Re)size every stack tensor; the contents survive growth in capacity, not in rank."""
        keep = rank == self.rank
        for key, a in self.slots.a.items():
            slices, _, in_features = a.shape[1:]
            offsets = self.slots.slice_offsets[key[1]]
            widths = [offsets[s + 1] - offsets[s] for s in range(slices)]
            new_a = torch.zeros(capacity, in_features, slices * rank)
            new_b = [torch.zeros(capacity, rank, w) for w in widths]
            if keep and self.capacity:
                new_a[: self.capacity] = self.a[key]
                for new, old in zip(new_b, self.b[key], strict=True):
                    new[: self.capacity] = old
            self.a[key], self.b[key] = new_a, new_b
        grown = capacity - self.capacity
        self.capacity, self.rank = capacity, rank
        if keep:
            self._holder += [None] * grown
            self._version += [-1] * grown
            self._unwanted += [0] * grown
        else:
            self.forget()

    def _copy_in(self, slot: int, position: int) -> None:
        rank = self.rank
        for key, per_slot in self.slots.prepared.items():
            a, bs = self.a[key][position], self.b[key]
            a.zero_()
            for b in bs:
                b[position].zero_()
            group = per_slot[slot]
            if group is None:
                continue
            for h_lo, h_hi, b_t, scaling, _, _, s in group.expands:
                r = h_hi - h_lo
                a[:, s * rank : s * rank + r] = group.a_t[:, h_lo:h_hi]
                torch.mul(b_t, scaling, out=bs[s][position, :r])
