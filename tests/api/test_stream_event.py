"""The per-token SSE payload, built as a plain dict, is what the LoRAX schema models would give."""

import itertools

import pytest

from loraplex.router.generate import _prune, _seed, _text, _token, stream_event
from loraplex.router.generation import Job
from loraplex.router.schemas import GenerateRequest, StreamDetails, StreamResponse
from loraplex.server.request import FinishReason, RequestOutput, SamplingParams, TokenOutput


class Tokenizer:
    def decode(self, ids):
        return "".join(f"<{i}>" for i in ids)


def schema_event(tokenizer, body, job, output) -> dict:
    """The payload through the pydantic models, as the stream used to build it."""
    event = StreamResponse(token=_token(tokenizer, output.token))
    if output.finished:
        event.generated_text = _text(body, output)
        if body.parameters.details:
            event.details = StreamDetails(
                finish_reason=output.finish_reason.value,
                prompt_tokens=output.prompt_tokens,
                generated_tokens=output.generated_tokens,
                seed=_seed(job, output),
            )
    return _prune(event.model_dump())


@pytest.mark.parametrize(
    ("finished", "details", "top", "sampling", "full_text"),
    list(
        itertools.product(
            [False, True], [False, True], [None, [(5, -0.1), (9, -2.5)]], [False, True], [False, True]
        )
    ),
)
def test_stream_event_matches_the_schema_models(finished, details, top, sampling, full_text):
    body = GenerateRequest(
        inputs="hi", parameters={"details": details, "return_full_text": full_text, "do_sample": sampling}
    )
    job = Job([1, 2], SamplingParams(temperature=1.0 if sampling else 0.0, max_new_tokens=3))
    output = RequestOutput(
        request_id="r",
        token=TokenOutput(id=7, text=" x", logprob=-0.25, special=False, top=top),
        finished=finished,
        finish_reason=FinishReason.LENGTH if finished else None,
        generated_text=" a x" if finished else None,
        prompt_tokens=2,
        generated_tokens=3,
        seed=42,
    )
    tokenizer = Tokenizer()
    event = stream_event(tokenizer, body, job, output)
    assert event == schema_event(tokenizer, body, job, output)
    assert list(event) == ["token", "generated_text", "details"]
