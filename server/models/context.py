"""The per-step forward context: what every layer needs to know about the batch besides its input.

The runner sets it around one model forward, so that layer signatures stay `forward(x)` while attention
reads block tables and the LoRA layers read adapter segments.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .attention import AttentionMetadata


@dataclass
class ForwardContext:
    """attention: paged-attention metadata; lora: the step's adapter segments (None = no adapters)."""

    attention: AttentionMetadata
    lora: Any = None


_current: ForwardContext | None = None


def get_forward_context() -> ForwardContext:
    if _current is None:
        raise RuntimeError("model forward called outside forward_context()")
    return _current


@contextmanager
def forward_context(context: ForwardContext) -> Iterator[ForwardContext]:
    global _current
    previous, _current = _current, context
    try:
        yield context
    finally:
        _current = previous
