"""OpenAI-compatible routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models.

`model` names the adapter ("" or the base model's id: no adapter). Parameters map onto LoRAX's and go
through the same validation; temperature 0 means greedy, as OpenAI clients expect. Stop sequences are
cut from the returned text, as OpenAI does (the native routes keep them, as LoRAX does).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from loraplex.server.adapters.sources import AdapterLocation
from loraplex.server.request import FinishReason, RequestOutput, TokenOutput

from .chat_template import chat_options, message_text, render_chat, reply_role
from .errors import ApiError, validation_error
from .generate import header_value, resolve_adapter
from .generation import Completion, Generator, Job
from .openai_schemas import ChatRequest, CompletionRequest
from .schemas import Parameters
from .stop_text import StopTrimmer, cut_at_stop, find_stop
from .validation import check_text, to_sampling_params

router = APIRouter()
MAX_N = 16
MAX_LOGPROBS = 20


def _reasons(last: RequestOutput, stops: list[str]) -> tuple[str | None, str | None]:
    """OpenAI's `finish_reason` and vLLM's `stop_reason` (the stop sequence that ended the text, None for
    an end-of-sequence token or the length limit); both None until the sequence finishes.

    They follow the final text, where the returned text is cut: the engine checks stop sequences as text
    comes out of its detokenizer, which holds back an incomplete character until the end, so a stop
    sequence that lies in that last text ends a sequence the engine saw end by length or end-of-sequence.
    """
    if last.finish_reason is None:
        return None, None
    found = find_stop(last.generated_text or "", stops)
    if found:
        return "stop", found[1]
    return "length" if last.finish_reason is FinishReason.LENGTH else "stop", None


def _adapter_header(job: Job) -> dict[str, str]:
    """The adapter that served the request (left out for the base model, as LoRAX does)."""
    return {"x-adapter-id": header_value(job.adapter_id)} if job.adapter_id else {}


def _stops(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


# vLLM's extra parameters that would change the output if honoured: refused when set, not ignored.
VLLM_UNSERVED = (
    "guided_json", "guided_regex", "guided_choice", "guided_grammar", "structured_outputs", "min_p",
    "use_beam_search", "allowed_token_ids", "bad_words", "stop_token_ids", "include_stop_str_in_output",
    "prompt_logprobs", "truncate_prompt_tokens", "logits_processors",
)  # fmt: skip


def _unsupported(request) -> None:
    extra = request.model_extra or {}
    for name in VLLM_UNSERVED:
        if extra.get(name) not in (None, False, 0, [], {}, ""):
            raise validation_error(f"`{name}` is not supported by this server yet")
    if request.logit_bias:
        raise validation_error("`logit_bias` is not supported by this server yet")
    if request.min_tokens:
        raise validation_error("`min_tokens` is not supported by this server yet")
    if request.response_format and request.response_format.get("type") != "text":
        raise validation_error("`response_format` is not supported by this server yet")
    if not 1 <= request.n <= MAX_N:
        raise validation_error(f"`n` must be >= 1 and <= {MAX_N}")
    if request.temperature is not None and not 0 <= request.temperature <= 2:
        raise validation_error("`temperature` must be >= 0 and <= 2")


def _prompts(engine, prompt: str | list[str] | list[int] | list[list[int]]) -> list[tuple[str, list[int]]]:
    """(text, token ids) of each prompt: text is tokenized; token ids (one list or several, as vLLM
    takes them) are used as given, their text decoded for `echo`."""
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        prompt = [prompt]
    if not prompt or any(not p for p in prompt):
        raise validation_error("`prompt` cannot be empty")
    vocab = min(engine.info.vocab_size, len(engine.tokenizer))  # ids the model embeds and we can decode
    out = []
    for p in prompt:
        if isinstance(p, str):
            out.append((p, engine.tokenizer(check_text(p, "prompt")).input_ids))
        elif all(0 <= i < vocab for i in p):
            out.append((engine.tokenizer.decode(p), list(p)))
        else:
            raise validation_error(f"`prompt` token ids must be >= 0 and < {vocab}")
    return out


def _name_the_base_model(engine, request) -> None:
    """No `model` means the base model, which responses then name (as vLLM does), not as ""."""
    if not request.model:
        request.model = engine.info.model_id


def _jobs(
    engine,
    request,
    adapter: AdapterLocation | None,
    prompt_ids: list[int],
    max_tokens,
    top_n: int,
    prompt_logprobs: bool,
):
    """Validate through LoRAX's rules and build `n` jobs (seeds seed, seed+1, ... when a seed is given)."""
    if max_tokens is not None and max_tokens <= 0:
        field = (
            "max_completion_tokens"
            if getattr(request, "max_completion_tokens", None) is not None
            else "max_tokens"
        )
        raise validation_error(f"`{field}` must be strictly positive")
    greedy = request.temperature == 0
    parameters = Parameters(
        max_new_tokens=max_tokens,
        temperature=None if greedy or request.temperature is None else request.temperature,
        do_sample=not greedy,
        top_p=request.top_p,
        top_k=None if request.top_k in (-1, 0) else request.top_k,  # vLLM's "every token"
        repetition_penalty=request.repetition_penalty,
        frequency_penalty=request.frequency_penalty,
        presence_penalty=request.presence_penalty,
        seed=request.seed,
        stop=_stops(request.stop),
        ignore_eos_token=request.ignore_eos_token or request.ignore_eos,
        return_k_alternatives=top_n or None,
        decoder_input_details=prompt_logprobs,
    )
    params = to_sampling_params(parameters, engine.info.max_stop_sequences)
    params = dataclasses.replace(params, stop_over_length=True)  # OpenAI's and vLLM's finish_reason
    if max_tokens is None:
        max_tokens = max(engine.limits.max_total_tokens - len(prompt_ids), 1)
    problem = engine.check_lengths(len(prompt_ids), max_tokens)
    if problem:
        raise validation_error(problem.replace("`max_new_tokens`", "`max_tokens`"))
    params = dataclasses.replace(params, max_new_tokens=max_tokens)
    jobs = []
    for i in range(request.n):
        seed = None if request.seed is None else request.seed + i
        jobs.append(Job(prompt_ids, dataclasses.replace(params, seed=seed), adapter))
    return jobs


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _usage_options(body) -> tuple[bool, bool]:
    """(`include_usage`: a last chunk with the usage, `usage: null` on the others; vLLM's
    `continuous_usage_stats`: each chunk with its choice's usage so far, with `include_usage` only)."""
    options = body.stream_options
    include = bool(options and options.include_usage)
    return include, include and options.continuous_usage_stats


def _token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id])


# ---- /v1/completions ---------------------------------------------------------------------------------
def _completion_logprobs(tokenizer, tokens: list[TokenOutput], prompt, echo: bool, offset: int) -> dict:
    """OpenAI's legacy logprobs: tokens, token_logprobs, top_logprobs, text_offset."""
    entries = []
    if echo and prompt:
        entries += [(t.id, t.logprob, t.top) for t in prompt]
    entries += [(t.id, t.logprob, t.top) for t in tokens]
    texts, offsets, position = [], [], offset
    for token_id, _, _ in entries:
        text = _token_text(tokenizer, token_id)
        texts.append(text)
        offsets.append(position)
        position += len(text)
    # As OpenAI's and vLLM's: each step's alternatives and always the chosen token (up to logprobs + 1).
    tops = [
        None if logprob is None else {**_top_dict(tokenizer, top), text: logprob}
        for (_, logprob, top), text in zip(entries, texts, strict=True)
    ]
    return {
        "tokens": texts,
        "token_logprobs": [lp for _, lp, _ in entries],
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def _top_dict(tokenizer, top: list[tuple[int, float]] | None) -> dict[str, float]:
    return {_token_text(tokenizer, i): lp for i, lp in top or []}


@router.post("/v1/completions")
async def completions(body: CompletionRequest, http_request: Request):
    engine = http_request.app.state.client.ready_engine()
    _name_the_base_model(engine, body)
    adapter = resolve_adapter(http_request, engine, body.model, body.adapter_source)
    _unsupported(body)
    if body.suffix:
        raise validation_error("`suffix` is not supported by this server yet")
    if body.best_of is not None and body.best_of != body.n:
        raise validation_error("`best_of` other than `n` is not supported by this server yet")
    if body.logprobs is not None and not 0 <= body.logprobs <= MAX_LOGPROBS:
        raise validation_error(f"`logprobs` must be >= 0 and <= {MAX_LOGPROBS}")
    prompts = _prompts(engine, body.prompt)
    want_logprobs = body.logprobs is not None
    # echo with max_tokens 0 scores the prompt (lm-evaluation-harness's loglikelihood, as vLLM serves
    # it): one token is generated, since the engine always generates one, and left out of the answer.
    scoring = body.echo and body.max_tokens == 0
    if scoring and body.stream:
        raise validation_error("`echo` with `max_tokens` 0 is served without streaming only")
    jobs: list[Job] = []
    for _, ids in prompts:
        jobs += _jobs(
            engine,
            body,
            adapter,
            ids,
            1 if scoring else body.max_tokens,
            body.logprobs or 0,
            body.echo and want_logprobs,
        )
    prompts = [text for text, _ in prompts]
    texts = [p for p in prompts for _ in range(body.n)]
    response_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    generator: Generator = http_request.app.state.generator
    stops = _stops(body.stop)
    if body.stream:
        return _stream(
            http_request,
            jobs,
            _completion_chunks(http_request, body, jobs, texts, response_id, created, stops),
        )
    finished = await generator.complete(jobs, http_request)
    choices = []
    for index, (completion, prompt_text) in enumerate(zip(finished, texts, strict=True)):
        text = "" if scoring else cut_at_stop(completion.last.generated_text or "", stops)
        finish_reason, stop_reason = ("length", None) if scoring else _reasons(completion.last, stops)
        logprobs = None
        if want_logprobs:
            offset = 0 if body.echo else len(prompt_text)
            tokens = [] if scoring else completion.tokens
            logprobs = _completion_logprobs(
                engine.tokenizer, tokens, completion.last.prompt, body.echo, offset
            )
        choices.append(
            {
                "index": index,
                "text": (prompt_text if body.echo else "") + text,
                "logprobs": logprobs,
                "finish_reason": finish_reason,
                "stop_reason": stop_reason,
            }
        )
    usage = _usage_for(finished, len(prompts), body.n)
    if scoring:
        usage = {**usage, "completion_tokens": 0, "total_tokens": usage["prompt_tokens"]}
    payload = {
        "id": response_id,
        "object": "text_completion",
        "created": created,
        "model": body.model,
        "choices": choices,
        "usage": usage,
    }
    return JSONResponse(payload, headers=_adapter_header(jobs[0]))


def _usage_for(finished: list[Completion], num_prompts: int, n: int) -> dict:
    prompt = sum(finished[i * n].last.prompt_tokens for i in range(num_prompts))
    return _usage(prompt, sum(c.last.generated_tokens for c in finished))


async def _completion_chunks(
    http_request, body, jobs, texts, response_id, created, stops
) -> AsyncIterator[dict]:
    tokenizer = http_request.app.state.client.engine.tokenizer
    trimmers = [StopTrimmer(stops) for _ in jobs]
    finals: dict[int, RequestOutput] = {}
    offsets = [len(text) for text in texts]  # text_offset runs on from the prompt, as without streaming
    include_usage, continuous = _usage_options(body)
    generated = [0] * len(jobs)

    def chunk(index: int, text: str, finish_reason, logprobs=None, stop_reason=None) -> dict:
        choice = {
            "index": index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": finish_reason,
            "stop_reason": stop_reason,
        }
        payload = {
            "id": response_id,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "choices": [choice],
        }
        if include_usage:  # null on every chunk but the last, as OpenAI and vLLM send it
            payload["usage"] = _usage(len(jobs[index].prompt_ids), generated[index]) if continuous else None
        return payload

    if body.echo:
        for index, text in enumerate(texts):
            yield chunk(index, text, None)
    async for index, output in _merged(http_request, jobs):
        text = trimmers[index].feed(output.token.text, output.finished, output.generated_text or "")
        generated[index] = output.generated_tokens
        logprobs = None
        if body.logprobs is not None:
            logprobs = _completion_logprobs(tokenizer, [output.token], None, False, offsets[index])
            offsets[index] += len(logprobs["tokens"][0])
        reason, stop_reason = _reasons(output, stops)
        if output.finished:
            finals[index] = output
        yield chunk(index, text, reason, logprobs, stop_reason)
    if include_usage:
        outputs = [finals[i] for i in sorted(finals)]
        yield _usage_chunk(
            response_id,
            "text_completion",
            created,
            body.model,
            outputs,
            len(jobs) // body.n,
            body.n,
        )


def _usage_chunk(
    response_id, obj, created, model, outputs: list[RequestOutput], num_prompts: int, n: int
) -> dict:
    prompt = sum(outputs[i * n].prompt_tokens for i in range(min(num_prompts, len(outputs) // max(n, 1))))
    usage = _usage(prompt, sum(o.generated_tokens for o in outputs))
    return {
        "id": response_id,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage,
    }


# ---- /v1/chat/completions ----------------------------------------------------------------------------
def _chat_logprobs(tokenizer, tokens: list[TokenOutput]) -> dict:
    def entry(token_id: int, logprob: float) -> dict:
        text = _token_text(tokenizer, token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return {
        "content": [
            {**entry(t.id, t.logprob), "top_logprobs": [entry(i, lp) for i, lp in (t.top or [])]}
            for t in tokens
        ]
    }


def _echoed(body: ChatRequest, role: str) -> str:
    """vLLM's chat `echo`: the reply starts with the last message's content when that message has the
    reply's role."""
    last = body.messages[-1]
    return message_text(last.content) if body.echo and last.role == role else ""


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, http_request: Request):
    engine = http_request.app.state.client.ready_engine()
    _name_the_base_model(engine, body)
    adapter = resolve_adapter(http_request, engine, body.model, body.adapter_source)
    _unsupported(body)
    if body.tools:
        raise validation_error("`tools` are not supported by this server yet")
    if body.top_logprobs is not None:
        if not body.logprobs:
            raise validation_error("`top_logprobs` requires `logprobs` to be true")
        if not 0 <= body.top_logprobs <= MAX_LOGPROBS:
            raise validation_error(f"`top_logprobs` must be >= 0 and <= {MAX_LOGPROBS}")
    settings = http_request.app.state.settings
    options = chat_options(body, settings.trust_request_chat_template)
    prompt_ids = render_chat(engine.tokenizer, body.messages, adapter, options, settings.chat_template)
    role = reply_role(body.messages, options)
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    jobs = _jobs(engine, body, adapter, prompt_ids, max_tokens, body.top_logprobs or 0, False)
    response_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    stops = _stops(body.stop)
    if body.stream:
        return _stream(
            http_request, jobs, _chat_chunks(http_request, body, jobs, response_id, created, stops, role)
        )
    echoed = _echoed(body, role)
    generator: Generator = http_request.app.state.generator
    finished = await generator.complete(jobs, http_request)
    choices = []
    for index, c in enumerate(finished):
        finish_reason, stop_reason = _reasons(c.last, stops)
        choices.append(
            {
                "index": index,
                "message": {
                    "role": role,
                    "content": echoed + cut_at_stop(c.last.generated_text or "", stops),
                },
                "logprobs": _chat_logprobs(engine.tokenizer, c.tokens) if body.logprobs else None,
                "finish_reason": finish_reason,
                "stop_reason": stop_reason,
            }
        )
    payload = {
        "id": response_id,
        "object": "chat.completion",
        "created": created,
        "model": body.model,
        "choices": choices,
        "usage": _usage_for(finished, 1, body.n),
    }
    return JSONResponse(payload, headers=_adapter_header(jobs[0]))


async def _chat_chunks(
    http_request, body, jobs, response_id, created, stops, role: str
) -> AsyncIterator[dict]:
    tokenizer = http_request.app.state.client.engine.tokenizer
    trimmers = [StopTrimmer(stops) for _ in jobs]
    finals: dict[int, RequestOutput] = {}
    include_usage, continuous = _usage_options(body)
    generated = [0] * len(jobs)

    def chunk(index: int, delta: dict, finish_reason=None, logprobs=None, **extra) -> dict:
        choice = {
            "index": index,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": finish_reason,
            **extra,
        }
        payload = {
            "id": response_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.model,
            "choices": [choice],
        }
        if include_usage:
            payload["usage"] = _usage(len(jobs[index].prompt_ids), generated[index]) if continuous else None
        return payload

    for index in range(len(jobs)):
        yield chunk(index, {"role": role, "content": ""})
    echoed = _echoed(body, role)
    if echoed:
        for index in range(len(jobs)):
            yield chunk(index, {"content": echoed})
    async for index, output in _merged(http_request, jobs):
        text = trimmers[index].feed(output.token.text, output.finished, output.generated_text or "")
        generated[index] = output.generated_tokens
        logprobs = _chat_logprobs(tokenizer, [output.token]) if body.logprobs else None
        if text or logprobs:
            yield chunk(index, {"content": text}, None, logprobs)
        if output.finished:
            finals[index] = output
            reason, stop_reason = _reasons(output, stops)
            # vLLM's stop_reason, on the chunk that carries the finish reason only
            yield chunk(index, {}, reason, stop_reason=stop_reason)
    if include_usage:
        outputs = [finals[i] for i in sorted(finals)]
        yield _usage_chunk(response_id, "chat.completion.chunk", created, body.model, outputs, 1, body.n)


# ---- streaming plumbing ------------------------------------------------------------------------------
async def _merged(http_request: Request, jobs: list[Job]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Outputs of several sequences as they come, tagged with their choice index."""
    generator: Generator = http_request.app.state.generator
    if len(jobs) == 1:
        async for output in generator.outputs(jobs[0]):
            yield 0, output
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, job: Job) -> None:
        try:
            async for output in generator.outputs(job):
                await queue.put((index, output, None))
        except ApiError as error:
            await queue.put((index, None, error))
        finally:
            await queue.put((index, None, None))

    tasks = [asyncio.ensure_future(pump(i, job)) for i, job in enumerate(jobs)]
    done = 0
    try:
        while done < len(jobs):
            index, output, error = await queue.get()
            if error is not None:
                raise error
            if output is None:
                done += 1
                continue
            yield index, output
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _stream(http_request: Request, jobs: list[Job], chunks: AsyncIterator[dict]) -> StreamingResponse:
    generator: Generator = http_request.app.state.generator

    async def events() -> AsyncIterator[str]:
        ended = False
        try:
            async for payload in chunks:
                yield f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"
            ended = True
            yield "data: [DONE]\n\n"
        except ApiError as error:
            ended = True
            generator.metrics.count(jobs[0].adapter_id, error.error_type)
            yield f"data: {json.dumps(error.body())}\n\n"
        finally:
            generator.end(http_request, jobs, cancelled=not ended)

    headers = {"cache-control": "no-cache", "x-accel-buffering": "no", **_adapter_header(jobs[0])}
    response = StreamingResponse(events(), media_type="text/event-stream", headers=headers)
    generator.begin(http_request, jobs)  # last: the stream's end gives back what this takes
    return response


# ---- /v1/models --------------------------------------------------------------------------------------
def _adapters_on_disk(roots: list[Path], limit: int = 1000) -> list[str]:
    """Adapter folders (holding adapter_config.json) under the roots, up to three levels deep."""
    found = []
    for root in roots:
        for depth in ("*", "*/*", "*/*/*"):
            for config in sorted(root.glob(f"{depth}/adapter_config.json")):
                found.append(str(config.parent.relative_to(root)))
                if len(found) >= limit:
                    return found
    return found


@router.get("/v1/models")
async def models(http_request: Request) -> JSONResponse:
    engine = http_request.app.state.client.ready_engine()
    created = int(time.time())
    names = [engine.info.model_id]
    known = [e.location.adapter_id for e in engine.adapters.entries()]
    for name in known + _adapters_on_disk(engine.adapters.sources.roots):
        if name not in names:
            names.append(name)
    data = [
        {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "loraplex",
            "root": engine.info.model_id if i == 0 else name,
            "parent": None if i == 0 else engine.info.model_id,
            "max_model_len": engine.limits.max_total_tokens,
        }
        for i, name in enumerate(names)
    ]
    return JSONResponse({"object": "list", "data": data})
