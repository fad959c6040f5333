"""Random segmented-LoRA problems and the float32 per-token loop oracle they are checked against.

A case draws one adapter per token from a popularity regime, groups the tokens by slot into
segments (as the scheduler does), and adds the awkward parts the kernels must survive: empty
segments (with a real slot and with -1), rows with no adapter (-1), slices a slot does not target
(rank 0), ranks mixed up to r_max, and NaN wherever a weight must not be read (past a slot's rank,
whole untargeted slices, unused slots) so that any stray read poisons the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

REGIMES = ("distinct", "uniform", "skewed", "identical")


@dataclass(frozen=True)
class Spec:
    tokens: int
    regime: str
    dtype: torch.dtype = torch.float32
    in_features: int = 100
    widths: tuple[int, ...] = (40, 17, 33)
    rank_choices: tuple[int, ...] = (1, 3, 8, 16, 17, 64, 128)
    r_max: int = 128
    base_rows: bool = True  # add a segment of rows with no adapter (-1)
    rank_major_b: bool = False  # lora_b as a transposed [slots, r_max, out] buffer
    strided_x: bool = False  # x as a column slice of a wider buffer
    seed: int = 0

    @property
    def slice_offsets(self) -> tuple[int, ...]:
        return tuple(sum(self.widths[:i]) for i in range(len(self.widths) + 1))


@dataclass
class Case:
    spec: Spec
    x: torch.Tensor
    y: torch.Tensor
    lora_a: torch.Tensor
    lora_b: torch.Tensor
    ranks: torch.Tensor
    scaling: torch.Tensor
    seg_starts: torch.Tensor
    seg_slots: torch.Tensor

    def to(self, device: torch.device | str) -> Case:
        moved = {k: getattr(self, k).to(device) for k in self.__dataclass_fields__ if k != "spec"}
        if self.spec.rank_major_b:  # keep the transposed layout through the copy
            moved["lora_b"] = self.lora_b.transpose(1, 2).contiguous().to(device).transpose(1, 2)
        if self.spec.strided_x:
            wide = torch.zeros((self.x.shape[0], self.x.shape[1] + 5), dtype=self.x.dtype, device=device)
            wide[:, 3 : 3 + self.x.shape[1]] = self.x.to(device)
            moved["x"] = wide[:, 3 : 3 + self.x.shape[1]]
        return Case(self.spec, **moved)

    @property
    def args(self) -> tuple:
        """Arguments of add_lora after y."""
        return (
            self.x,
            self.lora_a,
            self.lora_b,
            self.ranks,
            self.scaling,
            self.seg_starts,
            self.seg_slots,
            self.spec.slice_offsets,
        )


def adapter_per_token(tokens: int, regime: str, gen: torch.Generator) -> torch.Tensor:
    """Adapter id (0..n-1) of each token under a popularity regime."""
    if tokens == 0:
        return torch.zeros(0, dtype=torch.long)
    if regime == "distinct":
        return torch.randperm(tokens, generator=gen)
    if regime == "uniform":
        return torch.randint(0, math.ceil(math.sqrt(tokens)), (tokens,), generator=gen)
    if regime == "skewed":  # zipf with exponent 1.5 over `tokens` candidate adapters
        weights = torch.arange(1, tokens + 1, dtype=torch.float64) ** -1.5
        return torch.multinomial(weights, tokens, replacement=True, generator=gen)
    if regime == "identical":
        return torch.zeros(tokens, dtype=torch.long)
    raise ValueError(regime)


def make_case(spec: Spec) -> Case:
    gen = torch.Generator().manual_seed(spec.seed)
    base = spec.tokens // 8 if spec.base_rows else 0
    ids = adapter_per_token(spec.tokens - base, spec.regime, gen)
    used = sorted(set(ids.tolist()))
    num_slots = len(used) + 2  # two slots nobody uses: all NaN
    slot_of = dict(zip(used, torch.randperm(num_slots, generator=gen)[: len(used)].tolist(), strict=True))
    counts = {slot_of[a]: int((ids == a).sum()) for a in used}

    segments = sorted(counts.items())  # (slot, length), ordered by slot like the scheduler
    segments.insert(int(torch.randint(0, len(segments) + 1, (1,), generator=gen)), (-1, 0))
    if segments:
        some_slot = segments[int(torch.randint(0, len(segments), (1,), generator=gen))][0]
        segments.insert(int(torch.randint(0, len(segments) + 1, (1,), generator=gen)), (some_slot, 0))
    if base:
        segments.insert(int(torch.randint(0, len(segments) + 1, (1,), generator=gen)), (-1, base))
    lengths = torch.tensor([0] + [n for _, n in segments])
    seg_starts = torch.cumsum(lengths, 0).to(torch.int32)
    seg_slots = torch.tensor([s for s, _ in segments], dtype=torch.int32)

    n_slices, r_max, fin = len(spec.widths), spec.r_max, spec.in_features
    choices = torch.tensor(spec.rank_choices)
    ranks = choices[torch.randint(0, len(choices), (n_slices, num_slots), generator=gen)]
    ranks[torch.rand((n_slices, num_slots), generator=gen) < 0.15] = 0
    if n_slices > 1 and used:  # one slot leaves a slice untargeted, another targets it
        ranks[1, slot_of[used[0]]] = 0
        ranks[0, slot_of[used[0]]] = max(spec.rank_choices)
    ranks = ranks.to(torch.int32)

    out_total = sum(spec.widths)
    lora_a = torch.randn((num_slots, n_slices, r_max, fin), generator=gen) / math.sqrt(fin)
    lora_b = torch.randn((num_slots, out_total, r_max), generator=gen) / math.sqrt(8)
    for slot in range(num_slots):
        for s in range(n_slices):
            rank = int(ranks[s, slot]) if slot in counts else 0
            lora_a[slot, s, rank:] = float("nan")
            lo, hi = spec.slice_offsets[s], spec.slice_offsets[s + 1]
            lora_b[slot, lo:hi, rank:] = float("nan")
    scaling = 0.5 + 1.5 * torch.rand((n_slices, num_slots), generator=gen)
    x = torch.randn((spec.tokens, fin), generator=gen)
    y = torch.randn((spec.tokens, out_total), generator=gen)
    case = Case(
        spec,
        x.to(spec.dtype),
        y.to(spec.dtype),
        lora_a.to(spec.dtype),
        lora_b.to(spec.dtype),
        ranks,
        scaling,
        seg_starts,
        seg_slots,
    )
    return case.to("cpu")


def oracle(case: Case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token float32 loop: returns (expected y, touched mask of y, expected h)."""
    x, a, b = case.x.float().cpu(), case.lora_a.float().cpu(), case.lora_b.float().cpu()
    ranks, scaling = case.ranks.cpu().tolist(), case.scaling.cpu().tolist()
    offsets = case.spec.slice_offsets
    y = case.y.float().cpu().clone()
    touched = torch.zeros(y.shape, dtype=torch.bool)
    h = torch.zeros((x.shape[0], len(offsets) - 1, a.shape[2]))
    starts = case.seg_starts.cpu().tolist()
    for i, slot in enumerate(case.seg_slots.cpu().tolist()):
        if slot < 0:
            continue
        for t in range(starts[i], starts[i + 1]):
            for s in range(len(offsets) - 1):
                rank = ranks[s][slot]
                lo, hi = offsets[s], offsets[s + 1]
                if rank == 0:
                    continue
                h[t, s, :rank] = a[slot, s, :rank] @ x[t]
                y[t, lo:hi] += (b[slot, lo:hi, :rank] @ h[t, s, :rank]) * scaling[s][slot]
                touched[t, lo:hi] = True
    return y, touched, h


TOLERANCE = {torch.float32: 2e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}


def assert_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    """Elementwise |got - want| <= tol * (1 + |want|), tol by the dtype the data went through."""
    got, want = got.float().cpu(), want.float().cpu()
    tol = TOLERANCE[dtype]
    err = (got - want).abs() / (1 + want.abs())
    assert torch.isfinite(got).all(), "non-finite output: a weight past a rank or an unused slot was read"
    assert err.max() <= tol, (
        f"max scaled error {err.max().item():.3g} > {tol} at {divmod(int(err.argmax()), got.shape[-1])}"
    )
