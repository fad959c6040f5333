"""Typed answers of the server. Every model keeps fields it does not know (`extra="allow"`), so a
newer server never breaks an older client."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


# ---- native generation: POST /generate, POST /generate_stream ------------------------------------


class AlternativeToken(_Model):
    id: int
    text: str
    logprob: float | None = None


class PrefillToken(_Model):
    """A prompt token, with its logprob when `decoder_input_details` was asked for."""

    id: int
    text: str
    logprob: float | None = None


class Token(_Model):
    """A generated token. `alternative_tokens` come with `return_k_alternatives`."""

    id: int
    text: str
    logprob: float | None = None
    special: bool = False
    alternative_tokens: list[AlternativeToken] | None = None


class _Sequence(_Model):
    """One generated sequence's details. `finish_reason` is "length", "eos_token" or "stop_sequence";
    `prefill` has the prompt's tokens when `decoder_input_details` was asked for."""

    finish_reason: str
    generated_tokens: int
    seed: int | None = None
    prefill: list[PrefillToken] = Field(default_factory=list)
    tokens: list[Token] = Field(default_factory=list)


class BestOfSequence(_Sequence):
    """One of the other `best_of` candidates."""

    generated_text: str


class Details(_Sequence):
    """The `details` of a /generate answer."""

    prompt_tokens: int
    best_of_sequences: list[BestOfSequence] | None = None


class ResponseMeta(_Model):
    """What the `x-*` headers of a /generate answer say. Times as the server sends them: milliseconds
    from loraplex and LoRAX (TGI sends `compute_time` in seconds). `adapter_id` is None for the base model."""

    adapter_id: str | None = None
    prompt_tokens: int | None = None
    generated_tokens: int | None = None
    compute_time: float | None = None
    total_time: float | None = None
    validation_time: float | None = None
    queue_time: float | None = None
    inference_time: float | None = None
    time_per_token: float | None = None
    headers: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def from_headers(cls, headers: httpx.Headers) -> ResponseMeta:
        raw = {k.lower(): v for k, v in headers.items() if k.lower().startswith("x-")}
        fields = {}
        for name in cls.model_fields:
            if name == "headers":
                continue
            value = raw.get("x-" + name.replace("_", "-"))
            if value is not None and (value != "" or name == "adapter_id"):
                fields[name] = value
        try:
            return cls(**fields, headers=raw)
        except ValueError:  # a header we cannot read as a number: keep the raw headers only
            return cls(headers=raw)


class GenerateResponse(_Model):
    """The answer of `generate`: the text, `details` when asked for, and the `x-*` headers in `meta`."""

    generated_text: str
    details: Details | None = None
    meta: ResponseMeta = Field(default_factory=ResponseMeta)


class StreamDetails(_Model):
    finish_reason: str
    prompt_tokens: int
    generated_tokens: int
    seed: int | None = None


class StreamResponse(_Model):
    """One event of `generate_stream`. The last one has `generated_text` (and `details` if asked)."""

    token: Token
    generated_text: str | None = None
    details: StreamDetails | None = None

    @property
    def final(self) -> bool:
        return self.generated_text is not None


# ---- OpenAI chat: POST /v1/chat/completions ------------------------------------------------------


class ChatMessage(_Model):
    role: str
    content: str | None = None


class Usage(_Model):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class _Choice(_Model):
    index: int = 0
    finish_reason: str | None = None
    logprobs: Any = None


class ChatChoice(_Choice):
    message: ChatMessage

    @property
    def text(self) -> str:
        return self.message.content or ""


class ChatDelta(_Model):
    role: str | None = None
    content: str | None = None


class ChatChunkChoice(_Choice):
    delta: ChatDelta = Field(default_factory=ChatDelta)

    @property
    def text(self) -> str:
        return self.delta.content or ""


class _ChatAnswer(_Model):
    """What a chat completion and its stream chunks have in common; `choices` is the subclass's."""

    id: str = ""
    object: str = ""
    created: int = 0
    model: str = ""
    usage: Usage | None = None

    @property
    def text(self) -> str:
        """The first choice's text ("" when there is none, e.g. a usage-only chunk)."""
        return self.choices[0].text if self.choices else ""

    @property
    def finish_reason(self) -> str | None:
        """The first choice's finish reason: "stop" or "length" (None in a chunk before the last)."""
        return self.choices[0].finish_reason if self.choices else None


class ChatCompletion(_ChatAnswer):
    """The answer of `chat`."""

    choices: list[ChatChoice] = Field(default_factory=list)


class ChatCompletionChunk(_ChatAnswer):
    """One event of `chat_stream`."""

    choices: list[ChatChunkChoice] = Field(default_factory=list)


# ---- adapters and status ---------------------------------------------------------------------------


class AdapterInfo(_Model):
    """One adapter the server knows. `tier` is "gpu", "cpu" or "disk"; `status` "loading", "loaded"
    or "failed"; `running` is how many requests use it now."""

    adapter_id: str
    adapter_source: str | None = None
    tier: str | None = None
    rank: int | None = None
    bytes: int | None = None
    last_used: datetime | None = None
    requests: int = 0
    running: int = 0
    load_seconds: float | None = None
    status: str | None = None


class AdapterList(_Model):
    adapters: list[AdapterInfo] = Field(default_factory=list)
    gpu_slots: int | None = None
    cpu_capacity: int | None = None


class Health(_Model):
    """`status` is "ready", "initializing", "draining" or "errored"; `ready` is whether it answered 200."""

    status: str
    ready: bool


class Info(_Model):
    """GET /info. The fields below are the usual ones; every other field is kept as an attribute."""

    status: str | None = None
    version: str | None = None
    model_id: str | None = None
    model_dtype: str | None = None
    model_device_type: str | None = None
    max_input_length: int | None = None
    max_total_tokens: int | None = None
    max_concurrent_requests: int | None = None
    max_active_adapters: int | None = None
