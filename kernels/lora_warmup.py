"""Compile the segmented LoRA kernels' variants before the first step that needs them.

Every distinct set of compile-time constants of a launch (block sizes, split or not, the width of the
segment-table vector BLOCK_S, a projection's slice layout) is a separate Triton compile of about half a
second. CUDA graph capture compiles the variants of decode steps; the first prefill step with a new
segment count would otherwise compile its own in the middle of serving and stall every running request
(seen on an H200: a 3.1 s step where 40 ms was usual). `warm_up` launches each variant once, on segments
without adapter, so nothing is read or written but the kernels are compiled.

Which variants a step can need: the configs are step functions of the token count T and the segment
count S (`lora_tuning`), so `step_shapes` samples T at S * 2^i (16 * S, where the row block changes,
is one of them) and at the largest step, for S at both ends of each BLOCK_S width; a test checks
against every (T, S) of a smaller range that nothing is missed.
"""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise

import torch

from .lora_triton import _sm_count, lora_expand_triton, lora_shrink_triton
from .lora_tuning import ExpandConfig, ShrinkConfig, block_s, cdiv, expand_config, shrink_config

Variant = tuple[str, ShrinkConfig | ExpandConfig, int]


def step_shapes(max_tokens: int, max_segments: int) -> list[tuple[int, int]]:
    """(T, S) samples: S at both ends of each BLOCK_S width (configs grow with S), T from S up."""
    counts, width = {1, max_segments}, 16
    while width < max_segments:
        counts.update((width, width + 1))
        width *= 4
    shapes = set()
    for segments in counts:
        tokens = segments
        while tokens < max_tokens:
            shapes.add((tokens, segments))
            tokens *= 2
        if segments <= max_tokens:
            shapes.add((max_tokens, segments))
    return sorted(shapes)


def variants(
    in_features: int,
    slice_widths: tuple[int, ...],
    r_max: int,
    element_size: int,
    sm_count: int | None,
    shapes: list[tuple[int, int]],
) -> dict[Variant, int]:
    """Each distinct (kernel, config, BLOCK_S) of the given (T, S) shapes -> the S it was seen with."""
    found: dict[Variant, int] = {}
    for tokens, segments in shapes:
        n = len(slice_widths)
        shrink = shrink_config(tokens, segments, n, r_max, in_features, sm_count, element_size)
        expand = expand_config(tokens, segments, max(slice_widths), r_max, sm_count)
        # The split count is a runtime argument; only whether there is a split is compiled in.
        per_split = cdiv(cdiv(in_features, shrink.split_k), shrink.block_k) * shrink.block_k
        shrink = replace(shrink, split_k=min(2, cdiv(in_features, per_split)))
        found.setdefault(("shrink", shrink, block_s(segments)), segments)
        found.setdefault(("expand", expand, block_s(segments)), segments)
    return found


def warm_up(
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    ranks: torch.Tensor,
    scaling: torch.Tensor,
    slice_offsets: tuple[int, ...],
    max_tokens: int,
    max_segments: int,
) -> int:
    """Launch every variant a step of up to `max_tokens` tokens in `max_segments` segments can use,
    with the adapter buffers of one projection group (lora_a [slots, n, r_max, in], lora_b
    [slots, out, r_max], as `add_lora` takes them). Returns the number of launches."""
    device = lora_a.device
    widths = tuple(hi - lo for lo, hi in pairwise(slice_offsets))
    r_max, in_features = lora_a.shape[2], lora_a.shape[3]
    shapes = step_shapes(max_tokens, max_segments)
    found = variants(in_features, widths, r_max, lora_a.element_size(), _sm_count(device), shapes)
    for (kernel, config, _), segments in found.items():
        seg_starts = torch.arange(segments + 1, dtype=torch.int32, device=device)
        seg_slots = torch.full((segments,), -1, dtype=torch.int32, device=device)
        if kernel == "shrink":
            x = torch.zeros((segments, in_features), dtype=lora_a.dtype, device=device)
            lora_shrink_triton(x, lora_a, ranks, seg_starts, seg_slots, config=config, zero_fill=False)
        else:
            y = torch.zeros((segments, slice_offsets[-1]), dtype=lora_b.dtype, device=device)
            h = torch.zeros((segments, len(widths), r_max), dtype=torch.float32, device=device)
            lora_expand_triton(
                y, h, lora_b, ranks, scaling, seg_starts, seg_slots, slice_offsets, config=config
            )
    return len(found)
