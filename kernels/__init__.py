"""Segmented LoRA kernels: one launch per phase adds each token's own adapter delta.

Public ops (see ``lora_ops`` for the math and shapes): ``lora_shrink``, ``lora_expand``,
``add_lora`` (multi-slice, for fused q/k/v or gate/up projections) and ``add_lora_single``
(one projection). Triton on CUDA tensors, the PyTorch reference on CPU tensors, one signature.
"""

from .lora_ops import BACKEND_ENV, add_lora, add_lora_single, lora_expand, lora_shrink, resolve_backend

__all__ = [
    "BACKEND_ENV",
    "add_lora",
    "add_lora_single",
    "lora_expand",
    "lora_shrink",
    "resolve_backend",
]
