"""The LoRAX / TGI native wire format: request parameters and response bodies."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Parameters(BaseModel):
    """LoRAX's `parameters` object. Unknown fields are ignored, as LoRAX does."""

    model_config = ConfigDict(extra="ignore")

    adapter_id: str | None = None
    adapter_source: str | None = None
    api_token: str | None = None
    best_of: int | None = None
    decoder_input_details: bool = False
    details: bool = False
    do_sample: bool = False
    frequency_penalty: float | None = None
    ignore_eos_token: bool = False
    max_new_tokens: int | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None
    return_full_text: bool | None = None
    return_k_alternatives: int | None = None
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    truncate: int | None = None
    typical_p: float | None = None
    watermark: bool = False
    response_format: Any = None
    merged_adapters: Any = None
    grammar: Any = None  # TGI's constrained generation: refused when set, like response_format
    top_n_tokens: int | None = None  # TGI's name for alternatives (`top_tokens`): refused when set


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    inputs: str
    parameters: Parameters = Field(default_factory=Parameters)
    stream: bool = False


class AlternativeToken(BaseModel):
    id: int
    text: str
    logprob: float


class Token(BaseModel):
    id: int
    text: str
    logprob: float | None
    special: bool
    alternative_tokens: list[AlternativeToken] | None = None
    skipped: bool = False  # LoRAX: skipped by speculative decoding (never here); its client requires it


class PrefillToken(BaseModel):
    id: int
    text: str
    logprob: float | None


class BestOfSequence(BaseModel):
    generated_text: str
    finish_reason: str
    generated_tokens: int
    seed: int | None
    prefill: list[PrefillToken] = Field(default_factory=list)
    tokens: list[Token] = Field(default_factory=list)


class Details(BaseModel):
    finish_reason: str
    prompt_tokens: int
    generated_tokens: int
    skipped_tokens: int = 0  # as Token.skipped
    seed: int | None
    prefill: list[PrefillToken] = Field(default_factory=list)
    tokens: list[Token] = Field(default_factory=list)
    best_of_sequences: list[BestOfSequence] | None = None


class StreamDetails(BaseModel):
    finish_reason: str
    prompt_tokens: int
    generated_tokens: int
    seed: int | None


class TokenizeRequest(BaseModel):
    inputs: str
    add_special_tokens: bool = True


class StreamResponse(BaseModel):
    token: Token
    generated_text: str | None = None
    details: StreamDetails | None = None
