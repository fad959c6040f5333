"""Reads a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) into per-layer tensors.

Which modules an adapter changes is read from the weights it ships (PEFT saves exactly the targeted
modules, so `target_modules`, `layers_to_transform` and `exclude_modules` are honored by construction);
the config supplies ranks and scalings: r and lora_alpha, per-module `rank_pattern` / `alpha_pattern`,
and scaling = alpha / r, or alpha / sqrt(r) with `use_rslora`. Anything that would change outputs and
is not implemented is refused with the name of the field.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import AdapterReadError, UnsupportedAdapterError

logger = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
LEGACY_WEIGHTS_FILE = "adapter_model.bin"

# PEFT module name -> (our projection group, slice index within the group).
MODULE_SLICES: dict[str, tuple[str, int]] = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "o_proj": ("o_proj", 0),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
    "down_proj": ("down_proj", 0),
}

# Config fields that change what the adapter computes; refused when set.
_UNSUPPORTED_WHEN_SET = {
    "use_dora": "DoRA adapters are not supported",
    "modules_to_save": "fully trained modules (modules_to_save) are not supported",
    "lora_bias": "trained LoRA biases are not supported",
    "use_qalora": "QA-LoRA is not supported",
    "alora_invocation_tokens": "activated LoRA (aLoRA) is not supported",
    "layer_replication": "layer replication is not supported",
    "target_parameters": "LoRA on parameters (target_parameters) is not supported",
    "trainable_token_indices": "trainable tokens are not supported",
    "use_bdlora": "BD-LoRA is not supported",
    "arrow_config": "Arrow routing is not supported",
    "kasa_config": "KaSA is not supported",
    "monteclora_config": "MonteCLoRA is not supported",
    "velora_config": "VeLoRA is not supported",
}

_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B|"
    r"lora_magnitude_vector)(?:\.[^.]+)?\.(?P<param>weight|bias)$"
)
_LAYER = re.compile(r"^model\.layers\.(?P<index>\d+)\.(?:self_attn|mlp)\.(?P<name>\w+)$")


@dataclass
class AdapterWeights:
    """One adapter on the host, laid out as the kernels want it.

    groups[(layer, key)] = (A [n_slices, r, in], B [out_total, r], ranks [n_slices], scalings [n_slices]),
    with r the largest rank among the group's slices (smaller ones are zero-padded, ranks say the real
    size; rank 0 = slice not targeted).
    """

    adapter_id: str
    path: Path
    max_rank: int
    groups: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, list[int], list[float]]] = field(
        default_factory=dict
    )
    base_model: str | None = None

    @property
    def nbytes(self) -> int:
        return sum(
            a.numel() * a.element_size() + b.numel() * b.element_size() for a, b, _, _ in self.groups.values()
        )

    def pin_memory(self) -> AdapterWeights:
        self.groups = {k: (a.pin_memory(), b.pin_memory(), r, s) for k, (a, b, r, s) in self.groups.items()}
        return self


def _pattern_value(patterns: dict[str, Any], module_key: str, default: Any) -> Any:
    """PEFT's rule: the first pattern p with re.match(rf"(.*\\.)?({p})$", key) wins."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module_key):
            return value
    return default


def read_config(adapter_id: str, path: Path) -> dict[str, Any]:
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise AdapterReadError(adapter_id, f"{CONFIG_FILE} is missing in {path}")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AdapterReadError(adapter_id, f"{CONFIG_FILE} is not readable JSON: {error}") from error
    if not isinstance(config, dict):
        raise AdapterReadError(adapter_id, f"{CONFIG_FILE} must hold a JSON object")
    return config


def check_config(adapter_id: str, config: dict[str, Any], max_lora_rank: int) -> None:
    peft_type = config.get("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        raise UnsupportedAdapterError(adapter_id, f"peft_type {peft_type!r} is not supported (only LORA)")
    for name, reason in _UNSUPPORTED_WHEN_SET.items():
        if config.get(name):
            raise UnsupportedAdapterError(adapter_id, f"{name}: {reason}")
    if config.get("bias", "none") != "none":
        raise UnsupportedAdapterError(
            adapter_id, f"bias: {config['bias']!r} trains biases, which is not supported"
        )
    ranks = [config.get("r", 8), *(config.get("rank_pattern") or {}).values()]
    too_big = [r for r in ranks if r > max_lora_rank]
    if too_big:
        field_name = "r" if config.get("r", 8) > max_lora_rank else "rank_pattern"
        raise UnsupportedAdapterError(
            adapter_id, f"{field_name}: rank {max(too_big)} exceeds --max-lora-rank {max_lora_rank}"
        )
    targets = config.get("target_modules")
    if isinstance(targets, list | tuple):
        for forbidden in ("embed_tokens", "lm_head", "wte"):
            if forbidden in targets:
                raise UnsupportedAdapterError(
                    adapter_id, f"target_modules: LoRA on {forbidden} (embeddings / lm_head) is not supported"
                )


def read_tensors(adapter_id: str, path: Path) -> dict[str, torch.Tensor]:
    weights = path / WEIGHTS_FILE
    legacy = path / LEGACY_WEIGHTS_FILE
    try:
        if weights.is_file():
            from safetensors.torch import load_file

            return load_file(weights)
        if legacy.is_file():
            return torch.load(legacy, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure to parse the file is the same error to a user
        name = weights.name if weights.is_file() else legacy.name
        raise AdapterReadError(adapter_id, f"{name} is unreadable or truncated: {error}") from error
    raise AdapterReadError(adapter_id, f"expected {WEIGHTS_FILE} (or {LEGACY_WEIGHTS_FILE}) in {path}")


def _parse_key(adapter_id: str, key: str) -> tuple[str, str]:
    match = _KEY.match(key)
    if match is None:
        raise UnsupportedAdapterError(adapter_id, f"unexpected tensor {key!r} (not a LoRA A/B weight)")
    part, param, module = match["part"], match["param"], match["module"]
    if part.startswith("lora_embedding") or module.endswith(("embed_tokens", "lm_head")):
        raise UnsupportedAdapterError(
            adapter_id, f"target_modules: LoRA on embeddings / lm_head ({module}) is not supported"
        )
    if part == "lora_magnitude_vector":
        raise UnsupportedAdapterError(adapter_id, "use_dora: DoRA adapters are not supported")
    if param == "bias":
        raise UnsupportedAdapterError(
            adapter_id, f"lora_bias: trained LoRA bias in {module} is not supported"
        )
    return module, part


def build_weights(
    adapter_id: str,
    path: Path,
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    num_layers: int,
    out_slices: dict[str, tuple[int, ...]],
    in_features: dict[str, int],
    dtype: torch.dtype,
) -> AdapterWeights:
    """Validate shapes against the base model and stack the tensors per (layer, projection group)."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        module, part = _parse_key(adapter_id, key)
        modules.setdefault(module, {})[part] = tensor
    if not modules:
        raise UnsupportedAdapterError(adapter_id, "target_modules: the adapter has no LoRA weights")
    r_default, alpha_default = config.get("r", 8), config.get("lora_alpha", 8)
    rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    rslora = bool(config.get("use_rslora", False))
    per_group: dict[tuple[int, str], dict[int, tuple[torch.Tensor, torch.Tensor, float]]] = {}
    for module, parts in modules.items():
        where = _LAYER.match(module)
        if where is None or where["name"] not in MODULE_SLICES:
            raise UnsupportedAdapterError(
                adapter_id,
                f"target_modules: {module!r} is not a projection of this model "
                f"({', '.join(MODULE_SLICES)} in model.layers.N)",
            )
        layer = int(where["index"])
        if layer >= num_layers:
            raise UnsupportedAdapterError(
                adapter_id, f"{module!r}: the base model has only {num_layers} layers"
            )
        if set(parts) != {"lora_A", "lora_B"}:
            raise AdapterReadError(adapter_id, f"{module!r} needs both lora_A and lora_B weights")
        group, index = MODULE_SLICES[where["name"]]
        a, b = parts["lora_A"], parts["lora_B"]
        rank = _pattern_value(rank_pattern, module, r_default)
        expected_a = (rank, in_features[group])
        expected_b = (out_slices[group][index], rank)
        if tuple(a.shape) != expected_a or tuple(b.shape) != expected_b:
            raise UnsupportedAdapterError(
                adapter_id,
                f"{module}: lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not fit the base model "
                f"(expected {expected_a} / {expected_b} for rank {rank})",
            )
        alpha = _pattern_value(alpha_pattern, module, alpha_default)
        scaling = alpha / math.sqrt(rank) if rslora else alpha / rank
        per_group.setdefault((layer, group), {})[index] = (a, b, scaling)
    weights = AdapterWeights(adapter_id, path, max_rank=0, base_model=config.get("base_model_name_or_path"))
    for (layer, group), slices in per_group.items():
        widths = out_slices[group]
        r = max(a.shape[0] for a, _, _ in slices.values())
        stacked_a = torch.zeros(len(widths), r, in_features[group], dtype=dtype)
        stacked_b = torch.zeros(sum(widths), r, dtype=dtype)
        ranks, scalings = [0] * len(widths), [0.0] * len(widths)
        for index, (a, b, scaling) in slices.items():
            rank, offset = a.shape[0], sum(widths[:index])
            stacked_a[index, :rank] = a
            stacked_b[offset : offset + widths[index], :rank] = b
            ranks[index], scalings[index] = rank, scaling
        weights.groups[(layer, group)] = (stacked_a, stacked_b, ranks, scalings)
        weights.max_rank = max(weights.max_rank, r)
    return weights


def load_adapter(
    adapter_id: str,
    path: Path,
    num_layers: int,
    out_slices: dict[str, tuple[int, ...]],
    in_features: dict[str, int],
    dtype: torch.dtype,
    max_lora_rank: int,
    base_model_names: tuple[str, ...] = (),
) -> AdapterWeights:
    """Read, validate and lay out one adapter folder on the host. An adapter trained on a model that
    none of `base_model_names` (the served model's id and name) names is warned about, once."""
    config = read_config(adapter_id, path)
    check_config(adapter_id, config, max_lora_rank)
    tensors = read_tensors(adapter_id, path)
    weights = build_weights(adapter_id, path, config, tensors, num_layers, out_slices, in_features, dtype)
    names = {_model_name(name) for name in base_model_names}
    if names and weights.base_model and _model_name(weights.base_model) not in names:
        _warn_other_base(adapter_id, weights.base_model, base_model_names[0])
    return weights


@functools.cache
def _warn_other_base(adapter_id: str, trained_on: str, serving_on: str) -> None:
    """Once per adapter and base, not again each time an evicted adapter is read back."""
    logger.warning(
        "adapter %r was trained on %r, serving it on %r (shapes fit)", adapter_id, trained_on, serving_on
    )


def _model_name(model_id: str) -> str:
    return model_id.rstrip("/").rsplit("/", 1)[-1].lower()
