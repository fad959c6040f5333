"""Checks LoRAX's request parameters and turns them into engine SamplingParams (422 on anything wrong)."""

from __future__ import annotations

import math

from loraplex.server.request import SamplingParams

from .errors import validation_error
from .schemas import Parameters

# Parameters LoRAX defines that this server does not serve yet: refused rather than silently ignored.
_UNSERVED = {
    "watermark": lambda p: p.watermark,
    "response_format": lambda p: p.response_format is not None,
    "merged_adapters": lambda p: p.merged_adapters is not None,
    "grammar": lambda p: p.grammar is not None,
    "top_n_tokens": lambda p: bool(p.top_n_tokens),
}
MAX_BEST_OF = 4
MAX_ALTERNATIVES = 20


def _positive(name: str, value: float | None) -> None:
    if value is not None and not 0 < value < math.inf:  # NaN fails every comparison
        raise validation_error(f"`{name}` must be strictly positive")


def _unit_interval(name: str, value: float | None) -> None:
    if value is not None and not 0.0 < value <= 1.0:
        raise validation_error(f"`{name}` must be > 0.0 and <= 1.0")


def check_text(text: str, field: str) -> str:
    """`text` if it can be encoded as UTF-8: JSON's escapes can carry a lone surrogate (\\ud800),
    which the tokenizer cannot take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise validation_error(f"`{field}` is not valid Unicode: {error.reason} at {error.start}") from None
    return text


def to_sampling_params(
    parameters: Parameters, max_stop_sequences: int, streaming: bool = False
) -> SamplingParams:
    """Validate everything that does not need the tokenized prompt (LoRAX's rules and messages)."""
    p = parameters
    for name, used in _UNSERVED.items():
        if used(p):
            raise validation_error(f"`{name}` is not supported by this server yet")
    _positive("temperature", p.temperature)
    _positive("repetition_penalty", p.repetition_penalty)
    _positive("top_k", p.top_k)
    _positive("max_new_tokens", p.max_new_tokens)
    _positive("truncate", p.truncate)
    _unit_interval("top_p", p.top_p)
    _unit_interval("typical_p", p.typical_p)
    for name in ("frequency_penalty", "presence_penalty"):
        value = getattr(p, name)
        if value is not None and not -2.0 <= value <= 2.0:
            raise validation_error(f"`{name}` must be >= -2.0 and <= 2.0")
    if p.seed is not None and not 0 <= p.seed < 2**64:
        raise validation_error("`seed` must be an integer in [0, 2^64)")
    if len(p.stop) > max_stop_sequences:
        raise validation_error(
            f"`stop` supports up to {max_stop_sequences} stop sequences. Given: {len(p.stop)}"
        )
    if any(s == "" for s in p.stop):
        raise validation_error("`stop` sequences cannot be empty strings")
    params = _build(p)
    _check_best_of(p, params, streaming)
    if p.return_k_alternatives is not None and not 1 <= p.return_k_alternatives <= MAX_ALTERNATIVES:
        raise validation_error(f"`return_k_alternatives` must be > 0 and <= {MAX_ALTERNATIVES}")
    if p.decoder_input_details and streaming:
        raise validation_error("`decoder_input_details` == true is not supported when streaming tokens")
    return params


def _check_best_of(p: Parameters, params: SamplingParams, streaming: bool) -> None:
    if p.best_of is None:
        return
    if not 0 < p.best_of <= MAX_BEST_OF:
        raise validation_error(f"`best_of` must be > 0 and <= {MAX_BEST_OF}. Given: {p.best_of}")
    if p.best_of > 1:
        if not params.sampling:
            raise validation_error("you must use sampling when `best_of` is > 1")
        if p.seed is not None:
            raise validation_error("`seed` must not be set when `best_of` > 1")
        if streaming:
            raise validation_error("`best_of` != 1 is not supported when streaming tokens")


def _build(p: Parameters) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=p.max_new_tokens or 1,
        temperature=p.temperature if p.temperature is not None else 1.0,
        top_k=p.top_k or 0,
        top_p=p.top_p if p.top_p is not None else 1.0,
        typical_p=p.typical_p if p.typical_p is not None else 1.0,
        repetition_penalty=p.repetition_penalty if p.repetition_penalty is not None else 1.0,
        frequency_penalty=p.frequency_penalty or 0.0,
        presence_penalty=p.presence_penalty or 0.0,
        do_sample=p.do_sample,
        seed=p.seed,
        stop=tuple(p.stop),
        ignore_eos_token=p.ignore_eos_token,
        top_n_tokens=p.return_k_alternatives or 0,
        prompt_logprobs=p.decoder_input_details,
    )
