"""Random LoRA adapters in PEFT's file format for a benchmark model (written directly with safetensors)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

ALL_SEVEN = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def module_shapes(config: dict) -> dict[str, tuple[int, int]]:
    """(in, out) of every projection of a Llama config."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    q, kv = heads * head_dim, kv_heads * head_dim
    return {
        "q_proj": (hidden, q),
        "k_proj": (hidden, kv),
        "v_proj": (hidden, kv),
        "o_proj": (q, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }


def build_adapters(
    model_dir: Path,
    root: Path,
    count: int,
    rank: int,
    targets: tuple[str, ...] = ALL_SEVEN,
    dtype: torch.dtype = torch.float32,
    prefix: str = "bench",
) -> list[str]:
    """`count` adapters under root/<prefix>-r<rank>-<i>; existing ones are reused. Returns their ids."""
    config = json.loads((model_dir / "config.json").read_text())
    shapes = module_shapes(config)
    ids = []
    for index in range(count):
        adapter_id = f"{prefix}-r{rank}-{index}"
        folder = root / adapter_id
        ids.append(adapter_id)
        if (folder / "adapter_model.safetensors").is_file():
            continue
        generator = torch.Generator().manual_seed(index * 7919 + rank)
        tensors = {}
        for layer in range(config["num_hidden_layers"]):
            for module in targets:
                fan_in, fan_out = shapes[module]
                part = "self_attn" if module in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
                key = f"base_model.model.model.layers.{layer}.{part}.{module}"
                a = torch.randn(rank, fan_in, generator=generator) / fan_in**0.5
                b = torch.randn(fan_out, rank, generator=generator) * 0.01
                tensors[f"{key}.lora_A.weight"] = a.to(dtype)
                tensors[f"{key}.lora_B.weight"] = b.to(dtype)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(tensors, folder / "adapter_model.safetensors")
        adapter_config = {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": rank,
            "lora_alpha": 2 * rank,
            "target_modules": list(targets),
            "bias": "none",
            "base_model_name_or_path": str(model_dir),
        }
        (folder / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
    return ids
