"""Argument validation for the segmented LoRA ops.

Shapes, dtypes and devices are always checked: that reads only tensor metadata, never device memory.
Values (segment offsets, slot range, rank range) are checked when the tensors live on the CPU, where
reading them is free; on an accelerator reading them would sync the host with the device, so there
they are checked only when ``LORAPLEX_LORA_DEBUG=1`` (never inside a CUDA graph capture).
Every failure raises ``ValueError`` before anything is launched.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from itertools import pairwise

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DEBUG_ENV = "LORAPLEX_LORA_DEBUG"


def _fail(msg: str) -> None:
    raise ValueError(msg)


def _check_dim(name: str, t: torch.Tensor, dim: int, what: str) -> None:
    if not isinstance(t, torch.Tensor):
        _fail(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != dim:
        _fail(f"{name} must be {dim}-D {what}, got shape {tuple(t.shape)}")


def _check_dtype(name: str, t: torch.Tensor, dtypes: tuple[torch.dtype, ...]) -> None:
    if t.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        _fail(f"{name} must have dtype in ({allowed}), got {str(t.dtype).removeprefix('torch.')}")


def _check_same_device(tensors: dict[str, torch.Tensor]) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        _fail(f"all tensors must be on one device, got {listing}")


def _values_checkable(t: torch.Tensor) -> bool:
    if t.device.type == "cpu":
        return True
    if os.environ.get(DEBUG_ENV, "") not in ("1", "true"):
        return False
    return not (t.device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def check_segments(seg_starts: torch.Tensor, seg_slots: torch.Tensor, num_tokens: int) -> None:
    """seg_starts [S+1] int32 token offsets, seg_slots [S] int32 slots (-1 = no adapter)."""
    _check_dim("seg_starts", seg_starts, 1, "[S+1]")
    _check_dim("seg_slots", seg_slots, 1, "[S]")
    _check_dtype("seg_starts", seg_starts, (torch.int32,))
    _check_dtype("seg_slots", seg_slots, (torch.int32,))
    if seg_starts.shape[0] != seg_slots.shape[0] + 1:
        _fail(
            f"seg_starts must have one more entry than seg_slots, got {seg_starts.shape[0]} and {seg_slots.shape[0]}"
        )
    if _values_checkable(seg_starts):
        starts = seg_starts.tolist()
        if starts[0] != 0 or starts[-1] != num_tokens:
            _fail(
                f"seg_starts must begin at 0 and end at the token count {num_tokens}, got {starts[0]}..{starts[-1]}"
            )
        if any(b < a for a, b in pairwise(starts)):
            _fail("seg_starts must be non-decreasing")


def check_slot_values(seg_slots: torch.Tensor, num_slots: int) -> None:
    if _values_checkable(seg_slots) and seg_slots.numel():
        slots = seg_slots.tolist()
        lo, hi = min(slots), max(slots)
        if lo < -1 or hi >= num_slots:
            _fail(f"seg_slots must lie in [-1, {num_slots}), got values in [{lo}, {hi}]")


def check_rank_values(ranks: torch.Tensor, r_max: int) -> None:
    if _values_checkable(ranks) and ranks.numel():
        lo, hi = (int(v) for v in torch.aminmax(ranks))
        if lo < 0 or hi > r_max:
            _fail(f"ranks must lie in [0, r_max={r_max}], got values in [{lo}, {hi}]")


def check_shrink(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    ranks: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slots: torch.Tensor,
) -> None:
    """Validate the arguments of ``lora_shrink``; see its docstring for the shapes."""
    _check_dim("x", x, 2, "[T, in]")
    _check_dim("lora_a", lora_a, 4, "[slots, n_slices, r_max, in]")
    _check_dim("ranks", ranks, 2, "[n_slices, slots]")
    _check_dtype("x", x, FLOAT_DTYPES)
    if lora_a.dtype != x.dtype:
        _fail(f"lora_a dtype {lora_a.dtype} must match x dtype {x.dtype}")
    _check_dtype("ranks", ranks, (torch.int32,))
    _check_same_device(
        {"x": x, "lora_a": lora_a, "ranks": ranks, "seg_starts": seg_starts, "seg_slots": seg_slots}
    )
    slots, n_slices, r_max, in_features = lora_a.shape
    if in_features != x.shape[1]:
        _fail(f"lora_a in-features {in_features} must match x.shape[1] = {x.shape[1]}")
    if slots < 1 or n_slices < 1 or r_max < 1:
        _fail(f"lora_a needs at least one slot, slice and rank, got shape {tuple(lora_a.shape)}")
    if tuple(ranks.shape) != (n_slices, slots):
        _fail(f"ranks must have shape [n_slices, slots] = {[n_slices, slots]}, got {list(ranks.shape)}")
    check_segments(seg_starts, seg_slots, x.shape[0])
    check_slot_values(seg_slots, slots)
    check_rank_values(ranks, r_max)


def check_slice_offsets(slice_offsets: Sequence[int], n_slices: int, out_total: int) -> tuple[int, ...]:
    if isinstance(slice_offsets, torch.Tensor) or not isinstance(slice_offsets, (tuple, list)):
        _fail(f"slice_offsets must be a tuple of python ints, got {type(slice_offsets).__name__}")
    if not all(isinstance(o, int) and not isinstance(o, bool) for o in slice_offsets):
        _fail(f"slice_offsets must hold python ints, got {slice_offsets!r}")
    offsets = tuple(slice_offsets)
    if len(offsets) != n_slices + 1:
        _fail(f"slice_offsets must have n_slices + 1 = {n_slices + 1} entries, got {len(offsets)}")
    if offsets[0] != 0 or offsets[-1] != out_total or any(b < a for a, b in pairwise(offsets)):
        _fail(f"slice_offsets must rise from 0 to out_total = {out_total}, got {offsets}")
    return offsets


def _check_expand_common(
    y: torch.Tensor,
    lora_b: torch.Tensor,
    ranks: torch.Tensor,
    scaling: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slots: torch.Tensor,
    slice_offsets: Sequence[int],
    others: dict[str, torch.Tensor],
    check_values: bool = True,
) -> tuple[int, ...]:
    _check_dim("y", y, 2, "[T, out_total]")
    _check_dim("lora_b", lora_b, 3, "[slots, out_total, r_max]")
    _check_dim("ranks", ranks, 2, "[n_slices, slots]")
    _check_dim("scaling", scaling, 2, "[n_slices, slots]")
    _check_dtype("y", y, FLOAT_DTYPES)
    if lora_b.dtype != y.dtype:
        _fail(f"lora_b dtype {lora_b.dtype} must match y dtype {y.dtype}")
    _check_dtype("ranks", ranks, (torch.int32,))
    _check_dtype("scaling", scaling, (torch.float32,))
    _check_same_device(
        {"y": y, "lora_b": lora_b, "ranks": ranks, "scaling": scaling}
        | others
        | {"seg_starts": seg_starts, "seg_slots": seg_slots}
    )
    slots, out_total, r_max = lora_b.shape
    n_slices = ranks.shape[0]
    if out_total != y.shape[1]:
        _fail(f"lora_b out-features {out_total} must match y.shape[1] = {y.shape[1]}")
    if slots < 1 or r_max < 1:
        _fail(f"lora_b needs at least one slot and rank, got shape {tuple(lora_b.shape)}")
    if ranks.shape[1] != slots:
        _fail(f"ranks must have shape [n_slices, slots={slots}], got {list(ranks.shape)}")
    if tuple(scaling.shape) != tuple(ranks.shape):
        _fail(f"scaling must have shape [n_slices, slots] = {list(ranks.shape)}, got {list(scaling.shape)}")
    offsets = check_slice_offsets(slice_offsets, n_slices, out_total)
    if check_values:
        check_segments(seg_starts, seg_slots, y.shape[0])
        check_slot_values(seg_slots, slots)
        check_rank_values(ranks, r_max)
    return offsets


def check_expand(
    y: torch.Tensor,
    h: torch.Tensor,
    lora_b: torch.Tensor,
    ranks: torch.Tensor,
    scaling: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slots: torch.Tensor,
    slice_offsets: Sequence[int],
) -> tuple[int, ...]:
    """Validate the arguments of ``lora_expand``; returns slice_offsets as a tuple."""
    _check_dim("h", h, 3, "[T, n_slices, r_max]")
    _check_dtype("h", h, (torch.float32,))
    offsets = _check_expand_common(y, lora_b, ranks, scaling, seg_starts, seg_slots, slice_offsets, {"h": h})
    if tuple(h.shape) != (y.shape[0], ranks.shape[0], lora_b.shape[2]):
        _fail(
            f"h must have shape [T, n_slices, r_max] = {[y.shape[0], ranks.shape[0], lora_b.shape[2]]}, "
            f"got {list(h.shape)}"
        )
    return offsets


def check_add_lora(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    ranks: torch.Tensor,
    scaling: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slots: torch.Tensor,
    slice_offsets: Sequence[int],
) -> tuple[int, ...]:
    """Validate the arguments of ``add_lora``; returns slice_offsets as a tuple."""
    check_shrink(x, lora_a, ranks, seg_starts, seg_slots)
    offsets = _check_expand_common(
        y, lora_b, ranks, scaling, seg_starts, seg_slots, slice_offsets, {"x": x}, check_values=False
    )
    if y.shape[0] != x.shape[0]:
        _fail(f"y has {y.shape[0]} tokens but x has {x.shape[0]}")
    if y.dtype != x.dtype:
        _fail(f"y dtype {y.dtype} must match x dtype {x.dtype}")
    if lora_b.shape[0] != lora_a.shape[0] or lora_b.shape[2] != lora_a.shape[2]:
        _fail(
            f"lora_a [slots, n_slices, r_max, in] = {list(lora_a.shape)} and lora_b [slots, out_total, r_max] = "
            f"{list(lora_b.shape)} disagree on slots or r_max"
        )
    return offsets
