"""Request bodies of the OpenAI-compatible routes (responses are built as plain dicts)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class StreamOptions(BaseModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's: usage on every chunk (with include_usage)


class _Common(BaseModel):
    """Fields both routes share, plus the extras loraplex accepts (adapter_source, top_k, repetition_penalty,
    ignore_eos_token, and vLLM's name for it, ignore_eos)."""

    model_config = ConfigDict(extra="allow")  # unknown fields kept, so vLLM's unserved ones can be refused

    model: str = ""
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    adapter_source: str | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    ignore_eos_token: bool = False
    ignore_eos: bool = False
    min_tokens: int = 0  # vLLM's; refused when set, not ignored
    response_format: dict[str, Any] | None = None


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ContentPart] | None = None


class ChatRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    echo: bool = False  # vLLM's: the reply starts with the last message when it is the assistant's
    # vLLM's chat-template extras (a request's own `chat_template` is refused, as vLLM does by default)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
