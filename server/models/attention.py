"""Paged attention: the metadata one step needs, and the PyTorch backend that runs on CPU and CUDA
(on CUDA its decode rows go to the paged Triton kernel, `loraplex.kernels.paged_attention_triton`).

KV cache layout per layer: k_cache, v_cache [H_kv, num_blocks, block_size, d] (head-major). Token i of a sequence
lives in block block_table[i // block_size] at offset i % block_size; `slot_mapping[t]` is the flat index
(block * block_size + offset) where step token t writes its key and value.

A backend is any object with `forward(q, k, v, k_cache, v_cache, metadata, scale, sliding_window)`; the
model only talks to that seam, so a GPU kernel can replace `TorchAttention` without touching model code.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F


@dataclass
class DecodeBucket:
    """token_index [Bd]: each sequence's token in the step; context_lens [Bd];
    blocks [Bd, n]: the cache blocks covering the longest of them.

    What attention derives from these is the same in every layer, so it is made once per step
    (`derived`) and reused by the others.
    """

    token_index: torch.Tensor
    context_lens: torch.Tensor
    blocks: torch.Tensor
    _derived: dict[Hashable, torch.Tensor] = field(default_factory=dict, repr=False)

    def derived(self, key: Hashable, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        value = self._derived.get(key)
        if value is None:
            value = self._derived[key] = make()
        return value


def bucket_by_length(context_lens: list[int], max_buckets: int = 4, min_rows: int = 8) -> list[list[int]]:
    """Split positions into up to `max_buckets` groups of similar length (sorted, equal-count groups):
    padding each group to its own maximum instead of the batch's keeps the copied keys and values close
    to what the sequences hold."""
    if not context_lens:
        return []
    order = sorted(range(len(context_lens)), key=context_lens.__getitem__)
    count = max(1, min(max_buckets, len(order) // min_rows))
    size = -(-len(order) // count)
    return [order[i : i + size] for i in range(0, len(order), size)]


def group_by_length(lengths: list[int], max_padding: float = 0.25) -> list[list[int]]:
    """Split positions into groups of similar length (sorted, greedy): a group padded to its longest
    member holds at most `max_padding` more tokens than its members do. Singletons are groups too."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    groups: list[list[int]] = []
    total = 0
    for index in order:
        group = groups[-1] if groups else None
        if group is not None and lengths[index] * (len(group) + 1) <= (1 + max_padding) * (
            total + lengths[index]
        ):
            group.append(index)
            total += lengths[index]
        else:
            groups.append([index])
            total = lengths[index]
    return groups


@dataclass
class PrefillGroup:
    """Whole-prompt prefill chunks (no cached context) attended in one causal SDPA call.

    The B chunks are right-padded to the longest, L tokens: a causal mask lets a real query see only
    keys at or before it, which are all real, so padding changes nothing but its own discarded rows.
    gather [B * L]: the step token at each padded position (padding repeats the chunk's first token);
    valid [N]: the padded positions that hold real tokens; tokens [N]: those tokens' step indices.
    rows: the chunks' sequence indices (attended one at a time when a sliding window is shorter than L).
    """

    gather: torch.Tensor
    valid: torch.Tensor
    tokens: torch.Tensor
    batch: int
    length: int
    rows: list[int]


@dataclass
class PagedDecode:
    """Decode rows for the paged Triton kernel (CUDA): token_index [Bd] their tokens in the step (None:
    every token of the step, in order), block_tables [Bd, n] and context_lens [Bd] on the device."""

    token_index: torch.Tensor | None
    block_tables: torch.Tensor
    context_lens: torch.Tensor


@dataclass
class AttentionMetadata:
    """Everything attention needs for one flattened step of B sequences and T tokens.

    slot_mapping [T] int64: flat cache slot of each new token.
    positions [T] int64: absolute position of each new token.
    query_lens, context_lens: per sequence, new tokens this step and total tokens after it (host ints).
    query_starts: per sequence, offset of its first new token in the flattened step (host ints).
    block_tables [B, max_blocks] int64: cache blocks of each sequence, padded with 0; None when no
        prefill chunk follows cached context (the only reader: decodes carry their own tables).
    decode_buckets: the sequences with exactly one new token, in groups of similar context length
        (each group is one batched attention call, padded only to its own longest context).
    prefill_rows: the other sequences (host ints), attended one at a time.
    paged_decode: on CUDA, the decode sequences for one paged-kernel launch instead of decode_buckets.
    prefill_groups: on CUDA, whole-prompt chunks of similar length batched per SDPA call (their rows
        are not in prefill_rows).
    """

    slot_mapping: torch.Tensor
    positions: torch.Tensor
    query_lens: list[int]
    context_lens: list[int]
    query_starts: list[int]
    block_tables: torch.Tensor | None
    decode_buckets: list[DecodeBucket]
    prefill_rows: list[int]
    paged_decode: PagedDecode | None = None
    prefill_groups: list[PrefillGroup] = field(default_factory=list)


class AttentionBackend(Protocol):
    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        metadata: AttentionMetadata,
        scale: float,
        sliding_window: int | None,
    ) -> torch.Tensor: ...


def _allowed_keys(query_positions: torch.Tensor, num_keys: int, sliding_window: int | None) -> torch.Tensor:
    """Bool mask [..., q, num_keys]: key j is visible to a query at position p iff j <= p (and p - j < window)."""
    keys = torch.arange(num_keys, device=query_positions.device)
    visible = keys <= query_positions.unsqueeze(-1)
    if sliding_window is not None:
        visible &= query_positions.unsqueeze(-1) - keys < sliding_window
    return visible


class GatherWorkspace:
    """Reusable buffers for the keys and values a layer gathers from the paged cache.

    Every layer of every step gathers tens of MB; a fresh tensor that size can come from fresh pages
    (page faults cost more than the copy), and reusing one buffer avoids that. The gathered tensors
    only live until the layer's attention call returns, so one buffer per role is enough.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def gather(
        self, role: str, cache: torch.Tensor, blocks: torch.Tensor, rows: torch.Tensor
    ) -> torch.Tensor:
        """cache [H_kv, num_blocks, block_size, d], blocks [B, n] -> [B, H_kv, n * block_size, d].

        One index_select over rows of the [H_kv * num_blocks, block_size * d] view copies whole
        blocks (advanced indexing copies element by element and is several times slower on CPU),
        head by head, so each (sequence, head) run is contiguous; `rows` is `gather_rows(blocks, ...)`,
        made once by the caller for keys and values alike. The result is a view of this workspace's buffer, valid until the
        next `gather` for the same role.
        """
        heads, num_blocks, block_size, dim = cache.shape
        batch, n = blocks.shape
        row = block_size * dim
        size = rows.numel() * row
        buffer = self._buffers.get(role)
        if (
            buffer is None
            or buffer.numel() < size
            or buffer.dtype != cache.dtype
            or buffer.device != cache.device
        ):
            buffer = torch.empty(size, dtype=cache.dtype, device=cache.device)
            self._buffers[role] = buffer
        out = buffer[:size].view(rows.numel(), row)
        torch.index_select(cache.view(heads * num_blocks, row), 0, rows, out=out)
        return out.view(heads, batch, n * block_size, dim).transpose(0, 1)


def gather_rows(blocks: torch.Tensor, heads: int, num_blocks: int) -> torch.Tensor:
    """blocks [B, n] -> [H_kv * B * n] rows of the cache's [H_kv * num_blocks, block_size * d] view."""
    head_offsets = torch.arange(heads, device=blocks.device).view(heads, 1, 1) * num_blocks
    return (head_offsets + blocks.unsqueeze(0)).reshape(-1)


class TorchAttention:
    """Paged attention in plain PyTorch: decodes batched in one SDPA call, prefill chunks one sequence each."""

    def __init__(self) -> None:
        self.workspace = GatherWorkspace()

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        metadata: AttentionMetadata,
        scale: float,
        sliding_window: int | None,
    ) -> torch.Tensor:
        """q [T, H, d], k/v [T, H_kv, d] (this step's tokens) -> out [T, H, d].

        out[t] = softmax(q[t] . K^T * scale + mask) V over the sequence's cached keys, causal.
        """
        num_kv_heads, num_blocks, block_size, head_dim = k_cache.shape
        k_cache.view(num_kv_heads, -1, head_dim).index_copy_(1, metadata.slot_mapping, k.transpose(0, 1))
        v_cache.view(num_kv_heads, -1, head_dim).index_copy_(1, metadata.slot_mapping, v.transpose(0, 1))
        out = torch.empty_like(q)
        if metadata.paged_decode is not None:
            self._paged_decode(metadata.paged_decode, q, k_cache, v_cache, scale, sliding_window, out)
        for bucket in metadata.decode_buckets:
            self._decode(bucket, q, k_cache, v_cache, metadata, scale, sliding_window, out)
        for group in metadata.prefill_groups:
            if sliding_window is not None and group.length > sliding_window:
                for row in group.rows:
                    self._prefill(row, q, k, v, k_cache, v_cache, metadata, scale, sliding_window, out)
            else:
                self._prefill_group(group, q, k, v, scale, out)
        for row in metadata.prefill_rows:
            self._prefill(row, q, k, v, k_cache, v_cache, metadata, scale, sliding_window, out)
        return out

    @staticmethod
    def _prefill_group(group: PrefillGroup, q, k, v, scale, out) -> None:
        """One causal SDPA over the group's right-padded chunks [B, H, L, d]; real rows scattered back."""
        batch, length = group.batch, group.length

        def padded(x: torch.Tensor) -> torch.Tensor:
            return x.index_select(0, group.gather).view(batch, length, *x.shape[1:]).transpose(1, 2)

        attended = F.scaled_dot_product_attention(
            padded(q), padded(k), padded(v), is_causal=True, scale=scale, enable_gqa=True
        )
        flat = attended.transpose(1, 2).reshape(batch * length, *q.shape[1:])
        out.index_copy_(0, group.tokens, flat.index_select(0, group.valid))

    @staticmethod
    def _paged_decode(paged: PagedDecode, q, k_cache, v_cache, scale, sliding_window, out) -> None:
        from loraplex.kernels.paged_attention_triton import paged_decode_attention

        tables, lens = paged.block_tables, paged.context_lens
        if paged.token_index is None:
            paged_decode_attention(q, k_cache, v_cache, tables, lens, scale, sliding_window, out=out)
        else:
            rows = paged.token_index
            out[rows] = paged_decode_attention(q[rows], k_cache, v_cache, tables, lens, scale, sliding_window)

    def _decode(self, bucket, q, k_cache, v_cache, metadata, scale, sliding_window, out) -> None:
        heads, num_blocks = k_cache.shape[:2]
        rows = bucket.derived(
            ("rows", heads, num_blocks), lambda: gather_rows(bucket.blocks, heads, num_blocks)
        )
        keys = self.workspace.gather("keys", k_cache, bucket.blocks, rows)
        values = self.workspace.gather("values", v_cache, bucket.blocks, rows)
        mask = bucket.derived(
            ("mask", sliding_window),
            lambda: _allowed_keys(
                (bucket.context_lens - 1).unsqueeze(-1), keys.shape[2], sliding_window
            ).unsqueeze(1),
        )
        query = q[bucket.token_index].unsqueeze(2)
        attended = F.scaled_dot_product_attention(
            query,
            keys,
            values,
            attn_mask=mask,
            scale=scale,
            enable_gqa=True,
        )
        out[bucket.token_index] = attended.squeeze(2)

    def _prefill(self, row, q, k, v, k_cache, v_cache, metadata, scale, sliding_window, out) -> None:
        start, length = metadata.query_starts[row], metadata.query_lens[row]
        context = metadata.context_lens[row]
        query = q[start : start + length].transpose(0, 1).unsqueeze(0)
        if context == length:  # keys and values [H_kv, L, d]
            keys, values = (
                k[start : start + length].transpose(0, 1),
                v[start : start + length].transpose(0, 1),
            )
        else:
            heads, num_blocks, block_size = k_cache.shape[:3]
            blocks = metadata.block_tables[row : row + 1, : (context + block_size - 1) // block_size]
            rows = gather_rows(blocks, heads, num_blocks)
            keys = self.workspace.gather("keys", k_cache, blocks, rows)[0, :, :context]
            values = self.workspace.gather("values", v_cache, blocks, rows)[0, :, :context]
        whole_prompt = context == length and (sliding_window is None or sliding_window >= context)
        mask = None
        if not whole_prompt:
            query_positions = torch.arange(context - length, context, device=q.device)
            mask = _allowed_keys(query_positions, context, sliding_window)
        attended = F.scaled_dot_product_attention(
            query,
            keys.unsqueeze(0),
            values.unsqueeze(0),
            attn_mask=mask,
            is_causal=whole_prompt,
            scale=scale,
            enable_gqa=True,
        )
        out[start : start + length] = attended.squeeze(0).transpose(0, 1)
