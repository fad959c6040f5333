"""LoRAX's native routes: POST /generate, POST /generate_stream (SSE), POST / (either, by `stream`)
and POST /tokenize."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from loraplex.server.adapters.errors import AdapterError
from loraplex.server.adapters.sources import AdapterLocation
from loraplex.server.request import PromptToken, RequestOutput, TokenOutput

from .errors import ApiError, validation_error
from .generation import Completion, Generator, Job
from .metrics import UNRESOLVED_LABEL
from .schemas import (
    AlternativeToken,
    BestOfSequence,
    Details,
    GenerateRequest,
    PrefillToken,
    Token,
    TokenizeRequest,
)
from .validation import check_text, to_sampling_params

router = APIRouter()


def resolve_adapter(
    http_request: Request, engine, adapter_id: str | None, adapter_source: str | None
) -> AdapterLocation | None:
    """None for the base model (no id, an empty id, or the base model's own id); 422/424 if unusable.

    Names the request's adapter for the metrics once it resolves: "unresolved" until then (and for good
    if it does not), so that ids that name nothing never become metric labels.
    """
    http_request.state.adapter_id = UNRESOLVED_LABEL
    if not adapter_id or adapter_id == engine.info.model_id:
        http_request.state.adapter_id = None
        return None
    try:
        location = engine.adapters.locate(adapter_id, adapter_source)
    except AdapterError as error:
        raise ApiError(error.status, str(error), error.error_type) from error
    http_request.state.adapter_id = location.adapter_id
    return location


def prepare(http_request: Request, body: GenerateRequest, streaming: bool) -> list[Job]:
    """Validate and tokenize; every problem is raised (422/424) before anything is streamed.

    Returns one job, or `best_of` jobs that differ only in their seeds.
    """
    engine = http_request.app.state.client.ready_engine()
    p = body.parameters
    adapter = resolve_adapter(http_request, engine, p.adapter_id, p.adapter_source)
    if not body.inputs:
        raise validation_error("`inputs` cannot be empty")
    params = to_sampling_params(p, engine.info.max_stop_sequences, streaming)
    if p.truncate is not None and p.truncate > engine.limits.max_input_length:
        raise validation_error(
            f"`truncate` must be strictly positive and less than {engine.limits.max_input_length}. "
            f"Given: {p.truncate}"
        )
    prompt_ids = engine.tokenizer(check_text(body.inputs, "inputs")).input_ids
    if p.truncate is not None:
        prompt_ids = prompt_ids[-p.truncate :]
    max_new_tokens = p.max_new_tokens
    if max_new_tokens is None:
        max_new_tokens = max(engine.limits.max_total_tokens - len(prompt_ids), 1)
    problem = engine.check_lengths(len(prompt_ids), max_new_tokens)
    if problem:
        raise validation_error(problem)
    params = dataclasses.replace(params, max_new_tokens=max_new_tokens)
    return [Job(prompt_ids, params, adapter) for _ in range(p.best_of or 1)]


def _alternatives(tokenizer, top) -> list[AlternativeToken] | None:
    if top is None:
        return None
    return [AlternativeToken(id=i, text=tokenizer.decode([i]), logprob=lp) for i, lp in top]


def _token(tokenizer, token: TokenOutput) -> Token:
    return Token(
        id=token.id,
        text=token.text,
        logprob=token.logprob,
        special=token.special,
        alternative_tokens=_alternatives(tokenizer, token.top),
    )


def _prefill(tokenizer, prompt: list[PromptToken] | None) -> list[PrefillToken]:
    return [PrefillToken(id=t.id, text=tokenizer.decode([t.id]), logprob=t.logprob) for t in prompt or []]


def _seed(job: Job, output: RequestOutput) -> int | None:
    return output.seed if job.params.sampling else None


def _text(body: GenerateRequest, output: RequestOutput) -> str:
    text = output.generated_text or ""
    return body.inputs + text if body.parameters.return_full_text else text


def header_value(text: str) -> str:
    """`text` as an HTTP header value: as it is when printable ASCII, else percent-encoded UTF-8, so an
    adapter or model name in any script (or with control characters) cannot break the response."""
    if text.isascii() and text.isprintable():
        return text
    return quote(text, safe=" !#$&'()*+,/:;=?@[]~")


def served_headers(http_request: Request, body: GenerateRequest, job: Job) -> dict[str, str]:
    """The headers LoRAX sends on every generation, streams included: what served the request."""
    engine = http_request.app.state.client.engine
    headers = {
        "x-compute-type": engine.device.type if job.adapter is None else f"{engine.device.type}+lora",
        "x-compute-characters": str(len(body.inputs)),
        "x-model-id": header_value(engine.info.model_id),
    }
    if job.adapter is not None:  # LoRAX leaves both out for the base model
        headers["x-adapter-id"] = header_value(job.adapter.adapter_id)
        headers["x-adapter-source"] = job.adapter.source
    return headers


def _headers(
    http_request: Request,
    body: GenerateRequest,
    job: Job,
    completion: Completion,
    started: float,
    validated: float,
) -> dict[str, str]:
    """LoRAX's headers of a finished generation: times in whole milliseconds, token counts."""
    last = completion.last
    now = time.monotonic()
    times = last.times
    queue_ms = inference_ms = first_token_ms = 0
    if times is not None and times.scheduled is not None:
        queue_ms = int((times.scheduled - times.arrival) * 1000)
        inference_ms = int(((times.finished or times.scheduled) - times.scheduled) * 1000)
        if times.first_token is not None:
            first_token_ms = int((times.first_token - times.arrival) * 1000)
    total_ms = int((now - started) * 1000)
    per_token_ms = str(inference_ms // max(last.generated_tokens, 1))
    return {
        **served_headers(http_request, body, job),
        "x-compute-time": str(total_ms),
        "x-total-time": str(total_ms),
        "x-validation-time": str(int((validated - started) * 1000)),
        "x-queue-time": str(queue_ms),
        "x-inference-time": str(inference_ms),
        "x-time-per-token": per_token_ms,
        "x-time-to-first-token": str(first_token_ms),
        "x-time-per-output-token": per_token_ms,
        "x-prompt-tokens": str(last.prompt_tokens),
        "x-generated-tokens": str(last.generated_tokens),
        "x-skipped-tokens": "0",
        "x-total-tokens": str(last.prompt_tokens + last.generated_tokens),
    }


async def generate_response(http_request: Request, body: GenerateRequest) -> tuple[dict, dict[str, str]]:
    """Run a native request to the end -> (response body, headers)."""
    started = time.monotonic()
    jobs = prepare(http_request, body, streaming=False)
    validated = time.monotonic()
    generator: Generator = http_request.app.state.generator
    completions = await generator.complete(jobs, http_request)
    tokenizer = http_request.app.state.client.engine.tokenizer
    best = max(range(len(completions)), key=lambda i: completions[i].cumulative_logprob)
    chosen, last = completions[best], completions[best].last
    payload: dict = {"generated_text": _text(body, last)}
    if body.parameters.details or body.parameters.decoder_input_details:  # as LoRAX
        others = [
            BestOfSequence(
                generated_text=_text(body, c.last),
                finish_reason=c.last.finish_reason.value,
                generated_tokens=c.last.generated_tokens,
                seed=_seed(jobs[i], c.last),
                prefill=_prefill(tokenizer, c.last.prompt),
                tokens=[_token(tokenizer, t) for t in c.tokens],
            )
            for i, c in enumerate(completions)
            if i != best
        ]
        details = Details(
            finish_reason=last.finish_reason.value,
            prompt_tokens=last.prompt_tokens,
            generated_tokens=last.generated_tokens,
            seed=_seed(jobs[best], last),
            prefill=_prefill(tokenizer, last.prompt),
            tokens=[_token(tokenizer, t) for t in chosen.tokens],
            best_of_sequences=others or None,
        )
        payload["details"] = _prune(details.model_dump())
    return payload, _headers(http_request, body, jobs[best], chosen, started, validated)


def stream_event(tokenizer, body: GenerateRequest, job: Job, output: RequestOutput) -> dict:
    """The SSE payload of one streamed token: what `_prune(StreamResponse(...).model_dump())` gives,
    built as a plain dict, since it runs on the event loop once per token of every stream."""
    token = output.token
    payload = {"id": token.id, "text": token.text, "logprob": token.logprob, "special": token.special}
    if token.top is not None:
        payload["alternative_tokens"] = [
            {"id": i, "text": tokenizer.decode([i]), "logprob": logprob} for i, logprob in token.top
        ]
    payload["skipped"] = False
    event = {"token": payload, "generated_text": None, "details": None}
    if output.finished:
        event["generated_text"] = _text(body, output)
        if body.parameters.details:
            event["details"] = {
                "finish_reason": output.finish_reason.value,
                "prompt_tokens": output.prompt_tokens,
                "generated_tokens": output.generated_tokens,
                "seed": _seed(job, output),
            }
    return event


def sse(payload: dict) -> str:
    return f"data:{json.dumps(payload, separators=(',', ':'))}\n\n"


async def stream_events(http_request: Request, body: GenerateRequest, job: Job) -> AsyncIterator[str]:
    generator: Generator = http_request.app.state.generator
    tokenizer = http_request.app.state.client.engine.tokenizer
    ended = False
    try:
        async for output in generator.outputs(job):
            yield sse(stream_event(tokenizer, body, job, output))
        ended = True
    except ApiError as error:
        ended = True
        generator.metrics.count(job.adapter_id, error.error_type)
        yield sse(error.body())
    finally:
        generator.end(http_request, [job], cancelled=not ended)


_OPTIONAL = frozenset({"alternative_tokens", "best_of_sequences"})


def _prune(value):
    """Drop the optional fields LoRAX leaves out when unused (other nulls, like a seed, stay)."""
    if isinstance(value, dict):
        return {k: _prune(v) for k, v in value.items() if not (k in _OPTIONAL and v is None)}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


def stream_response(http_request: Request, body: GenerateRequest) -> StreamingResponse:
    job = prepare(http_request, body, streaming=True)[0]
    generator: Generator = http_request.app.state.generator
    response = StreamingResponse(
        stream_events(http_request, body, job),
        media_type="text/event-stream",
        headers={
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
            **served_headers(http_request, body, job),
        },
    )
    generator.begin(http_request, [job])  # last: the stream's end gives back what this takes
    return response


@router.post("/generate")
async def generate(body: GenerateRequest, request: Request) -> JSONResponse:
    payload, headers = await generate_response(request, body)
    return JSONResponse(payload, headers=headers)


@router.post("/generate_stream")
async def generate_stream(body: GenerateRequest, request: Request) -> StreamingResponse:
    return stream_response(request, body)


@router.post("/")
async def compat_generate(body: GenerateRequest, request: Request):
    """TGI's compatibility route: a stream if `stream` is true, else a one-element list."""
    if body.stream:
        return stream_response(request, body)
    payload, headers = await generate_response(request, body)
    return JSONResponse([payload], headers=headers)


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request) -> JSONResponse:
    """The prompt's tokens with their ids, texts and character offsets (TGI's format)."""
    engine = request.app.state.client.ready_engine()
    encoding = engine.tokenizer(
        check_text(body.inputs, "inputs"),
        add_special_tokens=body.add_special_tokens,
        return_offsets_mapping=True,
    )
    tokens = [
        {"id": token_id, "text": body.inputs[start:stop], "start": start, "stop": stop}
        for token_id, (start, stop) in zip(encoding.input_ids, encoding.offset_mapping, strict=True)
    ]
    return JSONResponse(tokens)
