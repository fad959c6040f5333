"""The built-in demo: a tiny byte-level Llama that echoes its input, and three LoRA adapters for it.

The weights ship as package data under ``assets/`` (written by ``python -m loraplex.demo.train``):

- ``assets/base/``: the base model (``config.json``, ``model.safetensors``, tokenizer files); it
  repeats its input. The tokenizer frames a raw text as a prompt, so ``"hello world"`` is a prompt.
- ``assets/adapters/{upper,reverse,rot13}/``: PEFT LoRA adapters that make it answer with the input
  in capitals, reversed, or rot13-encoded.

This module only names paths; it imports nothing heavy.
"""

from __future__ import annotations

from pathlib import Path

ADAPTER_NAMES: tuple[str, ...] = ("upper", "reverse", "rot13")

ASSETS_DIR = Path(__file__).resolve().parent / "assets"


def base_model_dir() -> Path:
    """The directory of the demo base model (loadable with ``from_pretrained``)."""
    return ASSETS_DIR / "base"


def adapters_dir() -> Path:
    """The directory holding one sub-directory per demo adapter (for ``--adapter-dir``)."""
    return ASSETS_DIR / "adapters"


def adapter_dir(name: str) -> Path:
    """The directory of the demo adapter ``name``, one of ``ADAPTER_NAMES``."""
    if name not in ADAPTER_NAMES:
        raise ValueError(f"unknown demo adapter {name!r}; the demo adapters are {', '.join(ADAPTER_NAMES)}")
    return adapters_dir() / name
