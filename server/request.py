"""A request's parameters, its state inside the engine, and what the engine reports back for it."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class FinishReason(str, enum.Enum):
    LENGTH = "length"
    EOS_TOKEN = "eos_token"
    STOP_SEQUENCE = "stop_sequence"


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding parameters (LoRAX/TGI semantics).

    Sampling happens when `do_sample` is set or any warper (temperature != 1, top_k, top_p < 1,
    typical_p < 1) is; otherwise decoding is greedy. `seed` None means the engine picks one (and reports it).
    `top_n_tokens` > 0 reports that many most likely alternatives per generated token;
    `prompt_logprobs` reports the log-probability of every prompt token given the ones before it.
    When the last allowed token also ends the text (end-of-sequence token or stop string), the finish
    reason is `length`, as in LoRAX and TGI; `stop_over_length` reports the stop instead, as vLLM does.
    """

    max_new_tokens: int = 20
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    typical_p: float = 1.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    do_sample: bool = False
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos_token: bool = False
    top_n_tokens: int = 0
    prompt_logprobs: bool = False
    stop_over_length: bool = False

    @property
    def sampling(self) -> bool:
        return (
            self.do_sample
            or self.temperature != 1.0
            or self.top_k > 0
            or self.top_p < 1.0
            or self.typical_p < 1.0
        )


@dataclass
class TokenOutput:
    """One generated token: id, its text delta, log-probability, whether it is special, and the
    most likely alternatives as (id, logprob) when asked for."""

    id: int
    text: str
    logprob: float
    special: bool
    top: list[tuple[int, float]] | None = None


@dataclass
class PromptToken:
    """A prompt token with its log-probability given the tokens before it (None for the first)."""

    id: int
    logprob: float | None
    top: list[tuple[int, float]] | None = None


@dataclass
class RequestTimes:
    """Monotonic timestamps of a request's life in the engine."""

    arrival: float
    scheduled: float | None = None
    first_token: float | None = None
    finished: float | None = None


@dataclass
class RequestOutput:
    """What the engine reports after each step for a request: a new token and/or the end of it."""

    request_id: str
    token: TokenOutput | None
    finished: bool = False
    finish_reason: FinishReason | None = None
    generated_text: str | None = None
    prompt_tokens: int = 0
    generated_tokens: int = 0
    seed: int | None = None
    error: str | None = None
    error_type: str | None = None
    prompt: list[PromptToken] | None = None
    times: RequestTimes | None = None


OutputSink = Callable[[RequestOutput], None]


@dataclass(eq=False)
class Request:
    """A request inside the engine.

    `adapter` is an AdapterLocation (None = base model); `adapter_slot` its GPU slot while running.
    `token_ids` holds the prompt followed by every generated token; `num_computed_tokens` of them have
    their keys and values in the KV cache. A preempted request drops its cache and recomputes
    everything, prompt and generated tokens alike, as one long prefill.
    """

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    seed: int
    adapter: Any = None
    sink: OutputSink | None = None
    times: RequestTimes = field(default_factory=lambda: RequestTimes(time.monotonic()))
    token_ids: list[int] = field(init=False)
    prompt_logprobs: list[PromptToken] = field(default_factory=list)
    output_logprobs: list[float] = field(default_factory=list)
    num_computed_tokens: int = 0
    block_ids: list[int] = field(default_factory=list)
    adapter_slot: int = -1
    adapter_asked: bool = False  # its adapter was asked for once (cache hits count first asks only)
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: FinishReason | None = None
    detokenizer: Any = None
    num_preemptions: int = 0

    def __post_init__(self) -> None:
        self.token_ids = list(self.prompt_token_ids)

    @property
    def adapter_id(self) -> str | None:
        return self.adapter.adapter_id if self.adapter is not None else None

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_token_ids) :]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED
