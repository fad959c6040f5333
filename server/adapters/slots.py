"""The device-side adapter slots: for every layer and projection group, stacked buffers indexed by slot.

    A[(layer, group)]  [slots, n_slices, r_max, in]      B[(layer, group)]  [slots, out_total, r_max]
    (B is a transposed view of rank-major storage [slots, r_max, out_total])
    ranks[(layer, group)] [n_slices, slots] int32        scaling[(layer, group)] [n_slices, slots] float32

A slot whose adapter does not touch a slice has rank 0 there: the kernels skip it and read nothing.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .peft_format import AdapterWeights


def slot_bytes(
    num_layers: int,
    out_slices: dict[str, tuple[int, ...]],
    in_features: dict[str, int],
    max_rank: int,
    dtype: torch.dtype,
) -> int:
    element = torch.empty((), dtype=dtype).element_size()
    per_layer = sum(
        max_rank * (len(widths) * in_features[g] + sum(widths)) for g, widths in out_slices.items()
    )
    return num_layers * per_layer * element


class AdapterSlots:
    def __init__(
        self,
        num_slots: int,
        num_layers: int,
        out_slices: dict[str, tuple[int, ...]],
        in_features: dict[str, int],
        max_rank: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        self.num_slots = num_slots
        self.max_rank = max_rank
        self.device = device
        self.slice_offsets = {g: tuple(sum(w[:i]) for i in range(len(w) + 1)) for g, w in out_slices.items()}
        self.a: dict[tuple[int, str], torch.Tensor] = {}
        self.b: dict[tuple[int, str], torch.Tensor] = {}
        self.ranks: dict[tuple[int, str], torch.Tensor] = {}
        self.scaling: dict[tuple[int, str], torch.Tensor] = {}
        for layer in range(num_layers):
            for group, widths in out_slices.items():
                key = (layer, group)
                n = len(widths)
                self.a[key] = torch.zeros(
                    num_slots, n, max_rank, in_features[group], dtype=dtype, device=device
                )
                # Rank-major storage: a small-rank slot in a large pool reads only its own rows.
                storage = torch.zeros(num_slots, max_rank, sum(widths), dtype=dtype, device=device)
                self.b[key] = storage.transpose(1, 2)
                self.ranks[key] = torch.zeros(n, num_slots, dtype=torch.int32, device=device)
                self.scaling[key] = torch.zeros(n, num_slots, dtype=torch.float32, device=device)
        # Host mirror: which (layer, group) each slot touches, so a step skips groups no row needs.
        self.targets: list[frozenset[tuple[int, str]]] = [frozenset()] * num_slots
        # Per slot: bumped on every write and clear (copies of a slot's weights check it), and the
        # largest rank of its adapter (0 when empty).
        self.versions = [0] * num_slots
        self.slot_ranks = [0] * num_slots
        # On CPU in float32, each slot's weights per group laid out for `add_lora_prepared` (None where
        # the slot doesn't touch the group): that path then spends its time in matmuls rather than in
        # indexing the stacked buffers. None elsewhere: the kernels read the stacked buffers.
        self.prepared: dict[tuple[int, str], list[PreparedGroup | None]] | None = (
            {key: [None] * num_slots for key in self.a}
            if device.type == "cpu" and dtype == torch.float32
            else None
        )

    def write(self, slot: int, weights: AdapterWeights, stream: torch.cuda.Stream | None = None) -> None:
        """Copy an adapter into `slot` (on `stream` when given); groups it doesn't touch get rank 0."""
        non_blocking = stream is not None
        with torch.cuda.stream(stream) if stream is not None else _nullcontext():
            for key in self.a:
                ranks = self.ranks[key]
                entry = weights.groups.get(key)
                if self.prepared is not None:
                    self.prepared[key][slot] = None
                if entry is None:
                    ranks[:, slot] = 0
                    continue
                a, b, slice_ranks, scalings = entry
                r = a.shape[1]
                self.a[key][slot, :, :r].copy_(a, non_blocking=non_blocking)
                self.b[key][slot, :, :r].copy_(b, non_blocking=non_blocking)
                ranks[:, slot] = torch.tensor(slice_ranks, dtype=torch.int32)
                self.scaling[key][:, slot] = torch.tensor(scalings, dtype=torch.float32)
                if self.prepared is not None:
                    self.prepared[key][slot] = self._prepare(key, slot, slice_ranks, scalings)
        self.targets[slot] = frozenset(weights.groups)
        self.versions[slot] += 1
        self.slot_ranks[slot] = max((a.shape[1] for a, _, _, _ in weights.groups.values()), default=0)

    def _prepare(
        self, key: tuple[int, str], slot: int, slice_ranks: list[int], scalings: list[float]
    ) -> PreparedGroup:
        """`slot`'s freshly written weights for `key` laid out for `add_lora_prepared`: the A^T of every
        slice it touches side by side in one contiguous [in, sum of ranks] matrix (one shrink matmul
        per segment), and a view of each slice's B^T for its expand."""
        offsets = self.slice_offsets[key[1]]
        a = self.a[key][slot]
        touched = [s for s, rank in enumerate(slice_ranks) if rank]
        a_t = torch.cat([a[s, : slice_ranks[s]] for s in touched]).t().contiguous()
        expands, h_lo = [], 0
        for s in touched:
            rank = slice_ranks[s]
            b_t = self.b[key][slot, offsets[s] : offsets[s + 1], :rank].t()
            expands.append(PreparedExpand(h_lo, h_lo + rank, b_t, scalings[s], offsets[s], offsets[s + 1], s))
            h_lo += rank
        return PreparedGroup(a_t, tuple(expands), h_lo, offsets[-1])

    def clear(self, slot: int) -> None:
        for ranks in self.ranks.values():
            ranks[:, slot] = 0
        for per_slot in (self.prepared or {}).values():
            per_slot[slot] = None
        self.targets[slot] = frozenset()
        self.versions[slot] += 1
        self.slot_ranks[slot] = 0


class PreparedExpand(NamedTuple):
    """Slice `index`'s expand: y[:, lo:hi] += h[:, h_lo:h_hi] @ b_t * scaling, b_t [h_hi - h_lo, hi - lo]."""

    h_lo: int
    h_hi: int
    b_t: torch.Tensor
    scaling: float
    lo: int
    hi: int
    index: int


class PreparedGroup(NamedTuple):
    """One slot's weights for one projection group: h = x @ a_t (a_t [in, rank_sum]), then `expands`.
    `out_features` is the group's width (an expand covering [0, out_features) writes y whole)."""

    a_t: torch.Tensor
    expands: tuple[PreparedExpand, ...]
    rank_sum: int
    out_features: int


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
