"""Rotary position embeddings, with the scaling variants a Hugging Face config can ask for.

For head dimension d (or the rotated part of it, d * partial_rotary_factor) the default inverse
frequencies are inv_freq[i] = theta ** (-2i / d), i in [0, d/2). A token at position p rotates the pairs
(x[i], x[i + d/2]) by the angle p * inv_freq[i]:

    out = x * cos(p * f) + rotate_half(x) * sin(p * f),   rotate_half([a, b]) = [-b, a]

"linear" divides the frequencies by `factor`, "llama3" scales only the low frequencies (smoothly in a
band), "yarn" blends interpolated and extrapolated frequencies and scales cos/sin by an attention factor.

On CUDA tensors (with Triton) q and k are rotated in place by one fused kernel
(`loraplex.kernels.fused_ops_triton.rotary_`); elsewhere by the PyTorch code, which makes new tensors.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .layers import fused_ops

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


class UnsupportedRopeError(ValueError):
    """The config asks for a rope scaling this engine does not implement."""


def rope_parameters(config: Any) -> dict[str, Any]:
    """The config's rope parameters as one dict with `rope_type` and `rope_theta` (transformers 4 or 5)."""
    params = getattr(config, "rope_parameters", None)
    if params is None:
        params = dict(getattr(config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params = dict(params)
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    return params


def _default_inv_freq(theta: float, dim: int) -> torch.Tensor:
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(dtype=torch.float) / dim
    return 1.0 / (theta**exponents)


def _llama3_inv_freq(inv_freq: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    factor = params["factor"]
    low_freq_factor = params["low_freq_factor"]
    high_freq_factor = params["high_freq_factor"]
    old_context_len = params["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _yarn_inv_freq(
    theta: float, dim: int, params: dict[str, Any], max_positions: int
) -> tuple[torch.Tensor, float]:
    factor = params.get("factor")
    original = params["original_max_position_embeddings"]
    if factor is None:
        factor = max_positions / original

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        if params.get("mscale") and params.get("mscale_all_dim"):
            attention_factor = mscale(factor, params["mscale"]) / mscale(factor, params["mscale_all_dim"])
        else:
            attention_factor = mscale(factor)
    beta_fast = params.get("beta_fast") or 32
    beta_slow = params.get("beta_slow") or 1

    def correction_dim(num_rotations: float) -> float:
        return (dim * math.log(original / (num_rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extrapolation_weight = 1 - ramp
    pos_freqs = theta ** (torch.arange(0, dim, 2).to(dtype=torch.float) / dim)
    inv_extrapolation = 1.0 / pos_freqs
    inv_interpolation = 1.0 / (factor * pos_freqs)
    inv_freq = inv_interpolation * (1 - extrapolation_weight) + inv_extrapolation * extrapolation_weight
    return inv_freq, float(attention_factor)


def compute_inv_freq(config: Any, head_dim: int) -> tuple[torch.Tensor, float, int]:
    """Returns (inv_freq [rotary_dim / 2] float32, cos/sin scale, rotary_dim) for a model config."""
    params = rope_parameters(config)
    rope_type = params["rope_type"]
    theta = float(params["rope_theta"])
    rotary_dim = int(
        head_dim * params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0))
    )
    if rope_type == "default":
        return _default_inv_freq(theta, rotary_dim), 1.0, rotary_dim
    if rope_type == "linear":
        return _default_inv_freq(theta, rotary_dim) / params["factor"], 1.0, rotary_dim
    if rope_type == "llama3":
        return _llama3_inv_freq(_default_inv_freq(theta, rotary_dim), params), 1.0, rotary_dim
    if rope_type == "yarn":
        inv_freq, scale = _yarn_inv_freq(theta, rotary_dim, params, config.max_position_embeddings)
        return inv_freq, scale, rotary_dim
    raise UnsupportedRopeError(
        f"rope_type {rope_type!r} is not supported (supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
    )


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RotaryEmbedding(torch.nn.Module):
    """Precomputed cos/sin tables indexed by absolute position; applies rope to q and k in place of HF's."""

    def __init__(
        self, config: Any, head_dim: int, max_positions: int, dtype: torch.dtype, device: torch.device
    ):
        super().__init__()
        inv_freq, scale, self.rotary_dim = compute_inv_freq(config, head_dim)
        positions = torch.arange(max_positions, dtype=torch.float32)
        freqs = positions[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", (emb.cos() * scale).to(device=device, dtype=dtype), persistent=False)
        self.register_buffer("sin", (emb.sin() * scale).to(device=device, dtype=dtype), persistent=False)

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [T]; q [T, H, d], k [T, H_kv, d] -> rotated (q, k).

        On CUDA q and k are rotated in place and returned (they may be strided views, as the split of a
        fused qkv projection is); elsewhere they are left as they are and new tensors returned.
        """
        ops = fused_ops() if q.is_cuda else None
        if ops is not None:
            ops.rotary_(q, k, self.cos, self.sin, positions, self.rotary_dim)
            return q, k
        return self.forward_torch(positions, q, k)

    def forward_torch(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The PyTorch path (CPU, or CUDA without Triton): new tensors, q and k untouched."""
        cos = self.cos[positions].unsqueeze(1)
        sin = self.sin[positions].unsqueeze(1)
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if self.rotary_dim == x.shape[-1]:
            return x * cos + rotate_half(x) * sin
        rot, rest = x[..., : self.rotary_dim], x[..., self.rotary_dim :]
        return torch.cat((rot * cos + rotate_half(rot) * sin, rest), dim=-1)
