"""Chat prompts, rendered with vLLM's chat extras (`add_generation_prompt`, `continue_final_message`,
`chat_template_kwargs`) from the first template there is of: the request's own (only when the server
trusts them, `--trust-request-chat-template`), the adapter's (when its folder ships one), the server's
`--chat-template`, the base model's."""

from __future__ import annotations

import codecs
import inspect
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from loraplex.server.adapters.sources import HUB, AdapterLocation

from .content_format import takes_content_parts, template_environment
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


def _text_parts(content) -> list[str]:
    """A message's content as a list of texts: a string is one part; parts without text are left out."""
    if content is None or isinstance(content, str):
        return [content] if content is not None else []
    for part in content:
        if part.type != "text":
            raise validation_error(f"message content of type {part.type!r} is not supported (text only)")
    return [part.text for part in content if part.text is not None]


def message_text(content) -> str:
    """A message's text: its non-empty content parts joined with newlines, as vLLM joins them."""
    return "\n".join(text for text in _text_parts(content) if text)


def _template_message(message, parts: bool) -> dict[str, Any]:
    """A message as the template gets it, as vLLM gives it: its text, or its text parts for a template
    that takes parts (a tool's result even then as one text, its parts joined)."""
    if not parts:
        return {"role": message.role, "content": message_text(message.content)}
    texts = _text_parts(message.content)
    if message.role == "tool":
        return {"role": message.role, "content": "\n".join(texts)}
    return {"role": message.role, "content": [{"type": "text", "text": text} for text in texts]}


@dataclass(frozen=True)
class ChatOptions:
    """How the conversation is rendered: vLLM's chat extras of one request."""

    add_generation_prompt: bool = True
    continue_final_message: bool = False
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    template: str | None = None  # the request's own, when the server trusts it


# Keys vLLM refuses in `chat_template_kwargs`; `tools` too, since tools are not served here.
_REFUSED_KWARGS = ("tokenize", "tools")


def chat_options(body, trust_request_template: bool = False) -> ChatOptions:
    """The request's chat extras, refused where vLLM refuses them. A request's own `chat_template` is
    used only by a server started with --trust-request-chat-template; as in current vLLM, one inside
    `chat_template_kwargs` is used when the `chat_template` field is not set."""
    kwargs = dict(body.chat_template_kwargs or {})
    in_kwargs = kwargs.pop("chat_template", None)
    if not trust_request_template and (body.chat_template is not None or in_kwargs is not None):
        raise validation_error(
            "`chat_template` is not accepted: this server does not render chat templates sent with a "
            "request (start it with --trust-request-chat-template to allow them)"
        )
    own_template = body.chat_template or in_kwargs
    refused = [key for key in _REFUSED_KWARGS if key in kwargs]
    if refused:
        raise validation_error(f"`chat_template_kwargs` cannot set {', '.join(map(repr, refused))}")
    if body.continue_final_message and body.add_generation_prompt:
        implicit = "add_generation_prompt" not in body.model_fields_set
        raise validation_error(
            "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
            + (" (`add_generation_prompt` defaults to true)" if implicit else "")
        )
    # As in vLLM, the request's own fields win over the same names in chat_template_kwargs.
    kwargs.pop("add_generation_prompt", None)
    kwargs.pop("continue_final_message", None)
    documents = (body.model_extra or {}).get("documents")
    if documents is not None:  # vLLM's `documents`, for templates that render retrieved documents
        kwargs["documents"] = documents
    return ChatOptions(body.add_generation_prompt, body.continue_final_message, kwargs, own_template)


def reply_role(messages, options: ChatOptions) -> str:
    """vLLM's role of the reply: the assistant's after a generation prompt, else the last message's."""
    return "assistant" if options.add_generation_prompt else messages[-1].role


def _template_variables(tokenizer, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The kwargs that reach the template: those naming a parameter of `apply_chat_template` itself
    (padding, return_dict, ...) only shape its tokenized output, which is not used here."""
    own = inspect.signature(tokenizer.apply_chat_template).parameters
    return {k: v for k, v in kwargs.items() if k not in own or k == "documents"}


def render_chat(
    tokenizer,
    messages,
    adapter: AdapterLocation | None,
    options: ChatOptions | None = None,
    server_template: str | None = None,
) -> list[int]:
    """Token ids of the conversation: ending where the assistant's reply starts (with a generation
    prompt), where the last message ends (without), or inside the last message (continued).
    `server_template` (--chat-template) stands in for the base model's."""
    options = options or ChatOptions()
    template = (
        options.template
        or adapter_template(adapter)
        or server_template
        or getattr(tokenizer, "chat_template", None)
    )
    if not template:
        raise validation_error(
            "this model has no chat template (neither the adapter nor the base model ships one, and "
            "the server has no --chat-template); use /v1/completions or /generate"
        )
    parts = takes_content_parts(template)
    conversation = [_template_message(m, parts) for m in messages]
    try:
        text = tokenizer.apply_chat_template(
            conversation,
            **_template_variables(tokenizer, options.template_kwargs),
            chat_template=template,
            tokenize=False,
            add_generation_prompt=options.add_generation_prompt,
            continue_final_message=options.continue_final_message,
        )
    except (ValueError, TypeError, jinja2.TemplateError) as error:
        raise validation_error(f"the chat template could not be rendered: {error}") from error
    return tokenizer(check_text(text, "messages"), add_special_tokens=False).input_ids


def load_server_template(value: str) -> str:
    """--chat-template: a file's contents, or the template itself (escapes such as \\n decoded) when
    no such file exists and the text looks like Jinja, as vLLM reads the flag. Raises ValueError with a
    one-line reason."""
    path = Path(value)
    if path.is_file():
        try:
            template = path.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"cannot read {value}: {error}") from error
    elif any(mark in value for mark in ("{{", "{%")):
        template = codecs.decode(value, "unicode_escape")
    else:
        raise ValueError(f"no such file: {value}")
    try:
        template_environment().parse(template)
    except jinja2.TemplateSyntaxError as error:
        raise ValueError(f"not a valid Jinja template: {error} (line {error.lineno})") from error
    return template
