"""When to send a request again, and how long to wait first. Shared by `Client` and `AsyncClient`;
no I/O here: the clients do the sending and the sleeping.

What is retried (for every method, POST included, since generating has no side effects):

- failures before the request reached the server: connection refused or reset while connecting,
  connect / pool timeouts, write errors and write timeouts;
- a connection the server closed or reset before a complete answer (`RemoteProtocolError`,
  `ReadError`), e.g. a keep-alive connection the server had just dropped, or a crashed proxy;
- answers 429, 502, 503 and 504.

What is not: a read timeout, unless `retry_read_timeouts=True`. The server got the request and is
most likely still working on it (a long generation); sending it again doubles the load and makes
the caller wait `timeout` once per attempt. Nor any other status: 4xx are the caller's to fix, 500 is
a bug. A stream is retried only until its first event has been received.

The wait before the n-th retry (n = 0, 1, ...) is `backoff * 2**n`, capped at `max_backoff`, with
"equal jitter" (a random point in its upper half) so that clients refused together do not come back
together. A `Retry-After` header (seconds, or an HTTP date) replaces that wait; one longer than
`max_retry_after` is not waited for: the error is raised at once (its `retry_after` tells when).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import httpx

from .errors import connection_error
from .retry_after import parse_retry_after

RETRY_STATUSES = frozenset({429, 502, 503, 504})

# Transport failures after which sending again is safe. ReadTimeout is decided by the policy.
_RETRYABLE_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.WriteError,
    httpx.WriteTimeout,
    httpx.ReadError,
    httpx.RemoteProtocolError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """How many times and after which failures to retry; see the module docstring."""

    max_retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 60.0
    retry_statuses: frozenset[int] = RETRY_STATUSES
    retry_read_timeouts: bool = False
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.backoff < 0 or self.max_backoff < 0 or self.max_retry_after < 0:
            raise ValueError("backoff, max_backoff and max_retry_after must be >= 0")

    def backoff_delay(self, retry: int) -> float:
        """The wait before retry number `retry` (0-based): within [ceiling / 2, ceiling], where
        ceiling = min(max_backoff, backoff * 2**retry)."""
        ceiling = min(self.max_backoff, self.backoff * 2.0**retry)
        return ceiling * (0.5 + 0.5 * self.rng.random())

    def retries_error(self, error: httpx.TransportError) -> bool:
        """Whether a request that failed with this transport error may be sent again."""
        if isinstance(error, httpx.ReadTimeout):
            return self.retry_read_timeouts
        return isinstance(error, _RETRYABLE_ERRORS)


class RetryState:
    """The retries of one call: counts them and holds the wait before the next attempt.

    `accepted` are statuses that are an answer for this call rather than a failure (503 for
    `/health`), never retried.
    """

    def __init__(self, policy: RetryPolicy, accepted: frozenset[int] = frozenset()):
        self.policy = policy
        self.accepted = accepted
        self.retries = 0
        self.delay = 0.0

    def after_error(self, error: httpx.TransportError) -> bool:
        """True if the call should be sent again (after `delay` seconds), False to give up."""
        if self.retries >= self.policy.max_retries or not self.policy.retries_error(error):
            return False
        return self._schedule(None)

    def check_error(self, error: httpx.TransportError) -> None:
        """Schedule another attempt after this transport error, or raise the client's exception."""
        if not self.after_error(error):
            raise connection_error(error, attempts=self.retries + 1) from error

    def after_response(self, response: httpx.Response) -> bool:
        """True if this answer should be dropped and the call sent again (after `delay` seconds)."""
        status = response.status_code
        if status in self.accepted or status not in self.policy.retry_statuses:
            return False
        if self.retries >= self.policy.max_retries:
            return False
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if retry_after is not None and retry_after > self.policy.max_retry_after:
            return False
        return self._schedule(retry_after)

    def _schedule(self, retry_after: float | None) -> bool:
        self.delay = retry_after if retry_after is not None else self.policy.backoff_delay(self.retries)
        self.retries += 1
        return True
