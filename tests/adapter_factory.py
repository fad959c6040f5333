"""PEFT LoRA adapters with random (non-zero) weights for a tiny base model, saved with save_pretrained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from model_factory import load_reference
from peft import LoraConfig, PeftModel, get_peft_model

ALL_SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Adapters that differ in every way the engine must honor.
ADAPTER_SPECS: dict[str, dict[str, Any]] = {
    "attn-r4": dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    "mlp-r8": dict(r=8, lora_alpha=16, target_modules=["gate_proj", "up_proj", "down_proj"]),
    "all-r16-rslora": dict(r=16, lora_alpha=32, target_modules=ALL_SEVEN, use_rslora=True),
    "all-r64": dict(r=64, lora_alpha=64, target_modules=ALL_SEVEN),
    "patterns": dict(
        r=8,
        lora_alpha=8,
        target_modules=ALL_SEVEN,
        rank_pattern={"q_proj": 4, "down_proj": 16},
        alpha_pattern={"v_proj": 32},
        layers_to_transform=[1],
    ),
    "regex-r6": dict(r=6, lora_alpha=12, target_modules=r".*\.(q_proj|v_proj|up_proj)"),
}


def build_adapter(base_dir: Path, out_dir: Path, seed: int = 0, scale: float = 0.15, **lora: Any) -> Path:
    torch.manual_seed(seed)
    model = load_reference(base_dir)
    peft_model = get_peft_model(model, LoraConfig(init_lora_weights=False, task_type="CAUSAL_LM", **lora))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, scale)
    peft_model.save_pretrained(out_dir)
    return out_dir


def edit_config(adapter_dir: Path, **changes: Any) -> None:
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def load_peft_reference(base_dir: Path, adapter_dir: Path | None):
    model = load_reference(base_dir)
    if adapter_dir is None:
        return model
    return PeftModel.from_pretrained(model, adapter_dir).eval()
