"""LoRAX's native routes: POST /generate, POST /generate_stream (SSE) and POST / (either, by `stream`)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from loraplex.server.adapters.errors import AdapterError
from loraplex.server.adapters.sources import AdapterLocation
from loraplex.server.request import RequestOutput, SamplingParams

from .engine_client import EngineClient
from .errors import ApiError, error_status, validation_error
from .schemas import Details, GenerateRequest, GenerateResponse, StreamDetails, StreamResponse, Token
from .validation import to_sampling_params

router = APIRouter()


@dataclass
class Prepared:
    prompt_ids: list[int]
    params: SamplingParams
    body: GenerateRequest
    adapter: AdapterLocation | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"x-adapter-id": self.adapter.adapter_id if self.adapter else ""}


def prepare(client: EngineClient, body: GenerateRequest) -> Prepared:
    """Validate and tokenize; every problem is a 422 raised before anything is streamed."""
    engine = client.ready_engine()
    if not body.inputs:
        raise validation_error("`inputs` cannot be empty")
    params = to_sampling_params(body.parameters, engine.info.max_stop_sequences)
    prompt_ids = engine.tokenizer(body.inputs).input_ids
    if body.parameters.truncate is not None:
        prompt_ids = prompt_ids[-body.parameters.truncate :]
    limits = engine.limits
    max_new_tokens = body.parameters.max_new_tokens
    if max_new_tokens is None:
        max_new_tokens = max(limits.max_total_tokens - len(prompt_ids), 1)
    problem = engine.check_lengths(len(prompt_ids), max_new_tokens)
    if problem:
        raise validation_error(problem)
    params = SamplingParams(**{**params.__dict__, "max_new_tokens": max_new_tokens})
    adapter = locate_adapter(engine, body.parameters.adapter_id, body.parameters.adapter_source)
    return Prepared(prompt_ids, params, body, adapter)


def locate_adapter(engine, adapter_id: str | None, adapter_source: str | None) -> AdapterLocation | None:
    """None for the base model (no id, an empty id, or the base model's own id); 422/424 if unusable."""
    if not adapter_id or adapter_id == engine.info.model_id:
        return None
    try:
        return engine.adapters.locate(adapter_id, adapter_source)
    except AdapterError as error:
        raise ApiError(error.status, str(error), error.error_type) from error


def _token(output: RequestOutput) -> Token:
    token = output.token
    return Token(id=token.id, text=token.text, logprob=token.logprob, special=token.special)


def _reported_seed(prepared: Prepared, output: RequestOutput) -> int | None:
    return output.seed if prepared.params.sampling else None


def _final_text(prepared: Prepared, output: RequestOutput) -> str:
    text = output.generated_text or ""
    if prepared.body.parameters.return_full_text:
        text = prepared.body.inputs + text
    return text


async def _collect(client: EngineClient, prepared: Prepared) -> tuple[list[Token], RequestOutput]:
    tokens: list[Token] = []
    last = None
    async for output in client.stream(prepared.prompt_ids, prepared.params, prepared.adapter):
        if output.error:
            raise ApiError(error_status(output.error_type), output.error, output.error_type)
        tokens.append(_token(output))
        last = output
    return tokens, last


async def _until_disconnected(http_request: Request) -> None:
    while not await http_request.is_disconnected():
        await asyncio.sleep(0.25)


async def generate_once(client: EngineClient, prepared: Prepared, http_request: Request) -> JSONResponse:
    """Run to completion; a client that hangs up meanwhile has its request aborted in the engine."""
    client.admit()
    started = time.monotonic()
    work = asyncio.ensure_future(_collect(client, prepared))
    watcher = asyncio.ensure_future(_until_disconnected(http_request))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not work.done():
            work.cancel()
        client.release()
    if work.cancelled():
        return JSONResponse({"error": "client disconnected", "error_type": "cancelled"}, status_code=499)
    tokens, last = work.result()
    details = None
    if prepared.body.parameters.details:
        details = Details(
            finish_reason=last.finish_reason.value,
            prompt_tokens=last.prompt_tokens,
            generated_tokens=last.generated_tokens,
            seed=_reported_seed(prepared, last),
            tokens=tokens,
        )
    response = GenerateResponse(generated_text=_final_text(prepared, last), details=details)
    headers = {**_timing_headers(started, last), **prepared.headers}
    payload = response.model_dump()
    if details is None:
        del payload["details"]
    return JSONResponse(payload, headers=headers)


def _timing_headers(started: float, last: RequestOutput) -> dict[str, str]:
    elapsed_ms = int((time.monotonic() - started) * 1000)
    generated = max(last.generated_tokens, 1)
    return {
        "x-compute-time": f"{elapsed_ms / 1000:.3f}",
        "x-total-time": str(elapsed_ms),
        "x-time-per-token": str(elapsed_ms // generated),
        "x-prompt-tokens": str(last.prompt_tokens),
        "x-generated-tokens": str(last.generated_tokens),
    }


def sse(payload: dict) -> str:
    return f"data:{json.dumps(payload, separators=(',', ':'))}\n\n"


async def stream_events(client: EngineClient, prepared: Prepared) -> AsyncIterator[str]:
    """SSE events; the place taken by `admit` is released when the stream ends, however it ends."""
    try:
        async for output in client.stream(prepared.prompt_ids, prepared.params, prepared.adapter):
            if output.error:
                yield sse({"error": output.error, "error_type": output.error_type})
                return
            event = StreamResponse(token=_token(output))
            if output.finished:
                event.generated_text = _final_text(prepared, output)
                if prepared.body.parameters.details:
                    event.details = StreamDetails(
                        finish_reason=output.finish_reason.value,
                        prompt_tokens=output.prompt_tokens,
                        generated_tokens=output.generated_tokens,
                        seed=_reported_seed(prepared, output),
                    )
            yield sse(event.model_dump())
    finally:
        client.release()


def stream_response(client: EngineClient, prepared: Prepared) -> StreamingResponse:
    client.admit()
    return StreamingResponse(
        stream_events(client, prepared),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no", **prepared.headers},
    )


@router.post("/generate")
async def generate(body: GenerateRequest, request: Request) -> JSONResponse:
    client: EngineClient = request.app.state.client
    return await generate_once(client, prepare(client, body), request)


@router.post("/generate_stream")
async def generate_stream(body: GenerateRequest, request: Request) -> StreamingResponse:
    client: EngineClient = request.app.state.client
    return stream_response(client, prepare(client, body))


@router.post("/")
async def compat_generate(body: GenerateRequest, request: Request):
    """TGI's compatibility route: a stream if `stream` is true, else a one-element list."""
    client: EngineClient = request.app.state.client
    prepared = prepare(client, body)
    if body.stream:
        return stream_response(client, prepared)
    single = await generate_once(client, prepared, request)
    if single.status_code != 200:
        return single
    headers = {k: v for k, v in single.headers.items() if k.startswith("x-")}
    return JSONResponse([json.loads(single.body)], headers=headers)
