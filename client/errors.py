"""The exceptions the client raises, and how a server's error answer maps onto them.

The server answers errors as `{"error": str, "error_type": str}` with LoRAX's status codes. The
status picks the family (422 validation, 424 adapter or generation failure, 429 overloaded, ...);
within 424 the `error_type` says which adapter problem it was. An error event inside a stream has no
status, so its `error_type` stands in for one.
"""

from __future__ import annotations

import contextlib

import httpx

from .retry_after import parse_retry_after


class LoraplexError(Exception):
    """Base of every exception this client raises."""


class APIConnectionError(LoraplexError):
    """The server could not be reached or the connection failed (after any retries)."""


class APITimeoutError(APIConnectionError, TimeoutError):
    """The request ran past the client's `timeout` (connect, read, write or pool)."""


class StreamInterruptedError(APIConnectionError):
    """A stream broke after its first event (disconnect, or no final event). Never retried:
    the events already yielded cannot be taken back."""


class StreamTimeoutError(StreamInterruptedError, APITimeoutError):
    """A stream that had begun waited longer than the read timeout for its next event."""


class ResponseDecodeError(LoraplexError):
    """A successful answer that is not what the API says it should be (not JSON, wrong fields)."""


class APIStatusError(LoraplexError):
    """The server answered with an error. `status_code` is None for an error event inside a stream."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None,
        error_type: str | None = None,
        headers: httpx.Headers | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.error_type = error_type
        self.headers = headers if headers is not None else httpx.Headers()

    def __str__(self) -> str:
        status = f"{self.status_code} " if self.status_code is not None else ""
        kind = f"[{self.error_type}] " if self.error_type else ""
        return f"{status}{kind}{self.message}"


class ValidationError(APIStatusError):
    """422 (or 400): the request itself is wrong; sending it again will not help."""


class AuthenticationError(APIStatusError):
    """401 / 403: missing or wrong API key."""


class NotFoundError(APIStatusError):
    """404: no such route, or (unload) no such loaded adapter."""


class ConflictError(APIStatusError):
    """409: e.g. unloading an adapter that requests are still using."""


class GenerationError(APIStatusError):
    """424: the request was accepted but generating failed."""


class AdapterError(APIStatusError):
    """424 with an `adapter_*` error_type: the adapter cannot be served."""


class AdapterNotFoundError(AdapterError):
    """The adapter id names nothing the server can find."""


class AdapterUnsupportedError(AdapterError):
    """The adapter does not fit the base model or uses something the server does not implement."""


class AdapterLoadError(AdapterError):
    """The adapter's files could not be read or loaded."""


class OverloadedError(APIStatusError):
    """429: overloaded or rate limited. `retry_after` is the server's Retry-After in seconds, if any."""

    @property
    def retry_after(self) -> float | None:
        return parse_retry_after(self.headers.get("retry-after"))


class ServerError(APIStatusError):
    """5xx: the server (or a proxy in front of it) failed."""


class InternalServerError(ServerError):
    """500, 502 and other 5xx without a more precise class."""


class UnavailableError(ServerError):
    """503: the server is initializing, draining, or its engine failed."""


class RequestTimeoutError(ServerError):
    """504: the server (or a proxy) gave up on the request because it ran too long."""


_ADAPTER_ERRORS: dict[str, type[AdapterError]] = {
    "adapter_not_found": AdapterNotFoundError,
    "adapter_unsupported": AdapterUnsupportedError,
    "adapter_load_failed": AdapterLoadError,
}

_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: ValidationError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    422: ValidationError,
    429: OverloadedError,
    500: InternalServerError,
    503: UnavailableError,
    504: RequestTimeoutError,
}

# The status an error event in a stream stands for, by its error_type.
_STATUS_OF_TYPE = {
    "validation": 422,
    "authentication": 401,
    "overloaded": 429,
    "rate_limited": 429,
    "unavailable": 503,
    "request_timeout": 504,
    "internal": 500,
}


def error_class(status_code: int | None, error_type: str | None) -> type[APIStatusError]:
    """The exception class for an error answer; `status_code` None means an in-stream error event."""
    status = status_code if status_code is not None else _STATUS_OF_TYPE.get(error_type or "", 424)
    if status == 424:
        if error_type in _ADAPTER_ERRORS:
            return _ADAPTER_ERRORS[error_type]
        return AdapterError if (error_type or "").startswith("adapter") else GenerationError
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return InternalServerError if status >= 500 else APIStatusError


def error_from_body(
    status_code: int | None, body: object, text: str = "", headers: httpx.Headers | None = None
) -> APIStatusError:
    """Build the exception for an error answer. `body` is the decoded JSON (or None if it was not
    JSON, e.g. a proxy's HTML page; then `text` is the message)."""
    message, error_type = None, None
    if isinstance(body, dict):
        message, error_type = body.get("error"), body.get("error_type")
        if message is None and isinstance(body.get("detail"), str):
            message = body["detail"]
    if not isinstance(message, str):
        message = text.strip()[:500] or f"HTTP {status_code}"
    if not isinstance(error_type, str):
        error_type = None
    cls = error_class(status_code, error_type)
    return cls(message, status_code=status_code, error_type=error_type, headers=headers)


def connection_error(
    error: httpx.TransportError, events_received: int = 0, attempts: int = 1
) -> APIConnectionError:
    """The client's exception for a transport failure it did not (or could no longer) retry;
    `events_received` > 0 means it broke a stream that had begun."""
    detail = str(error) or type(error).__name__
    with contextlib.suppress(RuntimeError):  # RuntimeError: an error raised without its request
        detail = f"{error.request.method} {error.request.url}: {detail}"
    if attempts > 1:
        detail += f" (after {attempts} attempts)"
    timed_out = isinstance(error, httpx.TimeoutException)
    if events_received:
        cls = StreamTimeoutError if timed_out else StreamInterruptedError
        return cls(f"stream broken after {events_received} event(s): {detail}")
    if timed_out:
        return APITimeoutError(f"request timed out: {detail}")
    return APIConnectionError(f"connection failed: {detail}")
