"""Where the model runs: device, dtype, and how many KV cache blocks fit the memory budget."""

from __future__ import annotations

from typing import Any

import torch

from .config import ConfigError, EngineConfig
from .kv_cache import kv_bytes_per_block
from .models.llama import ModelShape

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_GIB = 1 << 30


def choose_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but no CUDA device is available")
    return device


def choose_dtype(name: str, config: Any, device: torch.device) -> torch.dtype:
    """auto: the checkpoint's dtype on GPU (bfloat16 if it names none or float32), float32 on CPU."""
    if name != "auto":
        return _DTYPES[name]
    if device.type == "cpu":
        return torch.float32
    declared = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(declared, str):
        declared = _DTYPES.get(declared)
    return declared if declared in (torch.bfloat16, torch.float16) else torch.bfloat16


def kv_cache_blocks(
    config: EngineConfig, shape: ModelShape, dtype: torch.dtype, device: torch.device, max_total_tokens: int
) -> int:
    """Blocks in the pool: exactly `max_batch_total_tokens` worth if given, else what the budget holds."""
    per_block = kv_bytes_per_block(
        shape.num_layers, config.block_size, shape.num_kv_heads, shape.head_dim, dtype
    )
    if config.max_batch_total_tokens is not None:
        blocks = -(-config.max_batch_total_tokens // config.block_size)
    elif device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        used = total - free
        activations = _activation_bytes(config, shape, dtype)
        budget = total * config.gpu_memory_utilization - used - activations
        blocks = int(budget // per_block)
    else:
        blocks = int(config.kv_cache_memory_gib * _GIB // per_block)
    if blocks * config.block_size < max_total_tokens:
        raise ConfigError(
            f"the KV cache holds {max(blocks, 0) * config.block_size} tokens, fewer than max_total_tokens "
            f"({max_total_tokens}): give it more memory or lower --max-total-tokens"
        )
    return blocks


def _activation_bytes(config: EngineConfig, shape: ModelShape, dtype: torch.dtype) -> int:
    """A generous bound on one step's transient tensors (the widest is the fused gate/up output)."""
    element = torch.empty((), dtype=dtype).element_size()
    tokens = config.max_batch_prefill_tokens + config.max_batch_size
    widest = max(2 * shape.intermediate_size, shape.hidden_size * 4)
    logits = config.max_batch_size * shape.vocab_size * 4 * 4
    return 4 * tokens * widest * element + logits + _GIB // 2
