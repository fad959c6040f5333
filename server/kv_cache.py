"""The paged KV cache: one preallocated pool of fixed-size blocks, and the allocator that hands them out.

Blocks are taken as a request's tokens need them (never reserved for its worst case) and all come back
when it finishes, is aborted or is preempted.
"""

from __future__ import annotations

from collections import deque

import torch

from .request import Request


def kv_bytes_per_block(
    num_layers: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
) -> int:
    """Keys and values of `block_size` tokens across all layers."""
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * num_layers * block_size * num_kv_heads * head_dim * element


class BlockAllocator:
    """Hands out block ids from a free list; `can_allocate` before `allocate`, `free` when done."""

    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def blocks_for(self, num_tokens: int) -> int:
        return (num_tokens + self.block_size - 1) // self.block_size

    def extra_blocks(self, request: Request, num_tokens: int) -> int:
        """Blocks `request` still needs so that its first `num_tokens` tokens have a place."""
        return max(0, self.blocks_for(num_tokens) - len(request.block_ids))

    def can_allocate(self, request: Request, num_tokens: int) -> bool:
        return self.extra_blocks(request, num_tokens) <= len(self._free)

    def allocate(self, request: Request, num_tokens: int) -> None:
        needed = self.extra_blocks(request, num_tokens)
        if needed > len(self._free):
            raise RuntimeError(f"KV cache: {needed} blocks needed, {len(self._free)} free")
        request.block_ids.extend(self._free.popleft() for _ in range(needed))

    def free(self, request: Request) -> None:
        self._free.extend(request.block_ids)
        request.block_ids = []


class KVCache:
    """Per layer, keys and values [H_kv, num_blocks, block_size, d] in one allocation.

    Head-major: gathering a sequence's blocks head by head yields [H_kv, L, d] runs that attention
    reads as [B, H_kv, L, d] without a transpose copy."""

    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.storage = torch.zeros(
            num_layers, 2, num_kv_heads, num_blocks, block_size, head_dim, dtype=dtype, device=device
        )

    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(layer[0], layer[1]) for layer in self.storage]

    @property
    def nbytes(self) -> int:
        return self.storage.numel() * self.storage.element_size()
