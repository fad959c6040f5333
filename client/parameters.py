"""The keyword arguments of `generate` and `chat`, typed, and the request bodies built from them.

A keyword the server does not know is refused here with a TypeError (as a misspelled keyword of any
Python function would be) instead of being silently ignored by the server. Arguments left at None
are not sent, so the server's defaults apply.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from pydantic import BaseModel

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # pragma: no cover - Python 3.10
    from typing_extensions import Unpack

__all__ = ["ChatParameters", "GenerateParameters", "Message", "Unpack", "chat_body", "generate_body"]


class GenerateParameters(TypedDict, total=False):
    """LoRAX's `parameters` for POST /generate and /generate_stream."""

    adapter_id: str | None
    adapter_source: str | None
    api_token: str | None
    max_new_tokens: int | None
    temperature: float | None
    top_k: int | None
    top_p: float | None
    typical_p: float | None
    repetition_penalty: float | None
    frequency_penalty: float | None
    presence_penalty: float | None
    do_sample: bool | None
    seed: int | None
    stop: Sequence[str] | str | None
    ignore_eos_token: bool | None
    details: bool | None
    decoder_input_details: bool | None
    return_full_text: bool | None
    truncate: int | None
    best_of: int | None
    return_k_alternatives: int | None


class ChatParameters(TypedDict, total=False):
    """OpenAI chat-completion fields, plus the server's extras (adapter_source, top_k, ...)."""

    adapter_source: str | None
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    top_k: int | None
    n: int | None
    stop: Sequence[str] | str | None
    seed: int | None
    presence_penalty: float | None
    frequency_penalty: float | None
    repetition_penalty: float | None
    logprobs: bool | None
    top_logprobs: int | None
    stream_options: Mapping[str, Any] | None
    user: str | None


Message = Mapping[str, Any] | BaseModel
"""A chat message: {"role": ..., "content": ...} or a `ChatMessage`."""


def _clean(given: Mapping[str, Any], allowed: type, function: str) -> dict[str, Any]:
    unknown = sorted(set(given) - allowed.__optional_keys__ - allowed.__required_keys__)
    if unknown:
        raise TypeError(f"{function}() got unexpected keyword argument(s): {', '.join(unknown)}")
    body = {key: value for key, value in given.items() if value is not None}
    if isinstance(body.get("stop"), str):
        body["stop"] = [body["stop"]]
    elif "stop" in body:
        body["stop"] = list(body["stop"])
    return body


def generate_body(inputs: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON body of POST /generate and /generate_stream."""
    return {"inputs": inputs, "parameters": _clean(parameters, GenerateParameters, "generate")}


def chat_body(
    messages: Sequence[Message], adapter_id: str | None, parameters: Mapping[str, Any], stream: bool
) -> dict[str, Any]:
    """The JSON body of POST /v1/chat/completions; `model` is the adapter id, "" for the base model."""
    wire_messages = [
        m.model_dump(exclude_none=True) if isinstance(m, BaseModel) else dict(m) for m in messages
    ]
    body = {
        "model": adapter_id or "",
        "messages": wire_messages,
        **_clean(parameters, ChatParameters, "chat"),
    }
    body["stream"] = stream
    return body
