"""Tokenizer loading and incremental detokenization with stop-sequence matching."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def load_tokenizer(path: Path | str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def window_decoder(tokenizer: Any) -> Callable[[list[int]], str]:
    """`tokenizer.decode(ids, skip_special_tokens=False)`, straight through the Rust tokenizer where that
    is all transformers would do (a fast tokenizer that cleans up no spaces and overrides no decode):
    for the few ids of a streaming window, the Python wrapper costs several times the decode itself."""
    try:
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:
        TokenizersBackend = None  # noqa: N806
    raw = getattr(tokenizer, "_tokenizer", None)
    if (
        TokenizersBackend is not None
        and isinstance(tokenizer, TokenizersBackend)
        and type(tokenizer)._decode is TokenizersBackend._decode
        and not tokenizer.clean_up_tokenization_spaces
        and raw is not None
    ):
        return lambda ids: raw.decode(ids, skip_special_tokens=False)
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=False)


class IncrementalDetokenizer:
    """Emits the text of each new token as soon as it decodes to whole characters.

    Decodes a short window of recent tokens twice (with and without the new ones) and emits the
    difference, so multi-token characters and tokenizers that merge spaces come out right. Keeps the
    generated text (special tokens excluded) for stop-sequence checks.
    """

    def __init__(self, tokenizer: Any, prompt_ids: list[int], stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = stop
        self._ids = list(prompt_ids[-6:])
        self._prefix_offset = max(len(self._ids) - 5, 0)
        self._read_offset = len(self._ids)
        self.text = ""
        self._special = set(tokenizer.all_special_ids)
        self._decode = window_decoder(tokenizer)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special

    def add(self, token_id: int) -> str:
        """Append one generated token; return the new text it completes (may be "")."""
        self._ids.append(token_id)
        decode = self._decode
        prefix = decode(self._ids[self._prefix_offset : self._read_offset])
        full = decode(self._ids[self._prefix_offset :])
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return ""
        delta = full[len(prefix) :]
        if token_id not in self._special:
            self.text += delta
        else:  # text held back for an incomplete character comes out with it: keep that part
            self.text += decode(self._ids[self._prefix_offset : -1])[len(prefix) :]
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        if len(self._ids) > 64:
            drop = self._prefix_offset
            self._ids = self._ids[drop:]
            self._prefix_offset, self._read_offset = 0, self._read_offset - drop
        return delta

    def flush(self) -> str:
        """At the end of generation: whatever text is still held back (an incomplete character)."""
        decode = self._decode
        prefix = decode(self._ids[self._prefix_offset : self._read_offset])
        full = decode(self._ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._ids)
        delta = full[len(prefix) :]
        self.text += delta
        return delta

    def final_text(self, output_ids: list[int]) -> str:
        """The whole generated text, decoded at once, special tokens left out."""
        return self.tokenizer.decode(output_ids, skip_special_tokens=True)

    def stop_matched(self, delta: str) -> bool:
        """True if a stop sequence appears in the text that ends with `delta`."""
        if not delta:
            return False
        return any(s in self.text[-(len(s) + len(delta)) :] for s in self.stop)
