"""PyTorch reference of the segmented LoRA ops: what the CPU engine runs, and the GPU fallback.

One pair of plain matmuls per (segment, slice) in float32, with the rank cut to the slot's rank, so a
small-rank slot costs its own rank and an untargeted slice (rank 0) costs nothing. The segment
metadata is read on the host, so on an accelerator this path syncs and is not CUDA-graph safe; it is
meant for CPU tensors and for debugging (``LORAPLEX_LORA_BACKEND=torch``). Inputs are assumed valid
(``loraplex.kernels.lora_ops`` validates them).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch


def _segments(seg_starts: torch.Tensor, seg_slots: torch.Tensor) -> Iterator[tuple[int, int, int]]:
    """Yield (row_begin, row_end, slot) for each non-empty segment that has an adapter."""
    starts = seg_starts.tolist()
    for i, slot in enumerate(seg_slots.tolist()):
        if slot >= 0 and starts[i + 1] > starts[i]:
            yield starts[i], starts[i + 1], slot


def _accumulate(y_view: torch.Tensor, h: torch.Tensor, b_t: torch.Tensor, scale: float) -> None:
    """y_view += (h @ b_t) * scale, computed in float32 and rounded once to y's dtype."""
    if y_view.dtype == torch.float32:
        y_view.addmm_(h, b_t, alpha=scale)
    else:
        y_view.copy_(torch.addmm(y_view.float(), h, b_t.float(), alpha=scale))


def lora_shrink_ref(
    x: torch.Tensor,
    lora_a: torch.Tensor,
    ranks: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slots: torch.Tensor,
) -> torch.Tensor:
    """h[t, s, :rank] = x[t] @ A[a, s, :rank].T for every token t of a segment with slot a >= 0.

    x [T, in], lora_a [slots, n_slices, r_max, in], ranks [n_slices, slots] int32,
    seg_starts [S+1] int32, seg_slots [S] int32 -> h [T, n_slices, r_max] float32, zero elsewhere.
    """
    num_tokens = x.shape[0]
    _, n_slices, r_max, _ = lora_a.shape
    h = torch.zeros((num_tokens, n_slices, r_max), dtype=torch.float32, device=x.device)
    rank_table = ranks.tolist()
    for begin, end, slot in _segments(seg_starts, seg_slots):
        xs = x[begin:end].float()
        for s in range(n_slices):
            rank = rank_table[s][slot]
            if rank:
                h[begin:end, s, :rank] = xs @ lora_a[slot, s, :rank].float().t()
    return h


def lora_expand_ref(
    y: torch.Tensor,
    h: torch.Tensor,
    lora_b: torch.Tensor,
    ranks: torch.Tensor,
    scaling: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slots: torch.Tensor,
    slice_offsets: Sequence[int],
) -> torch.Tensor:
    """y[t, cols_s] += (h[t, s, :rank] @ B[a, cols_s, :rank].T) * scaling[s, a], in place.

    y [T, out_total], h [T, n_slices, r_max] float32, lora_b [slots, out_total, r_max],
    ranks/scaling [n_slices, slots], cols_s = slice_offsets[s]:slice_offsets[s+1]. Returns y.
    """
    n_slices = len(slice_offsets) - 1
    rank_table = ranks.tolist()
    scale_table = scaling.tolist()
    for begin, end, slot in _segments(seg_starts, seg_slots):
        for s in range(n_slices):
            rank = rank_table[s][slot]
            lo, hi = slice_offsets[s], slice_offsets[s + 1]
            if rank and hi > lo:
                b_t = lora_b[slot, lo:hi, :rank].t()
                _accumulate(y[begin:end, lo:hi], h[begin:end, s, :rank], b_t, scale_table[s][slot])
    return y


def add_lora_ref(
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    ranks: torch.Tensor,
    scaling: torch.Tensor,
    seg_starts: torch.Tensor,
    seg_slots: torch.Tensor,
    slice_offsets: Sequence[int],
) -> torch.Tensor:
    """Shrink then expand without materialising h: y[seg, cols_s] += x[seg] @ A_s.T @ B_s.T * scale.

    Shapes as in ``lora_shrink_ref`` and ``lora_expand_ref``. Returns y, updated in place.
    """
    n_slices = len(slice_offsets) - 1
    rank_table = ranks.tolist()
    scale_table = scaling.tolist()
    for begin, end, slot in _segments(seg_starts, seg_slots):
        xs = x[begin:end].float()
        for s in range(n_slices):
            rank = rank_table[s][slot]
            lo, hi = slice_offsets[s], slice_offsets[s + 1]
            if rank and hi > lo:
                h = xs @ lora_a[slot, s, :rank].float().t()
                b_t = lora_b[slot, lo:hi, :rank].t()
                _accumulate(y[begin:end, lo:hi], h, b_t, scale_table[s][slot])
    return y


def add_lora_prepared(
    y: torch.Tensor, x: torch.Tensor, segments: Sequence[tuple[int, int, int]], groups: Sequence
) -> torch.Tensor:
    """The same math as ``add_lora_ref`` in float32 on CPU, for callers that keep each slot's weights
    laid out ahead of time (``loraplex.server.adapters.slots.PreparedGroup``, None for a slot that
    doesn't touch this projection group). For each segment (begin, end, slot) with g = groups[slot]:

        h = x[begin:end] @ g.a_t                                  [n, sum of ranks], one matmul
        y[begin:end, lo:hi] += h[:, h_lo:h_hi] @ b_t * scaling    for each (h_lo, h_hi, b_t, scaling, lo, hi, _)

    On CPU these matmuls are small enough that each call's fixed cost counts, so the shrink of every
    slice is one matmul, and views are cut only where a segment or slice doesn't cover the whole.
    """
    rows = x.shape[0]
    for begin, end, slot in segments:
        group = groups[slot]
        if group is None:
            continue
        whole = begin == 0 and end == rows
        xs = x if whole else x[begin:end]
        ys = y if whole else y[begin:end]
        h = xs @ group.a_t
        for h_lo, h_hi, b_t, scale, lo, hi, _ in group.expands:
            target = ys if lo == 0 and hi == group.out_features else ys[:, lo:hi]
            source = h if h_lo == 0 and h_hi == group.rank_sum else h[:, h_lo:h_hi]
            target.addmm_(source, b_t, alpha=scale)
    return y


def add_lora_stacked(
    y: torch.Tensor,
    x: torch.Tensor,
    rows: torch.Tensor,
    n: int,
    mask: torch.Tensor | None,
    a: torch.Tensor,
    b: Sequence[torch.Tensor],
) -> torch.Tensor:
    """Many short segments at once, with their adapters' weights stacked one position each.

    rows [n * L] int64: the row of x/y at each (position, cell); mask [n, L, 1] zeroes the cells
    that only repeat a row (None: none do). a [P >= n, in, S * R]: per position, slice s's A^T in
    columns [s R, (s + 1) R); b[s] [P, R, w_s]: slice s's B^T, scaling folded in. Then

        h = x[rows] @ a[:n]                                   [n, L, S R]   (bmm, masked)
        d = concat_s(h[..., s R:(s + 1) R] @ b[s][:n])        [n, L, sum w_s]
        y[rows[i]] += d[i]                                    scatter-add over the n L cells

    Zero-padded ranks contribute nothing; float32 on CPU.
    """
    width = rows.numel() // n
    h = torch.bmm(x.index_select(0, rows).view(n, width, -1), a[:n])
    if mask is not None:
        h.mul_(mask)
    rank = b[0].shape[1]
    if len(b) == 1:
        delta = torch.bmm(h, b[0][:n])
    else:
        delta = torch.cat(
            [torch.bmm(h[:, :, s * rank : (s + 1) * rank], b_s[:n]) for s, b_s in enumerate(b)], 2
        )
    return y.index_add_(0, rows, delta.view(n * width, -1))
