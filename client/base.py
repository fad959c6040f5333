"""What `Client` and `AsyncClient` share: their options, headers and retry policy, and how a call
becomes an httpx request."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any, ClassVar, Generic, TypeVar

import httpx

from .endpoints import Call, StreamCall
from .retry import RetryPolicy, RetryState

DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=10.0)
"""10 s to connect; 120 s for each wait on reading or writing (a generation can take that long)."""

H = TypeVar("H", httpx.Client, httpx.AsyncClient)


def _user_agent() -> str:
    try:
        return f"loraplex-client/{version('loraplex')}"
    except PackageNotFoundError:
        return "loraplex-client"


class BaseClient(Generic[H]):
    """Options common to both clients.

    Args:
        base_url: the server, e.g. "http://127.0.0.1:8080".
        api_key: sent as `Authorization: Bearer <api_key>` when set.
        timeout: seconds, or an `httpx.Timeout` for connect/read/write/pool apart. A read timeout
            applies to each wait for data, so a stream times out only if no event comes for that long.
        max_retries: retries after the first attempt (0 disables retrying).
        backoff: the wait before the first retry in seconds; it doubles with each retry (with jitter).
        max_backoff: the longest wait between two attempts, Retry-After aside.
        max_retry_after: a Retry-After longer than this is not waited for: the error is raised.
        retry_read_timeouts: also retry after a read timeout (off: the server may still be working).
        headers: extra headers for every request.
    """

    _http_class: ClassVar[type]

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_retry_after: float = 60.0,
        retry_read_timeouts: bool = False,
        headers: Mapping[str, str] | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.retry_policy = RetryPolicy(
            max_retries=max_retries,
            backoff=backoff,
            max_backoff=max_backoff,
            max_retry_after=max_retry_after,
            retry_read_timeouts=retry_read_timeouts,
        )
        all_headers = {"user-agent": _user_agent(), **(headers or {})}
        if api_key:
            all_headers["authorization"] = f"Bearer {api_key}"
        self._http: H = self._http_class(base_url=self.base_url, headers=all_headers, timeout=timeout)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    def _request(self, call: Call[Any] | StreamCall[Any]) -> httpx.Request:
        return self._http.build_request(call.method, call.path, json=call.json)

    def _retry_state(self, accepted: frozenset[int] = frozenset()) -> RetryState:
        return RetryState(self.retry_policy, accepted)
