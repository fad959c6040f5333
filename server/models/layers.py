"""Model building blocks: RMSNorm, the LoRA-aware linear layer, and the gated MLP activation.

On CUDA tensors RMSNorm and `silu_and_mul` run fused Triton kernels (`loraplex.kernels.fused_ops_triton`,
one launch each instead of a chain of elementwise ones); elsewhere, or without Triton, the PyTorch code.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from .context import get_forward_context
from .onednn_linear import linear, to_onednn


@functools.cache
def fused_ops() -> ModuleType | None:
    """The fused Triton kernels, imported on the first CUDA call; None without Triton."""
    try:
        from loraplex.kernels import fused_ops_triton
    except ImportError:
        return None
    return fused_ops_triton


class RMSNorm(nn.Module):
    """y = w * x / sqrt(mean(x^2) + eps), computed in float32 and cast back, as transformers does."""

    def __init__(self, size: int, eps: float, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size, dtype=dtype, device=device), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., D] -> [..., D]."""
        ops = fused_ops() if x.is_cuda else None
        if ops is not None:
            return ops.rms_norm(x.reshape(-1, x.shape[-1]), self.weight, self.eps).view(x.shape)
        return self.forward_torch(x)

    def forward_torch(self, x: torch.Tensor) -> torch.Tensor:
        """The PyTorch path (CPU, or CUDA without Triton)."""
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class LoRALinear(nn.Module):
    """y = x W^T + b, plus every token's own LoRA delta.

    A fused projection (q/k/v, gate/up) has several output slices; `out_slices` gives their widths, and
    adapters are stacked per slice so one kernel launch serves all of them. `lora_key` names this
    projection group ("qkv_proj", "o_proj", "gate_up_proj", "down_proj") for the adapter weights.
    With no adapter in the step (context.lora is None) this is exactly a linear layer. After
    `move_weight_to_onednn` W lives only in oneDNN's blocked layout (`weight_onednn`; `weight` is None).
    """

    def __init__(
        self,
        in_features: int,
        out_slices: tuple[int, ...],
        bias: bool,
        lora_key: str,
        layer_index: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        super().__init__()
        self.in_features = in_features
        self.out_slices = out_slices
        self.lora_key = lora_key
        self.layer_index = layer_index
        out_features = sum(out_slices)
        self.weight = nn.Parameter(
            torch.empty(out_features, in_features, dtype=dtype, device=device), requires_grad=False
        )
        self.bias = (
            nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False)
            if bias
            else None
        )
        self.weight_onednn: torch.Tensor | None = None

    def move_weight_to_onednn(self) -> None:
        """Reorder W once for oneDNN and drop the plain copy (see `onednn_linear`)."""
        self.weight_onednn = to_onednn(self.weight)
        self.weight = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = linear(x, self.weight, self.weight_onednn, self.bias)
        lora = get_forward_context().lora
        if lora is not None:
            lora.apply(y, x, self.layer_index, self.lora_key)
        return y


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[T, 2I] -> [T, I]: silu(gate) * up."""
    ops = fused_ops() if gate_up.is_cuda else None
    if ops is not None:
        return ops.silu_and_mul(gate_up)
    return silu_and_mul_torch(gate_up)


def silu_and_mul_torch(gate_up: torch.Tensor) -> torch.Tensor:
    """The PyTorch path of `silu_and_mul` (CPU, or CUDA without Triton)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
