"""Random-weight Llama models in Hugging Face format for benchmarks (nothing is downloaded).

`llama-58m` is the CPU benchmark model: hidden 512, 8 layers, vocab 32000, about 58M parameters.
Its tokenizer is a word-level vocabulary of 32000 made-up words, so any token id decodes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

CACHE = Path.home() / ".cache" / "loraplex" / "bench-models"

SHAPES = {
    "llama-58m": dict(
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        vocab_size=32000,
        max_position_embeddings=2048,
    ),
}


def _save_tokenizer(directory: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    vocab = {token: i for i, token in enumerate(specials)}
    vocab.update({f"w{i}": i for i in range(len(specials), vocab_size)})
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(directory)


def build(name: str = "llama-58m", root: Path = CACHE, seed: int = 0) -> Path:
    """The model folder, created on first use."""
    directory = root / name
    if (directory / "config.json").is_file() and (directory / "model.safetensors").is_file():
        return directory
    from transformers import AutoModelForCausalLM, LlamaConfig

    shape = SHAPES[name]
    config = LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if not param_name.endswith("norm.weight"):
                param.normal_(0.0, 0.02)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    _save_tokenizer(directory, shape["vocab_size"])
    (directory / "loraplex-bench.json").write_text(json.dumps({"name": name, "seed": seed}))
    return directory
