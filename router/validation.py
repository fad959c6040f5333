"""Checks LoRAX's request parameters and turns them into engine SamplingParams (422 on anything wrong)."""

from __future__ import annotations

from loraplex.server.request import SamplingParams

from .errors import validation_error
from .schemas import Parameters

# Parameters LoRAX defines that this server does not serve yet: refused rather than silently ignored.
_UNSERVED = {
    "watermark": lambda p: p.watermark,
    "response_format": lambda p: p.response_format is not None,
    "merged_adapters": lambda p: p.merged_adapters is not None,
    "decoder_input_details": lambda p: p.decoder_input_details,
    "return_k_alternatives": lambda p: p.return_k_alternatives is not None,
    "best_of": lambda p: p.best_of is not None and p.best_of > 1,
}


def _positive(name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise validation_error(f"`{name}` must be strictly positive")


def _unit_interval(name: str, value: float | None) -> None:
    if value is not None and not 0.0 < value <= 1.0:
        raise validation_error(f"`{name}` must be > 0.0 and <= 1.0")


def to_sampling_params(parameters: Parameters, max_stop_sequences: int) -> SamplingParams:
    """Validate everything that does not need the tokenized prompt."""
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
    )
