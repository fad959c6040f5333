"""Chat prompts: the adapter's own chat template when its folder ships one, else the base model's."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from loraplex.server.adapters.sources import HUB, AdapterLocation

from .errors import validation_error
from .validation import check_text


@lru_cache(maxsize=256)
def _template_in(folder: str, mtime_key: float) -> str | None:
    path = Path(folder)
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    config = path / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text()).get("chat_template")
        if isinstance(template, str):
            return template
    return None


def adapter_template(location: AdapterLocation | None) -> str | None:
    """The chat template shipped in an adapter's folder (for hub adapters: only if already cached)."""
    if location is None:
        return None
    folder = location.path
    if location.source == HUB:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(location.repo_id, "adapter_config.json")
        folder = Path(cached).parent if isinstance(cached, str) else None
    if folder is None:
        return None
    stamps = [
        p.stat().st_mtime
        for p in (folder / "chat_template.jinja", folder / "tokenizer_config.json")
        if p.is_file()
    ]
    return _template_in(str(folder), max(stamps, default=0.0))


def message_text(content) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if part.type != "text":
            raise validation_error(f"message content of type {part.type!r} is not supported (text only)")
        parts.append(part.text or "")
    return "".join(parts)


def render_chat(tokenizer, messages, adapter: AdapterLocation | None) -> list[int]:
    """Token ids of the conversation, ending where the assistant's reply starts."""
    template = adapter_template(adapter) or getattr(tokenizer, "chat_template", None)
    if not template:
        raise validation_error(
            "this model has no chat template (neither the adapter nor the base model ships one); "
            "use /v1/completions or /generate"
        )
    conversation = [{"role": m.role, "content": message_text(m.content)} for m in messages]
    text = tokenizer.apply_chat_template(
        conversation, chat_template=template, tokenize=False, add_generation_prompt=True
    )
    return tokenizer(check_text(text, "messages"), add_special_tokens=False).input_ids
