"""Random models and adapters for the serving benchmark, built where they will run (nothing downloaded).

`write_random_model` writes a Llama folder in Hugging Face format: config.json, a word-level tokenizer,
and safetensors shards whose tensors are drawn on the target device (a GPU draws 8B parameters in
seconds) and streamed to disk one tensor at a time, in the safetensors layout written directly.

`write_random_adapters` writes `count` PEFT adapters of which only `unique` have their own random
weights; the others hard-link one of those weight files. A server still loads each into its own
slot, so serving costs are those of distinct adapters while the disk holds `unique` of them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from pathlib import Path

import torch

from benchmarks.random_adapters import build_adapters
from benchmarks.random_model import _save_tokenizer

LLAMA3_8B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=8192,
    rope_theta=500000.0,
)
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=512,
    max_position_embeddings=1024,
)
_ST_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
_SHARD_BYTES = 4 << 30


def llama_tensors(shape: dict) -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor of a Llama checkpoint (untied lm_head), in Hugging Face names."""
    hidden, inter, vocab = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    heads, kv_heads = shape["num_attention_heads"], shape["num_key_value_heads"]
    head_dim = hidden // heads
    tensors = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(shape["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors += [
            (p + "input_layernorm.weight", (hidden,)),
            (p + "self_attn.q_proj.weight", (heads * head_dim, hidden)),
            (p + "self_attn.k_proj.weight", (kv_heads * head_dim, hidden)),
            (p + "self_attn.v_proj.weight", (kv_heads * head_dim, hidden)),
            (p + "self_attn.o_proj.weight", (hidden, heads * head_dim)),
            (p + "post_attention_layernorm.weight", (hidden,)),
            (p + "mlp.gate_proj.weight", (inter, hidden)),
            (p + "mlp.up_proj.weight", (inter, hidden)),
            (p + "mlp.down_proj.weight", (hidden, inter)),
        ]
    tensors += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    return tensors


def _shards(
    tensors: list[tuple[str, tuple[int, ...]]], element: int
) -> list[list[tuple[str, tuple[int, ...]]]]:
    shards, current, size = [], [], 0
    for name, shape in tensors:
        nbytes = math.prod(shape) * element
        if current and size + nbytes > _SHARD_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    return [*shards, current] if current else shards


def _write_shard(path: Path, tensors, dtype: torch.dtype, device: torch.device, generator) -> None:
    """One safetensors file: header, then each tensor drawn on `device` and streamed to disk."""
    element = torch.empty((), dtype=dtype).element_size()
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in tensors:
        nbytes = math.prod(shape) * element
        header[name] = {
            "dtype": _ST_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(blob)))
        handle.write(blob)
        for name, shape in tensors:
            if name.endswith("norm.weight"):
                tensor = torch.ones(shape, dtype=dtype, device=device)
            else:
                tensor = torch.empty(shape, dtype=dtype, device=device).normal_(
                    0.0, 0.02, generator=generator
                )
            host = tensor.cpu().contiguous().view(-1).view(torch.uint8)
            handle.write(host.numpy())
            del tensor, host


def write_random_model(
    directory: Path, shape: dict, dtype: torch.dtype, device: str = "cpu", seed: int = 0
) -> Path:
    """A Llama folder with random weights (reused if one with the same shape, dtype and seed is there)."""
    from transformers import LlamaConfig

    directory = Path(directory)
    stamp = {"shape": shape, "dtype": str(dtype), "seed": seed}
    marker = directory / "loraplex-bench.json"
    if marker.is_file() and json.loads(marker.read_text()) == stamp:
        return directory
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    config = LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = str(dtype).removeprefix("torch.")
    config.save_pretrained(directory)
    _save_tokenizer(directory, shape["vocab_size"])
    target = torch.device(device)
    generator = torch.Generator(target).manual_seed(seed)
    element = torch.empty((), dtype=dtype).element_size()
    shards = _shards(llama_tensors(shape), element)
    weight_map, total = {}, 0
    for i, tensors in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        _write_shard(directory / name, tensors, dtype, target, generator)
        for tensor_name, tensor_shape in tensors:
            weight_map[tensor_name] = name
            total += math.prod(tensor_shape) * element
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    marker.write_text(json.dumps(stamp))
    return directory


def write_random_adapters(
    model_dir: Path,
    root: Path,
    count: int,
    rank: int,
    unique: int = 8,
    dtype: torch.dtype = torch.bfloat16,
    prefix: str = "bench",
) -> list[str]:
    """`count` adapter folders <prefix>-r<rank>-<i>; folders past `unique` hard-link an earlier file."""
    unique = max(1, min(unique, count))
    ids = build_adapters(model_dir, root, unique, rank, dtype=dtype, prefix=prefix)
    for index in range(unique, count):
        adapter_id = f"{prefix}-r{rank}-{index}"
        folder = root / adapter_id
        ids.append(adapter_id)
        weights = folder / "adapter_model.safetensors"
        if weights.is_file():
            continue
        source = root / ids[index % unique]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / "adapter_config.json", folder / "adapter_config.json")
        try:
            os.link(source / "adapter_model.safetensors", weights)
        except OSError:
            shutil.copyfile(source / "adapter_model.safetensors", weights)
    return ids


def adapter_bytes(shape: dict, rank: int, element: int, targets: int = 7) -> int:
    """Bytes of one rank-`rank` adapter on all seven projections (A and B of every layer)."""
    from benchmarks.random_adapters import ALL_SEVEN, module_shapes

    shapes = module_shapes(shape)
    per_layer = sum(rank * (shapes[m][0] + shapes[m][1]) for m in ALL_SEVEN[:targets])
    return shape["num_hidden_layers"] * per_layer * element


def work_dir(needed_bytes: int, preferred: Path = Path("/dev/shm")) -> Path:
    """/dev/shm/loraplex-bench when it has room (memory-speed writes), else the benchmark cache."""
    try:
        if preferred.is_dir() and shutil.disk_usage(preferred).free > needed_bytes * 1.2:
            return preferred / "loraplex-bench"
    except OSError:
        pass
    return Path.home() / ".cache" / "loraplex" / "bench-models"
