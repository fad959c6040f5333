"""Everything that decides the demo's weights: the base architecture and the training recipes.

Changing a number here and rerunning ``python -m loraplex.demo.train`` is how the assets are remade.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import GenerationConfig, LlamaConfig

from loraplex.demo.tokenizer import BOS_ID, EOS_ID, MODEL_MAX_LENGTH, PAD_ID, VOCAB_SIZE

THREADS = 1
"""Torch threads per training process. With one, the bits do not depend on the core count and a busy
machine costs little; the adapters use the second core by training in parallel processes."""

ADAPTER_MODEL_NAME = "loraplex-demo"
"""What the adapters record as ``base_model_name_or_path`` (not a local path)."""

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def base_config() -> LlamaConfig:
    """A plain Llama: 4 layers, hidden 128, 4 query heads of 32 over 2 KV heads, untied lm_head."""
    return LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=MODEL_MAX_LENGTH,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )


def generation_config() -> GenerationConfig:
    """Greedy decoding that stops at ``<eos>``."""
    return GenerationConfig(
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        do_sample=False,
    )


@dataclass(frozen=True)
class Schedule:
    """One training run: AdamW with linear warmup then cosine decay, gradients clipped to norm 1.

    Batches come from ``TrainingInputs(seed)``, drawn ``buckets * batch_size`` at a time, sorted by
    length and cut into ``buckets`` batches (in a seeded order), so little compute goes to padding.
    """

    steps: int
    lr: float
    seed: int
    batch_size: int = 64
    warmup: int = 50
    buckets: int = 8
    weight_decay: float = 0.0


@dataclass(frozen=True)
class AdapterRecipe:
    """A LoRA adapter: its task (a key of ``TRANSFORMS``), rank, alpha, targets and schedule."""

    task: str
    rank: int
    alpha: int
    schedule: Schedule
    target_modules: tuple[str, ...] = PROJECTIONS


BASE_SCHEDULE = Schedule(steps=1200, lr=3e-3, seed=0)

ADAPTER_RECIPES: dict[str, AdapterRecipe] = {
    "upper": AdapterRecipe("upper", rank=8, alpha=16, schedule=Schedule(steps=300, lr=5e-3, seed=1)),
    "reverse": AdapterRecipe("reverse", rank=16, alpha=16, schedule=Schedule(steps=1000, lr=5e-3, seed=2)),
    "rot13": AdapterRecipe("rot13", rank=32, alpha=32, schedule=Schedule(steps=600, lr=5e-3, seed=3)),
}
"""Ranks differ on purpose (an engine must serve mixed ranks); rot13, a new letter-to-letter map,
needs the most."""
