"""Each API operation as data: the request to send and how to read its answer. The clients only
send these (retrying as `retry.py` says) and hand back what `parse` returns, so the sync and async
clients share everything but the I/O."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx
import pydantic

from .errors import ResponseDecodeError, error_from_body
from .parameters import Message, chat_body, generate_body
from .types import (
    AdapterInfo,
    AdapterList,
    ChatCompletion,
    ChatCompletionChunk,
    GenerateResponse,
    Health,
    Info,
    ResponseMeta,
    StreamResponse,
)

T = TypeVar("T")
M = TypeVar("M", bound=pydantic.BaseModel)


@dataclass(frozen=True)
class Call(Generic[T]):
    """A request with one answer. `accepted` are error statuses that are an answer here, not a failure."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: dict[str, Any] | None = None
    accepted: frozenset[int] = frozenset()


@dataclass(frozen=True)
class StreamCall(Generic[T]):
    """A POST answered with server-sent events. The stream is complete after an event for which
    `is_final` is true, or after the data line `done_marker` (OpenAI's "[DONE]")."""

    path: str
    json: dict[str, Any]
    parse_event: Callable[[Any], T]
    is_final: Callable[[T], bool]
    done_marker: str | None = None
    method: str = "POST"


def raise_for_status(response: httpx.Response, accepted: frozenset[int] = frozenset()) -> None:
    """Raise the exception an error answer maps to (its body must have been read)."""
    if response.status_code < 400 or response.status_code in accepted:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    raise error_from_body(response.status_code, body, response.text, response.headers)


def validate(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as error:
        raise ResponseDecodeError(f"unexpected {model.__name__} from the server: {error}") from error


def _json(response: httpx.Response, accepted: frozenset[int] = frozenset()) -> Any:
    raise_for_status(response, accepted)
    try:
        return response.json()
    except ValueError as error:
        raise ResponseDecodeError(f"the answer is not JSON: {response.text[:200]!r}") from error


def _parser(model: type[M]) -> Callable[[httpx.Response], M]:
    return lambda response: validate(model, _json(response))


def _parse_generate(response: httpx.Response) -> GenerateResponse:
    result = validate(GenerateResponse, _json(response))
    result.meta = ResponseMeta.from_headers(response.headers)
    return result


def _parse_health(response: httpx.Response) -> Health:
    raise_for_status(response, accepted=frozenset({503}))
    try:
        data = response.json()
    except ValueError:  # e.g. a proxy's page while the server is down
        data = None
    status = data.get("status") if isinstance(data, dict) else None
    return Health(
        status=status or ("ready" if response.status_code == 200 else "unavailable"),
        ready=response.status_code == 200,
    )


def generate(inputs: str, parameters: Mapping[str, Any]) -> Call[GenerateResponse]:
    return Call("POST", "/generate", _parse_generate, generate_body(inputs, parameters))


def generate_stream(inputs: str, parameters: Mapping[str, Any]) -> StreamCall[StreamResponse]:
    return StreamCall(
        "/generate_stream",
        generate_body(inputs, parameters),
        parse_event=lambda data: validate(StreamResponse, data),
        is_final=lambda event: event.final,
    )


def chat(
    messages: Sequence[Message], adapter_id: str | None, parameters: Mapping[str, Any]
) -> Call[ChatCompletion]:
    body = chat_body(messages, adapter_id, parameters, stream=False)
    return Call("POST", "/v1/chat/completions", _parser(ChatCompletion), body)


def chat_stream(
    messages: Sequence[Message], adapter_id: str | None, parameters: Mapping[str, Any]
) -> StreamCall[ChatCompletionChunk]:
    return StreamCall(
        "/v1/chat/completions",
        chat_body(messages, adapter_id, parameters, stream=True),
        parse_event=lambda data: validate(ChatCompletionChunk, data),
        is_final=lambda _: False,
        done_marker="[DONE]",
    )


def adapters() -> Call[AdapterList]:
    return Call("GET", "/adapters", _parser(AdapterList))


def _adapter_call(path: str, adapter_id: str, adapter_source: str | None) -> Call[AdapterInfo]:
    body = {"adapter_id": adapter_id}
    if adapter_source is not None:
        body["adapter_source"] = adapter_source
    return Call("POST", path, _parser(AdapterInfo), body)


def load_adapter(adapter_id: str, adapter_source: str | None) -> Call[AdapterInfo]:
    return _adapter_call("/adapters/load", adapter_id, adapter_source)


def unload_adapter(adapter_id: str, adapter_source: str | None) -> Call[AdapterInfo]:
    return _adapter_call("/adapters/unload", adapter_id, adapter_source)


def health() -> Call[Health]:
    """503 is an answer here (not ready yet, or draining), so it is not retried."""
    return Call("GET", "/health", _parse_health, accepted=frozenset({503}))


def info() -> Call[Info]:
    return Call("GET", "/info", _parser(Info))
