"""Running generations for any route: admission, the request timeout, client disconnects, metrics.

Routes build `Job`s (validated, tokenized); this module turns them into finished `Completion`s or a
stream of engine outputs, and raises `ApiError` with the right status for everything that goes wrong
(the error handler, or the stream that reports it, counts it in the metrics).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request

from loraplex.server.adapters.sources import AdapterLocation
from loraplex.server.request import RequestOutput, SamplingParams, TokenOutput

from .auth import RateLimiter, caller_of
from .engine_client import EngineClient
from .errors import ApiError, error_status
from .metrics import BASE_MODEL_LABEL, Metrics

logger = logging.getLogger(__name__)
TIMEOUT = "request_timeout"


@dataclass
class Job:
    prompt_ids: list[int]
    params: SamplingParams
    adapter: AdapterLocation | None = None
    last: RequestOutput | None = None  # the latest engine output (the final one once finished)
    first_token_at: float | None = None  # monotonic time its first token reached the HTTP side
    error_type: str | None = None  # of the ApiError that ended it

    @property
    def adapter_id(self) -> str | None:
        return self.adapter.adapter_id if self.adapter else None

    @property
    def tokens_used(self) -> int:
        """Prompt + generated so far: what the token rate limit counts, finished or not."""
        return self.last.prompt_tokens + self.last.generated_tokens if self.last else 0

    @property
    def finished(self) -> bool:
        return self.last is not None and self.last.finished and self.error_type is None


@dataclass
class Completion:
    """A finished sequence: every token in order, and the final output (text, reason, prompt logprobs)."""

    tokens: list[TokenOutput]
    last: RequestOutput

    @property
    def cumulative_logprob(self) -> float:
        return sum(t.logprob for t in self.tokens)


class Generator:
    def __init__(
        self, client: EngineClient, metrics: Metrics, limiter: RateLimiter, request_timeout: float | None
    ):
        self.client = client
        self.metrics = metrics
        self.limiter = limiter
        self.request_timeout = request_timeout

    def begin(self, http_request: Request, jobs: list[Job]) -> None:
        """Rate limit (reserving the most tokens `jobs` may use), then take a concurrency place (429
        either way when full)."""
        caller = caller_of(http_request)
        reserved = sum(len(job.prompt_ids) + job.params.max_new_tokens for job in jobs)
        self.limiter.check(caller, reserved)
        try:
            self.client.admit()
        except ApiError:
            self.limiter.settle(caller, reserved, 0)
            raise
        http_request.state.reserved_tokens = reserved
        http_request.state.log_id = uuid.uuid4().hex[:12]
        http_request.state.admitted = time.monotonic()

    def end(self, http_request: Request, jobs: list[Job], cancelled: bool = False) -> None:
        """Give back the place and charge the caller the tokens the engine computed for `jobs`, finished
        or not; `cancelled`: a stream the client left before its end (counted as such)."""
        self.client.release()
        used = sum(job.tokens_used for job in jobs)
        self.limiter.settle(caller_of(http_request), http_request.state.reserved_tokens, used)
        if cancelled:
            self.metrics.count(jobs[0].adapter_id, "cancelled")
        if logger.isEnabledFor(logging.INFO):
            logger.info("request %s", request_summary(http_request, jobs, cancelled, time.monotonic()))

    async def outputs(self, job: Job) -> AsyncIterator[RequestOutput]:
        """The engine outputs of one sequence; raises ApiError on an engine error or the timeout.

        Leaving the iteration early (client gone, timeout) aborts the request in the engine.
        """
        arrival = time.monotonic()
        deadline = arrival + self.request_timeout if self.request_timeout else None
        stream = self.client.stream(job.prompt_ids, job.params, job.adapter)
        previous = None
        try:
            while True:
                remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                try:
                    output = await asyncio.wait_for(anext(stream), remaining)
                except StopAsyncIteration:
                    return
                except TimeoutError:
                    raise ApiError(
                        504, f"request timed out after {self.request_timeout:g} s", TIMEOUT
                    ) from None
                if output.error:
                    raise ApiError(error_status(output.error_type), output.error, output.error_type)
                job.last = output
                now = time.monotonic()
                if previous is not None:
                    self.metrics.observe_token_gap(now - previous)
                else:
                    job.first_token_at = now
                previous = now
                if output.finished:
                    self.metrics.observe_finished(job.adapter_id, output, arrival, now)
                yield output
        except ApiError as error:
            job.error_type = error.error_type
            raise
        finally:
            await stream.aclose()

    async def _complete(self, job: Job) -> Completion:
        tokens: list[TokenOutput] = []
        last = None
        async for output in self.outputs(job):
            tokens.append(output.token)
            last = output
        return Completion(tokens, last)

    async def complete(self, jobs: list[Job], http_request: Request) -> list[Completion]:
        """Run sequences concurrently to the end. A client that hangs up meanwhile, or one sequence that
        fails, aborts them all: the request's place is given back once none is left streaming here (the
        engine drops the aborted ones between its steps)."""
        self.begin(http_request, jobs)
        sequences = [asyncio.ensure_future(self._complete(job)) for job in jobs]
        work = asyncio.ensure_future(asyncio.gather(*sequences))
        watcher = asyncio.ensure_future(_until_disconnected(http_request))
        disconnected = False
        try:
            await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
            disconnected = not work.done()
        finally:
            watcher.cancel()
            running = [sequence for sequence in sequences if not sequence.done()]
            for sequence in running:
                sequence.cancel()
            # A cancelled gather ends with CancelledError as its exception, not as cancelled(); it
            # must not escape: a hang-up is a 499 (counted by the error handler), not a 500.
            await asyncio.gather(work, *running, return_exceptions=True)
            self.end(http_request, jobs)
        if disconnected:
            raise ApiError(499, "client disconnected", "cancelled")
        return work.result()


def request_summary(http_request: Request, jobs: list[Job], cancelled: bool, now: float) -> str:
    """One request's log line fields, as `key=value`. Times are in ms: `queue` in the engine until first
    scheduled, `ttft` and `total` from admission; `-` where there was none."""
    admitted = http_request.state.admitted
    reasons = [job.last.finish_reason.value for job in jobs if job.finished and job.last.finish_reason]
    times = [job.last.times for job in jobs if job.finished and job.last.times]
    queued = [t.scheduled - t.arrival for t in times if t.scheduled is not None]
    first_tokens = [job.first_token_at for job in jobs if job.first_token_at is not None]
    fields = {
        "id": http_request.state.log_id,
        "route": http_request.url.path,
        "adapter": jobs[0].adapter_id or BASE_MODEL_LABEL,
        "prompt_tokens": sum(len(job.prompt_ids) for job in jobs),
        "generated_tokens": sum(job.last.generated_tokens for job in jobs if job.last),
        "outcome": _outcome(jobs, cancelled),
        "finish_reason": ",".join(reasons) or "-",
        "queue_ms": _ms(min(queued)) if queued else "-",
        "ttft_ms": _ms(min(first_tokens) - admitted) if first_tokens else "-",
        "total_ms": _ms(now - admitted),
    }
    return " ".join(f"{key}={value}" for key, value in fields.items())


def _outcome(jobs: list[Job], cancelled: bool) -> str:
    """The error type that ended a sequence, else `cancelled` if the client left before the end, else `ok`."""
    errors = [job.error_type for job in jobs if job.error_type]
    if errors:
        return errors[0]
    return "ok" if not cancelled and all(job.finished for job in jobs) else "cancelled"


def _ms(seconds: float) -> int:
    return round(max(seconds, 0.0) * 1000)


async def _until_disconnected(http_request: Request) -> None:
    """Returns when the client hangs up: the body is already read, so the next ASGI message is the
    disconnect (waited for, not polled)."""
    while (await http_request.receive())["type"] != "http.disconnect":
        pass
