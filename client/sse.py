"""Reading one server-sent-events answer, line by line, into the events of a `StreamCall`.

The reader also keeps the rule that decides retries of a stream: it counts the events it has handed
out, and a stream that ends or breaks is retryable only while that count is 0.
"""

from __future__ import annotations

import json
from typing import Generic, TypeVar

import httpx

from .endpoints import StreamCall
from .errors import (
    APIConnectionError,
    ResponseDecodeError,
    StreamInterruptedError,
    connection_error,
    error_from_body,
)

T = TypeVar("T")


class EventReader(Generic[T]):
    """Feed it the response's lines (without line endings), then call `end` at the end of the body.

    An error event (`{"error": ..., "error_type": ...}`) raises the exception it maps to.
    """

    def __init__(self, call: StreamCall[T]):
        self.call = call
        self.received = 0
        self.finished = False
        self._data: list[str] = []

    def feed(self, line: str) -> list[T]:
        """The events completed by this line (an event ends at a blank line)."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):  # a comment, e.g. a keep-alive
            return []
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return []

    def end(self) -> list[T]:
        """The last event if the body did not end with a blank line; raises if the stream is incomplete:
        `httpx.RemoteProtocolError` (retryable) when no event came at all, else StreamInterruptedError."""
        events = self._dispatch()
        if not self.finished:
            if self.received == 0:
                raise httpx.RemoteProtocolError("the stream ended before its first event")
            raise StreamInterruptedError(f"the stream ended after {self.received} event(s), before its last")
        return events

    def failure(self, error: httpx.TransportError, attempts: int = 1) -> APIConnectionError:
        """The exception for a transport error that ends this stream (for good)."""
        return connection_error(error, self.received, attempts)

    def _dispatch(self) -> list[T]:
        if not self._data:
            return []
        payload = "\n".join(self._data)
        self._data.clear()
        if self.finished:
            return []
        if self.call.done_marker is not None and payload.strip() == self.call.done_marker:
            self.finished = True
            return []
        try:
            data = json.loads(payload)
        except ValueError as error:
            raise ResponseDecodeError(f"unreadable stream event: {payload[:200]!r}") from error
        if isinstance(data, dict) and "error" in data and "token" not in data and "choices" not in data:
            raise error_from_body(None, data)
        event = self.call.parse_event(data)
        self.received += 1
        self.finished = self.call.is_final(event)
        return [event]
