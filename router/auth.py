"""API keys and per-key rate limits.

`ApiKeyAuth` is ASGI middleware: every route but the open ones needs `Authorization: Bearer <key>`,
else 401. `RateLimiter` keeps, per key (or per client address without keys), the requests and tokens
of the last minute and answers 429 with Retry-After when a new request would go over.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections import defaultdict, deque
from pathlib import Path

from .errors import ApiError

WINDOW_SECONDS = 60.0


def read_api_keys(keys: list[str], key_file: str | None) -> frozenset[str]:
    """Keys given on the command line plus one per line of `key_file` (blank lines and # comments skipped).

    Raises ValueError when keys were asked for and none is usable: a blank --api-key or a key file with
    no key in it would otherwise leave the server open while its operator believes it closed.
    """
    if any(not k.strip() for k in keys):
        raise ValueError("--api-key: a key cannot be blank")
    found = [k.strip() for k in keys]
    if key_file:
        from_file = []
        for line in Path(key_file).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                from_file.append(line)
        if not from_file:
            raise ValueError(f"--api-key-file {key_file}: no key in it (blank lines and # comments only)")
        found += from_file
    return frozenset(found)


class ApiKeyAuth:
    def __init__(self, app, keys: frozenset[str], open_paths: frozenset[str]):
        self.app = app
        self.keys = keys
        self.open_paths = open_paths

    def _valid(self, token: str) -> bool:
        return any(hmac.compare_digest(token.encode(), key.encode()) for key in self.keys)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.keys or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not self._valid(token.strip()):
            body = json.dumps(
                {
                    "error": "a valid API key is required (Authorization: Bearer <key>)",
                    "error_type": "authentication",
                }
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
                }
            )
            await send({"type": "http.response.body", "body": body.encode()})
            return
        scope.setdefault("state", {})["api_key"] = token.strip()
        await self.app(scope, receive, send)


class RateLimiter:
    """Sliding one-minute windows of request arrivals and of tokens (prompt + generated) per caller.

    A request in flight holds a reservation of the most tokens it may use (its prompts plus their
    `max_new_tokens`), counted against the limit until it ends and is charged what it used: without it,
    a burst of concurrent requests would all pass before any of them was charged.
    """

    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None):
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self._requests: dict[str, deque[float]] = defaultdict(deque)
        self._tokens: dict[str, deque[tuple[float, int]]] = defaultdict(deque)
        self._reserved: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.requests_per_minute or self.tokens_per_minute)

    def _trim(self, caller: str, now: float) -> None:
        requests, tokens = self._requests[caller], self._tokens[caller]
        while requests and requests[0] <= now - WINDOW_SECONDS:
            requests.popleft()
        while tokens and tokens[0][0] <= now - WINDOW_SECONDS:
            tokens.popleft()

    def check(self, caller: str, reserve: int = 0) -> None:
        """Count one request for `caller` and reserve `reserve` tokens for it, or raise 429 with the
        seconds until it may fit."""
        if not self.enabled:
            return
        now = time.monotonic()
        with self._lock:
            self._trim(caller, now)
            requests, tokens = self._requests[caller], self._tokens[caller]
            if self.requests_per_minute and len(requests) >= self.requests_per_minute:
                retry = requests[0] + WINDOW_SECONDS - now
                raise _limited(f"rate limit of {self.requests_per_minute} requests per minute reached", retry)
            used = sum(n for _, n in tokens) + self._reserved[caller]
            # A request must fit beside what is counted; one larger than the whole limit runs only
            # when nothing else is counted (else it could never run).
            if self.tokens_per_minute and used and used + reserve > self.tokens_per_minute:
                # Charged tokens leave the window a minute after they were charged; reservations
                # come back as their requests end.
                retry = tokens[0][0] + WINDOW_SECONDS - now if tokens else 1.0
                raise _limited(f"rate limit of {self.tokens_per_minute} tokens per minute reached", retry)
            requests.append(now)
            if self.tokens_per_minute:
                self._reserved[caller] += reserve

    def settle(self, caller: str, reserved: int, used: int) -> None:
        """A request that reserved `reserved` tokens ended (or never started) having used `used`."""
        if not self.tokens_per_minute:
            return
        with self._lock:
            left = self._reserved[caller] - reserved
            if left > 0:
                self._reserved[caller] = left
            else:
                del self._reserved[caller]
            if used:
                self._tokens[caller].append((time.monotonic(), used))


def _limited(message: str, retry_after: float) -> ApiError:
    seconds = max(int(retry_after + 0.999), 1)
    return ApiError(429, message, "rate_limited", headers={"Retry-After": str(seconds)})


def caller_of(http_request) -> str:
    key = getattr(http_request.state, "api_key", None)
    if key:
        return f"key:{key}"
    client = http_request.client
    return f"ip:{client.host}" if client else "ip:unknown"
