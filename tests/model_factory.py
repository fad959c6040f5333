"""Tiny random models in Hugging Face format, built offline: configs from transformers, a BPE tokenizer
trained with `tokenizers` on a few sentences, weights saved with save_pretrained."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Adapters let one base model serve many tasks at once.",
    "Paged attention stores keys and values in fixed-size blocks.",
    "Continuous batching lets requests join and leave between steps.",
    "Hello world! How are you today? I am fine, thank you.",
    "0123456789 + - * / = ( ) [ ] { } < > , . ; : ' \" ! ?",
] * 20

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]


def build_tokenizer(directory: Path, vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """Byte-level BPE: any text round-trips; ids 0-3 are <unk>, <s>, </s>, <pad>."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.save_pretrained(directory)
    return fast


def _config(architecture: str, vocab_size: int, **overrides):
    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    common.update(overrides)
    if architecture == "llama":
        return LlamaConfig(**common)
    if architecture == "mistral":
        return MistralConfig(**common)
    if architecture == "qwen2":
        return Qwen2Config(**common)
    raise ValueError(architecture)


# Variants the tests run: each exercises something the others don't.
VARIANTS = {
    # llama3 rope scaling and tied embeddings
    "llama": dict(
        tie_word_embeddings=True,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 128,
        },
    ),
    # a sliding window shorter than the test sequences
    "mistral": dict(sliding_window=24, head_dim=16),
    # bias on q/k/v, no GQA
    "qwen2": dict(num_key_value_heads=4),
}


def build_model(directory: Path, architecture: str, seed: int = 0, **overrides) -> Path:
    """Save a random model + tokenizer under `directory`; returns the folder."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(directory)
    options = {**VARIANTS.get(architecture, {}), **overrides}
    config = _config(architecture, len(tokenizer), **options)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(1.0, 0.1)
            elif name.endswith("bias"):
                param.normal_(0.0, 0.1)
            else:
                param.normal_(0.0, 0.08)
    model.save_pretrained(directory)
    return directory


def load_reference(directory: Path):
    """The transformers model the engine is checked against."""
    return AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, attn_implementation="eager"
    ).eval()
