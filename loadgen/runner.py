"""Send a workload to a server over HTTP, streaming every response and timestamping every token.

By default LoRAX's native route (POST /generate_stream), or OpenAI's streaming completions
(`loadgen.apis`), with EOS ignored so each request generates exactly its output length. Open loop:
each request goes out at its send time whatever the server is doing. Closed loop: N clients each send
their next request when the previous one ends.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from .apis import LORAX, Api
from .arrivals import Arrivals
from .stats import RequestResult
from .workload import RequestSpec


@dataclass
class RunOutcome:
    """The per-request results, in workload order, and the wall time of the whole run."""

    results: list[RequestResult]
    wall_s: float


async def stream_one(
    client: httpx.AsyncClient, url: str, request: RequestSpec, api: Api = LORAX
) -> RequestResult:
    """Send one request and read its SSE stream; errors are recorded in the result, never raised."""
    result = RequestResult(
        index=request.index,
        adapter_id=request.adapter_id,
        prompt_len=request.prompt_len,
        output_len=request.output_len,
        start=time.perf_counter(),
    )
    try:
        async with client.stream("POST", url + api.route, json=api.body(request)) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")
                result.error = f"HTTP {response.status_code}: {body[:200]}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                now = time.perf_counter()
                event = api.parse(line[5:].strip())
                if event.error is not None:
                    result.error = event.error
                    break
                if event.done:
                    break
                if event.token:
                    result.token_times.append(now)
                if event.prompt_tokens is not None:
                    result.prompt_tokens = event.prompt_tokens
                if event.generated_tokens is not None:
                    result.generated_tokens = event.generated_tokens
                if event.finish_reason is not None:
                    result.finish_reason = event.finish_reason
        result.end = time.perf_counter()
        if result.error is None and not result.token_times:
            result.error = "the stream ended without a token"
    except (httpx.HTTPError, json.JSONDecodeError) as error:
        result.error = f"{type(error).__name__}: {error}"
    return result


def _progress(total: int, enabled: bool, description: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=description, unit="req", leave=False)


async def run_async(
    url: str,
    requests: Sequence[RequestSpec],
    arrivals: Arrivals,
    *,
    timeout: float = 600.0,
    progress: bool = True,
    description: str = "requests",
    api: Api = LORAX,
) -> RunOutcome:
    """Run the workload against `url` (e.g. http://127.0.0.1:8080) and collect every request's timings."""
    url = url.rstrip("/")
    limit = arrivals.concurrency if arrivals.closed_loop else None
    limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
    results: list[RequestResult | None] = [None] * len(requests)
    bar = _progress(len(requests), progress, description)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(timeout, connect=30.0)) as client:

        async def send(position: int, request: RequestSpec) -> None:
            results[position] = await stream_one(client, url, request, api)
            bar.update(1)

        started = time.perf_counter()
        if arrivals.closed_loop:
            queue = iter(enumerate(requests))

            async def worker() -> None:
                for position, request in queue:
                    await send(position, request)

            await asyncio.gather(*(worker() for _ in range(min(arrivals.concurrency, len(requests)))))
        else:

            async def at_time(position: int, request: RequestSpec) -> None:
                delay = started + request.send_time - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await send(position, request)

            await asyncio.gather(*(at_time(i, r) for i, r in enumerate(requests)))
        wall = time.perf_counter() - started
    bar.close()
    return RunOutcome([r for r in results if r is not None], wall)


def run(
    url: str,
    requests: Sequence[RequestSpec],
    arrivals: Arrivals,
    *,
    timeout: float = 600.0,
    progress: bool = True,
    description: str = "requests",
    api: Api = LORAX,
) -> RunOutcome:
    """`run_async` from synchronous code."""
    return asyncio.run(
        run_async(
            url, requests, arrivals, timeout=timeout, progress=progress, description=description, api=api
        )
    )


def warm_up(
    url: str,
    adapter_ids: Sequence[str | None],
    concurrency: int = 16,
    timeout: float = 600.0,
    api: Api = LORAX,
) -> None:
    """One short request per adapter (None: the base model), so loads happen before anything is timed.

    Raises RuntimeError naming the first adapter that failed.
    """
    specs = [
        RequestSpec(i, "w5 w6 w7 w8", (5, 6, 7, 8), 2, adapter_id, 0.0)
        for i, adapter_id in enumerate(adapter_ids)
    ]
    outcome = run(url, specs, Arrivals(concurrency=concurrency), timeout=timeout, progress=False, api=api)
    failed = [r for r in outcome.results if not r.ok]
    if failed:
        raise RuntimeError(f"warm-up failed for adapter {failed[0].adapter_id!r}: {failed[0].error}")


def server_info(url: str, timeout: float = 10.0) -> dict:
    """The server's GET /info (empty when it has none)."""
    try:
        response = httpx.get(url.rstrip("/") + "/info", timeout=timeout)
        return response.json() if response.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        return {}
