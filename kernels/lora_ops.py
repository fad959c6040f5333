"""Public segmented-LoRA ops: validate, then dispatch to Triton (CUDA) or the PyTorch reference (CPU).

Backend choice, per call: the ``backend`` argument ("triton" or "torch") if given, else the
environment variable ``LORAPLEX_LORA_BACKEND`` ("torch" forces the reference on GPU), else by the
tensors' device: Triton on CUDA, the reference elsewhere. The Triton path on CPU tensors needs
``TRITON_INTERPRET=1`` set before the first call (tests do this). The Triton module is imported on
first use, so ``import loraplex.kernels`` works where Triton is not installed.

Validation (see ``lora_checks``) raises ``ValueError`` before any launch; on CUDA it reads no
device values unless ``LORAPLEX_LORA_DEBUG=1``, so the Triton path never syncs with the host and can
be captured in a CUDA graph (its grid depends on T, S and sizes only). The reference reads the
segment table on the host, so it syncs on GPU and must not be captured.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from . import lora_checks as checks
from .lora_reference import add_lora_ref, lora_expand_ref, lora_shrink_ref

BACKEND_ENV = "LORAPLEX_LORA_BACKEND"
BACKENDS = ("triton", "torch")


def resolve_backend(device: torch.device, backend: str | None = None) -> str:
    """Return "triton" or "torch" for tensors on ``device`` (argument, then env, then device)."""
    choice = backend or os.environ.get(BACKEND_ENV) or ("triton" if device.type == "cuda" else "torch")
    if choice not in BACKENDS:
        raise ValueError(f"LoRA backend must be one of {BACKENDS}, got {choice!r}")
    if choice == "triton" and device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("the Triton LoRA backend on CPU tensors needs TRITON_INTERPRET=1")
    return choice


def lora_shrink(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    ranks: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slots: torch.Tensor,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Segmented multi-slice LoRA shrink.

    For every segment i (rows seg_starts[i]:seg_starts[i+1]) with slot a = seg_slots[i] >= 0, every
    slice s and r = ranks[s, a]:  h[t, s, :r] = x[t] @ lora_a[a, s, :r].T  (float32 accumulation).

    x [T, in] float32/float16/bfloat16; lora_a [slots, n_slices, r_max, in], x's dtype;
    ranks [n_slices, slots] int32 (0 = slice not targeted: nothing read); seg_starts [S+1] int32
    (0 .. T, non-decreasing, empty segments allowed); seg_slots [S] int32 (-1 = no adapter).
    Returns h [T, n_slices, r_max] float32, zero for rows without an adapter and past each rank.
    """
    checks.check_shrink(x, lora_a, ranks, seg_starts, seg_slots)
    if resolve_backend(x.device, backend) == "torch":
        return lora_shrink_ref(x, lora_a, ranks, seg_starts, seg_slots)
    from .lora_triton import lora_shrink_triton

    return lora_shrink_triton(x, lora_a, ranks, seg_starts, seg_slots)


def lora_expand(
    y: torch.Tensor,
    h: torch.Tensor,
    lora_b: torch.Tensor,
    ranks: torch.Tensor,
    scaling: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slots: torch.Tensor,
    slice_offsets: Sequence[int],
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Segmented multi-slice LoRA expand, in place.

    For every segment with slot a >= 0 and slice s with r = ranks[s, a] > 0, cols_s =
    slice_offsets[s]:slice_offsets[s+1]:  y[t, cols_s] += (h[t, s, :r] @ lora_b[a, cols_s, :r].T)
    * scaling[s, a], accumulated in float32 and rounded once to y's dtype.

    y [T, out_total] float32/float16/bfloat16; h [T, n_slices, r_max] float32; lora_b
    [slots, out_total, r_max], y's dtype (any strides: a rank-major buffer [slots, r_max, out]
    passed as ``.transpose(1, 2)`` reads a small rank contiguously); ranks [n_slices, slots] int32;
    scaling [n_slices, slots] float32; slice_offsets: tuple of n_slices + 1 python ints from 0 to
    out_total. Segments as in ``lora_shrink``. Returns y.
    """
    offsets = checks.check_expand(y, h, lora_b, ranks, scaling, seg_starts, seg_slots, slice_offsets)
    if resolve_backend(y.device, backend) == "torch":
        return lora_expand_ref(y, h, lora_b, ranks, scaling, seg_starts, seg_slots, offsets)
    from .lora_triton import lora_expand_triton

    return lora_expand_triton(y, h, lora_b, ranks, scaling, seg_starts, seg_slots, offsets)


def add_lora(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    ranks: torch.Tensor,
    scaling: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slots: torch.Tensor,
    slice_offsets: Sequence[int],
    *,
    backend: str | None = None,
    validate: bool = True,
) -> torch.Tensor:
    """Segmented multi-slice LoRA: shrink then expand, y updated in place.

    y[t, cols_s] += (x[t] @ lora_a[a, s, :r].T) @ lora_b[a, cols_s, :r].T * scaling[s, a] for each
    token t of a segment with slot a >= 0 and each slice s with r = ranks[s, a] > 0.
    Shapes as in ``lora_shrink`` and ``lora_expand``; y and x share a dtype. Returns y.
    ``validate=False`` skips the argument checks, for callers whose buffers are valid by construction
    (the engine calls this 4 x layers times per step).
    """
    if validate:
        offsets = checks.check_add_lora(
            y, x, lora_a, lora_b, ranks, scaling, seg_starts, seg_slots, slice_offsets
        )
    else:
        offsets = tuple(slice_offsets)
    if resolve_backend(x.device, backend) == "torch":
        return add_lora_ref(y, x, lora_a, lora_b, ranks, scaling, seg_starts, seg_slots, offsets)
    from .lora_triton import add_lora_triton

    return add_lora_triton(y, x, lora_a, lora_b, ranks, scaling, seg_starts, seg_slots, offsets)


def add_lora_single(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    ranks: torch.Tensor,
    scaling: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slots: torch.Tensor,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Single-projection LoRA (one slice), y updated in place; a view-only wrapper of ``add_lora``.

    y[seg] += (x[seg] @ lora_a[a, :r].T) @ lora_b[a, :, :r].T * scaling[a], r = ranks[a], for every
    segment with slot a >= 0.  y [T, out], x [T, in], lora_a [slots, r_max, in],
    lora_b [slots, out, r_max], ranks [slots] int32, scaling [slots] float32. Returns y.
    """
    for name, t, dim in (
        ("lora_a", lora_a, 3),
        ("lora_b", lora_b, 3),
        ("ranks", ranks, 1),
        ("scaling", scaling, 1),
    ):
        if not isinstance(t, torch.Tensor) or t.dim() != dim:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"add_lora_single: {name} must be {dim}-D, got {shape}")
    if y.dim() != 2:
        raise ValueError(f"add_lora_single: y must be 2-D [T, out], got shape {tuple(y.shape)}")
    return add_lora(
        y,
        x,
        lora_a.unsqueeze(1),
        lora_b,
        ranks.unsqueeze(0),
        scaling.unsqueeze(0),
        seg_starts,
        seg_slots,
        (0, y.shape[1]),
        backend=backend,
    )
