"""The decoder-only transformer behind Llama, Mistral and Qwen2 checkpoints.

One flattened forward per step: input [T] token ids of many sequences (prefill chunks and decodes mixed)
-> hidden [T, D]. Attention reads and writes the paged KV cache through the forward context; every
projection is a `LoRALinear`, so adapters add their per-token deltas without changing this file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .attention import AttentionBackend
from .context import get_forward_context
from .layers import LoRALinear, RMSNorm, silu_and_mul
from .onednn_linear import linear, to_onednn
from .rotary import RotaryEmbedding

# Fused projection groups of this model and the checkpoint / PEFT module names they are made of.
PACKED_MODULES: dict[str, tuple[str, ...]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "o_proj": ("o_proj",),
    "gate_up_proj": ("gate_proj", "up_proj"),
    "down_proj": ("down_proj",),
}


@dataclass(frozen=True)
class ModelShape:
    """The dimensions the engine needs from a config, with per-architecture defaults resolved."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_positions: int
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    tie_word_embeddings: bool
    sliding_windows: tuple[int | None, ...]

    @classmethod
    def from_config(cls, config: Any, architecture: str) -> ModelShape:
        num_heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
        qwen2 = architecture == "Qwen2ForCausalLM"
        attention_bias = bool(getattr(config, "attention_bias", False))
        return cls(
            architecture=architecture,
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_layers=config.num_hidden_layers,
            num_heads=num_heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or num_heads,
            head_dim=head_dim,
            rms_norm_eps=config.rms_norm_eps,
            max_positions=config.max_position_embeddings,
            qkv_bias=qwen2 or attention_bias,
            o_bias=attention_bias and not qwen2,
            mlp_bias=bool(getattr(config, "mlp_bias", False)),
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            sliding_windows=_sliding_windows(config, architecture),
        )

    def lora_out_slices(self) -> dict[str, tuple[int, ...]]:
        """Output widths of each slice of each LoRA group (the kernel's slice_offsets come from these)."""
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return {
            "qkv_proj": (q, kv, kv),
            "o_proj": (self.hidden_size,),
            "gate_up_proj": (self.intermediate_size, self.intermediate_size),
            "down_proj": (self.hidden_size,),
        }

    def lora_in_features(self) -> dict[str, int]:
        return {
            "qkv_proj": self.hidden_size,
            "o_proj": self.num_heads * self.head_dim,
            "gate_up_proj": self.hidden_size,
            "down_proj": self.intermediate_size,
        }


def _sliding_windows(config: Any, architecture: str) -> tuple[int | None, ...]:
    window = getattr(config, "sliding_window", None)
    layers = config.num_hidden_layers
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return tuple(window if kind == "sliding_attention" else None for kind in layer_types)
    if architecture == "MistralForCausalLM":
        return (window,) * layers
    return (None,) * layers


class Attention(nn.Module):
    def __init__(
        self,
        shape: ModelShape,
        layer_index: int,
        rotary: RotaryEmbedding,
        backend: AttentionBackend,
        dtype: torch.dtype,
        device: torch.device,
    ):
        super().__init__()
        self.shape = shape
        self.layer_index = layer_index
        self.rotary = rotary
        self.backend = backend
        self.scale = shape.head_dim**-0.5
        self.sliding_window = shape.sliding_windows[layer_index]
        q, kv = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
        self.qkv_proj = LoRALinear(
            shape.hidden_size, (q, kv, kv), shape.qkv_bias, "qkv_proj", layer_index, dtype, device
        )
        self.o_proj = LoRALinear(q, (shape.hidden_size,), shape.o_bias, "o_proj", layer_index, dtype, device)
        self.kv_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = self.shape
        tokens = x.shape[0]
        q_size, kv_size = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
        q, k, v = self.qkv_proj(x).split((q_size, kv_size, kv_size), dim=-1)
        q = q.view(tokens, shape.num_heads, shape.head_dim)
        k = k.view(tokens, shape.num_kv_heads, shape.head_dim)
        v = v.view(tokens, shape.num_kv_heads, shape.head_dim)
        metadata = get_forward_context().attention
        q, k = self.rotary(metadata.positions, q, k)
        k_cache, v_cache = self.kv_cache
        out = self.backend.forward(q, k, v, k_cache, v_cache, metadata, self.scale, self.sliding_window)
        return self.o_proj(out.reshape(tokens, q_size))


class MLP(nn.Module):
    def __init__(self, shape: ModelShape, layer_index: int, dtype: torch.dtype, device: torch.device):
        super().__init__()
        inter = shape.intermediate_size
        self.gate_up_proj = LoRALinear(
            shape.hidden_size, (inter, inter), shape.mlp_bias, "gate_up_proj", layer_index, dtype, device
        )
        self.down_proj = LoRALinear(
            inter, (shape.hidden_size,), shape.mlp_bias, "down_proj", layer_index, dtype, device
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_and_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, shape, layer_index, rotary, backend, dtype, device):
        super().__init__()
        self.input_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps, dtype, device)
        self.self_attn = Attention(shape, layer_index, rotary, backend, dtype, device)
        self.post_attention_layernorm = RMSNorm(shape.hidden_size, shape.rms_norm_eps, dtype, device)
        self.mlp = MLP(shape, layer_index, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderModel(nn.Module):
    """Embeddings, decoder layers and the final norm (checkpoint prefix `model.`)."""

    def __init__(self, shape, config, backend, dtype, device):
        super().__init__()
        self.embed_tokens = nn.Embedding(shape.vocab_size, shape.hidden_size, dtype=dtype, device=device)
        self.embed_tokens.weight.requires_grad_(False)
        rotary = RotaryEmbedding(config, shape.head_dim, shape.max_positions, dtype, device)
        self.layers = nn.ModuleList(
            DecoderLayer(shape, i, rotary, backend, dtype, device) for i in range(shape.num_layers)
        )
        self.norm = RMSNorm(shape.hidden_size, shape.rms_norm_eps, dtype, device)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class CausalLM(nn.Module):
    """DecoderModel + lm_head. `forward` returns hidden states; `compute_logits` projects chosen rows."""

    def __init__(
        self,
        config: Any,
        architecture: str,
        backend: AttentionBackend,
        dtype: torch.dtype,
        device: torch.device,
    ):
        super().__init__()
        self.shape = ModelShape.from_config(config, architecture)
        self.model = DecoderModel(self.shape, config, backend, dtype, device)
        if self.shape.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = nn.Linear(
                self.shape.hidden_size, self.shape.vocab_size, bias=False, dtype=dtype, device=device
            )
            self.lm_head.weight.requires_grad_(False)
        self.head_onednn: torch.Tensor | None = None

    def attach_kv_cache(self, caches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        for layer, cache in zip(self.model.layers, caches, strict=True):
            layer.self_attn.kv_cache = cache

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)

    def move_weights_to_onednn(self) -> None:
        """Every projection and the LM head in oneDNN's blocked layout (see `onednn_linear`). A tied head
        keeps the embedding table for lookups, so the head gets its own reordered copy."""
        for module in self.modules():
            if isinstance(module, LoRALinear):
                module.move_weight_to_onednn()
        if self.lm_head is None:
            self.head_onednn = to_onednn(self.model.embed_tokens.weight)
        else:
            self.head_onednn = to_onednn(self.lm_head.weight)
            self.lm_head.weight = None

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, D] -> logits [N, V] in float32."""
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return linear(hidden, weight, self.head_onednn, None).float()


ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
