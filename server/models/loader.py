"""Find a model in Hugging Face format and load its safetensors weights into our `CausalLM`.

A model is a folder with config.json, model.safetensors (or shards listed in
model.safetensors.index.json) and tokenizer files; a hub id resolves through the local Hugging Face
cache only, so this works offline.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .attention import AttentionBackend
from .layers import LoRALinear
from .llama import ARCHITECTURES, PACKED_MODULES, CausalLM
from .onednn_linear import onednn_enabled
from .rotary import compute_inv_freq

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded; the message says what was expected."""


def resolve_model_path(model_id: str, revision: str | None = None) -> Path:
    """A local folder as is; otherwise a hub id looked up in the local Hugging Face cache (no download)."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.is_absolute() or model_id.startswith((".", "~")) or model_id.count("/") > 1:
        raise ModelLoadError(f"model folder {model_id!r} does not exist")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model_id, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError) as error:
        raise ModelLoadError(
            f"{model_id!r} is neither a local folder nor a model in the Hugging Face cache "
            f"(download it first, e.g. `huggingface-cli download {model_id}`): {error}"
        ) from error


def safetensors_files(path: Path) -> list[Path]:
    """The weight files of a model folder: one file, or the shards named by the index."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({path / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(f"{path}: shards listed in {index.name} are missing: {', '.join(missing)}")
        return files
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    others = sorted(path.glob("*.safetensors"))
    if others:
        return others
    raise ModelLoadError(
        f"{path}: expected model.safetensors or model.safetensors.index.json with its shards"
    )


def check_model_folder(path: Path) -> None:
    """Fail fast, with one clear line, when a folder cannot be a model we serve."""
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path}: expected config.json (a Hugging Face model folder)")
    config = json.loads((path / "config.json").read_text())
    architectures = config.get("architectures") or []
    if not architectures or architectures[0] not in ARCHITECTURES:
        raise ModelLoadError(
            f"{path}: unsupported architecture {architectures or config.get('model_type')!r} "
            f"(expected one of {', '.join(ARCHITECTURES)})"
        )
    safetensors_files(path)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(f"{path}: expected tokenizer files ({' or '.join(TOKENIZER_FILES)})")


def load_config(path: Path) -> Any:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    try:
        compute_inv_freq(config, head_dim)
    except (ValueError, KeyError) as error:
        raise ModelLoadError(f"{path}: rope scaling: {error}") from error
    return config


def _iter_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    for file in files:
        with safe_open(file, framework="pt", device="cpu") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                yield name, handle.get_tensor(name)


def _checkpoint_to_param(name: str) -> tuple[str, int | None]:
    """Map a checkpoint tensor name to (our parameter name, slice index of a fused projection)."""
    for fused, parts in PACKED_MODULES.items():
        for index, part in enumerate(parts):
            token = f".{part}."
            if token in name and len(parts) > 1:
                return name.replace(token, f".{fused}."), index
    return name, None


def load_weights(model: CausalLM, files: list[Path]) -> None:
    """Copy every checkpoint tensor into the model (casting dtype); fail on missing or misshapen ones."""
    params = dict(model.named_parameters())
    loaded: set[str] = set()
    for name, tensor in _iter_tensors(files):
        if name == "lm_head.weight" and model.lm_head is None:
            continue
        if "rotary_emb.inv_freq" in name:
            continue
        target_name, slice_index = _checkpoint_to_param(name)
        if target_name not in params:
            raise ModelLoadError(f"checkpoint tensor {name!r} has no place in {model.shape.architecture}")
        target = params[target_name]
        if slice_index is not None:
            layer = model.get_submodule(target_name.rsplit(".", 1)[0])
            widths = layer.out_slices
            start = sum(widths[:slice_index])
            target = target.narrow(0, start, widths[slice_index])
        if tuple(target.shape) != tuple(tensor.shape):
            raise ModelLoadError(
                f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(target.shape)}"
            )
        target.copy_(tensor.to(dtype=target.dtype))
        loaded.add(f"{target_name}#{slice_index}")
    missing = sorted(_expected_pieces(model) - loaded)
    if missing:
        names = ", ".join(piece.split("#")[0] for piece in missing[:5])
        raise ModelLoadError(f"checkpoint is missing tensors for: {names}")


def _expected_pieces(model: CausalLM) -> set[str]:
    """Every parameter, and every slice of a fused projection's parameters, as `name#slice`."""
    pieces = set()
    for name, _ in model.named_parameters():
        owner = model.get_submodule(name.rsplit(".", 1)[0])
        slices = len(owner.out_slices) if isinstance(owner, LoRALinear) else 1
        pieces.update({f"{name}#{i}" for i in range(slices)} if slices > 1 else {f"{name}#None"})
    return pieces


def build_model(
    path: Path, config: Any, backend: AttentionBackend, dtype: torch.dtype, device: torch.device
) -> CausalLM:
    architecture = config.architectures[0]
    with torch.no_grad():
        model = CausalLM(config, architecture, backend, dtype, device)
        load_weights(model, safetensors_files(path))
        if onednn_enabled(dtype, device):
            model.move_weights_to_onednn()
    model.eval()
    logger.info("loaded %s weights from %s", architecture, path)
    return model
