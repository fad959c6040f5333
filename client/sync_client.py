"""`Client`: the blocking client."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import TypeVar

import httpx

from . import endpoints, types
from .base import BaseClient
from .endpoints import Call, StreamCall, raise_for_status
from .parameters import ChatParameters, GenerateParameters, Message, Unpack
from .retry import RetryState
from .sse import EventReader

T = TypeVar("T")


class Client(BaseClient[httpx.Client]):
    """A blocking client of a loraplex (or LoRAX) server; options are `BaseClient`'s.

    >>> with Client("http://127.0.0.1:8080") as client:
    ...     print(client.generate("Hello", adapter_id="my/adapter", max_new_tokens=20).generated_text)

    Every method retries as `loraplex.client.retry` describes, and raises a `LoraplexError`.
    """

    _http_class = httpx.Client

    def generate(self, inputs: str, **parameters: Unpack[GenerateParameters]) -> types.GenerateResponse:
        """POST /generate: the text generated for `inputs`; `details=True` adds tokens and finish reason."""
        return self._call(endpoints.generate(inputs, parameters))

    def generate_stream(
        self, inputs: str, **parameters: Unpack[GenerateParameters]
    ) -> Iterator[types.StreamResponse]:
        """POST /generate_stream: one event per token; the last carries `generated_text`. The request
        is sent when iteration starts; it is retried only until the first event has arrived."""
        return self._stream(endpoints.generate_stream(inputs, parameters))

    def chat(
        self, messages: Sequence[Message], adapter_id: str | None = None, **parameters: Unpack[ChatParameters]
    ) -> types.ChatCompletion:
        """POST /v1/chat/completions with `model` = `adapter_id` ("" or None: the base model)."""
        return self._call(endpoints.chat(messages, adapter_id, parameters))

    def chat_stream(
        self, messages: Sequence[Message], adapter_id: str | None = None, **parameters: Unpack[ChatParameters]
    ) -> Iterator[types.ChatCompletionChunk]:
        """`chat` with `stream: true`: the chunks, until the server's `[DONE]`."""
        return self._stream(endpoints.chat_stream(messages, adapter_id, parameters))

    def adapters(self) -> types.AdapterList:
        """GET /adapters: every adapter the server knows, with its tier and use."""
        return self._call(endpoints.adapters())

    def load_adapter(self, adapter_id: str, adapter_source: str | None = None) -> types.AdapterInfo:
        """POST /adapters/load: load now (waiting for it) rather than on first use."""
        return self._call(endpoints.load_adapter(adapter_id, adapter_source))

    def unload_adapter(self, adapter_id: str, adapter_source: str | None = None) -> types.AdapterInfo:
        """POST /adapters/unload: free its memory (ConflictError while requests use it)."""
        return self._call(endpoints.unload_adapter(adapter_id, adapter_source))

    def health(self) -> types.Health:
        """GET /health: `ready` is False while the server initializes or drains (never raises for that)."""
        return self._call(endpoints.health())

    def info(self) -> types.Info:
        """GET /info: model, limits, status and version."""
        return self._call(endpoints.info())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, call: Call[T]) -> T:
        return call.parse(self._send(self._request(call), self._retry_state(call.accepted)))

    def _send(self, request: httpx.Request, retry: RetryState, stream: bool = False) -> httpx.Response:
        """Send until an answer that is not to be retried (returned as is, error or not)."""
        while True:
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as error:
                retry.check_error(error)
            else:
                if not retry.after_response(response):
                    return response
                response.close()
            time.sleep(retry.delay)

    def _stream(self, call: StreamCall[T]) -> Iterator[T]:
        request, retry = self._request(call), self._retry_state()
        while True:
            response = self._send(request, retry, stream=True)
            reader = EventReader(call)
            try:
                if response.is_error:
                    response.read()
                    raise_for_status(response)
                for line in response.iter_lines():
                    yield from reader.feed(line)
                yield from reader.end()
                return
            except httpx.TransportError as error:
                if reader.received or not retry.after_error(error):
                    raise reader.failure(error, retry.retries + 1) from error
            finally:
                response.close()
            time.sleep(retry.delay)
