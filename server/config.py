"""EngineConfig: every engine setting in one frozen dataclass, validated once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DTYPES = ("auto", "float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """An engine setting is out of range or inconsistent with another."""


@dataclass(frozen=True)
class EngineConfig:
    """Settings of one engine.

    KV cache: `max_batch_total_tokens` (as LoRAX: the tokens all running requests may hold together)
    fixes the pool size exactly; otherwise the pool fills `kv_cache_memory_gib` on CPU, or
    `gpu_memory_utilization` of the GPU after the weights are loaded.
    Adapters: up to `max_active_adapters` GPU slots of rank `max_lora_rank` (fewer if
    `adapter_memory_gib` caps them), `adapter_cpu_cache` adapters kept loaded in host memory.
    Per step: prefill chunks add up to at most `max_batch_prefill_tokens`; at most `max_batch_size`
    requests run at once. Per request limits left as None are derived from the model (see `limits`).
    On CUDA, `cuda_graphs` captures decode-only steps at start-up and replays them (see `cuda_graphs`).
    """

    model_id: str
    served_model_name: str | None = None
    revision: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    block_size: int = 16
    max_batch_total_tokens: int | None = None
    kv_cache_memory_gib: float = 1.0
    gpu_memory_utilization: float = 0.9
    max_batch_prefill_tokens: int = 4096
    max_batch_size: int = 256
    max_input_length: int | None = None
    max_total_tokens: int | None = None
    max_stop_sequences: int = 4
    adapter_dirs: tuple[str, ...] = field(default_factory=tuple)
    max_active_adapters: int = 32
    max_lora_rank: int = 64
    adapter_cpu_cache: int = 128
    adapter_memory_gib: float | None = None
    preload_adapters: tuple[str, ...] = field(default_factory=tuple)
    cuda_graphs: bool = True

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        positive = {
            "block_size": self.block_size,
            "max_batch_prefill_tokens": self.max_batch_prefill_tokens,
            "max_batch_size": self.max_batch_size,
            "max_input_length": self.max_input_length,
            "max_total_tokens": self.max_total_tokens,
            "max_active_adapters": self.max_active_adapters,
            "max_lora_rank": self.max_lora_rank,
            "adapter_cpu_cache": self.adapter_cpu_cache,
        }
        for name, value in positive.items():
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if self.max_stop_sequences < 0:
            raise ConfigError(f"max_stop_sequences must be >= 0, got {self.max_stop_sequences}")
        if self.max_batch_total_tokens is not None and self.max_batch_total_tokens <= 0:
            raise ConfigError(f"max_batch_total_tokens must be positive, got {self.max_batch_total_tokens}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.kv_cache_memory_gib <= 0:
            raise ConfigError(f"kv_cache_memory_gib must be positive, got {self.kv_cache_memory_gib}")
        for root in self.adapter_dirs:  # else every adapter request would fail, one 424 at a time
            if not Path(root).expanduser().is_dir():
                raise ConfigError(f"adapter directory {root!r} does not exist or is not a directory")


@dataclass(frozen=True)
class Limits:
    """Per-request token limits, resolved against the model's context length."""

    max_input_length: int
    max_total_tokens: int


DEFAULT_MAX_TOTAL_TOKENS = 2048
DEFAULT_MAX_INPUT_LENGTH = 1024


def resolve_limits(config: EngineConfig, max_positions: int) -> Limits:
    """LoRAX's defaults (1024 input, 2048 total), lowered to what the model's positions allow."""
    total = config.max_total_tokens or min(DEFAULT_MAX_TOTAL_TOKENS, max_positions)
    if total > max_positions:
        raise ConfigError(
            f"max_total_tokens ({total}) exceeds the model's max_position_embeddings ({max_positions})"
        )
    max_input = config.max_input_length or min(DEFAULT_MAX_INPUT_LENGTH, total - 1)
    if max_input >= total:
        raise ConfigError(f"max_input_length ({max_input}) must be < max_total_tokens ({total})")
    return Limits(max_input_length=max_input, max_total_tokens=total)
