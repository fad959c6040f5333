"""`AsyncClient`: the asyncio client; the same methods as `Client`, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import TypeVar

import httpx

from . import endpoints, types
from .base import BaseClient
from .endpoints import Call, StreamCall, raise_for_status
from .parameters import ChatParameters, GenerateParameters, Message, Unpack
from .retry import RetryState
from .sse import EventReader

T = TypeVar("T")


class AsyncClient(BaseClient[httpx.AsyncClient]):
    """An asyncio client of a loraplex (or LoRAX) server; options are `BaseClient`'s.

    >>> async with AsyncClient("http://127.0.0.1:8080") as client:
    ...     async for event in client.generate_stream("Hello", max_new_tokens=20):
    ...         print(event.token.text, end="")

    Every method retries as `loraplex.client.retry` describes, and raises a `LoraplexError`.
    """

    _http_class = httpx.AsyncClient

    async def generate(self, inputs: str, **parameters: Unpack[GenerateParameters]) -> types.GenerateResponse:
        """`Client.generate`, awaited."""
        return await self._call(endpoints.generate(inputs, parameters))

    def generate_stream(
        self, inputs: str, **parameters: Unpack[GenerateParameters]
    ) -> AsyncIterator[types.StreamResponse]:
        """POST /generate_stream: one event per token; the last carries `generated_text`. The request
        is sent when iteration starts; it is retried only until the first event has arrived."""
        return self._stream(endpoints.generate_stream(inputs, parameters))

    async def chat(
        self, messages: Sequence[Message], adapter_id: str | None = None, **parameters: Unpack[ChatParameters]
    ) -> types.ChatCompletion:
        """POST /v1/chat/completions with `model` = `adapter_id` ("" or None: the base model)."""
        return await self._call(endpoints.chat(messages, adapter_id, parameters))

    def chat_stream(
        self, messages: Sequence[Message], adapter_id: str | None = None, **parameters: Unpack[ChatParameters]
    ) -> AsyncIterator[types.ChatCompletionChunk]:
        """`chat` with `stream: true`: the chunks, until the server's `[DONE]`."""
        return self._stream(endpoints.chat_stream(messages, adapter_id, parameters))

    async def adapters(self) -> types.AdapterList:
        """GET /adapters: every adapter the server knows, with its tier and use."""
        return await self._call(endpoints.adapters())

    async def load_adapter(self, adapter_id: str, adapter_source: str | None = None) -> types.AdapterInfo:
        """POST /adapters/load: load now (waiting for it) rather than on first use."""
        return await self._call(endpoints.load_adapter(adapter_id, adapter_source))

    async def unload_adapter(self, adapter_id: str, adapter_source: str | None = None) -> types.AdapterInfo:
        """POST /adapters/unload: free its memory (ConflictError while requests use it)."""
        return await self._call(endpoints.unload_adapter(adapter_id, adapter_source))

    async def health(self) -> types.Health:
        """GET /health: `ready` is False while the server initializes or drains (never raises for that)."""
        return await self._call(endpoints.health())

    async def info(self) -> types.Info:
        """GET /info: model, limits, status and version."""
        return await self._call(endpoints.info())

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _call(self, call: Call[T]) -> T:
        return call.parse(await self._send(self._request(call), self._retry_state(call.accepted)))

    async def _send(self, request: httpx.Request, retry: RetryState, stream: bool = False) -> httpx.Response:
        """Send until an answer that is not to be retried (returned as is, error or not)."""
        while True:
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.TransportError as error:
                retry.check_error(error)
            else:
                if not retry.after_response(response):
                    return response
                await response.aclose()
            await asyncio.sleep(retry.delay)

    async def _stream(self, call: StreamCall[T]) -> AsyncIterator[T]:
        request, retry = self._request(call), self._retry_state()
        while True:
            response = await self._send(request, retry, stream=True)
            reader = EventReader(call)
            try:
                if response.is_error:
                    await response.aread()
                    raise_for_status(response)
                async for line in response.aiter_lines():
                    for event in reader.feed(line):
                        yield event
                for event in reader.end():
                    yield event
                return
            except httpx.TransportError as error:
                if reader.received or not retry.after_error(error):
                    raise reader.failure(error, retry.retries + 1) from error
            finally:
                await response.aclose()
            await asyncio.sleep(retry.delay)
