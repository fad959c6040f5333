"""The HTTP side's handle on the engine: loads it off the event loop, tracks its status, and turns a
request's outputs (delivered on the engine thread) into an async stream (asyncio queue per request)."""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
from collections.abc import AsyncIterator, Callable

from loraplex.server.adapters.sources import AdapterLocation
from loraplex.server.engine import Engine
from loraplex.server.request import RequestOutput, SamplingParams

from .errors import OVERLOADED, UNAVAILABLE, ApiError
from .mailbox import OutputMailbox

logger = logging.getLogger(__name__)
_CUT_OFF = object()  # put on a request's queue in place of an output: the server is shutting down


class Status(str, enum.Enum):
    INITIALIZING = "initializing"
    READY = "ready"
    DRAINING = "draining"
    ERRORED = "errored"


class EngineClient:
    def __init__(self, engine_factory: Callable[[], Engine], max_concurrent_requests: int):
        self._factory = engine_factory
        self.max_concurrent_requests = max_concurrent_requests
        self.engine: Engine | None = None
        self._status = Status.INITIALIZING
        self.load_error: str | None = None
        self.in_flight = 0
        self._lock = threading.Lock()
        self.loaded = asyncio.Event()
        self._mailbox: OutputMailbox | None = None
        self._streams: set[asyncio.Queue] = set()  # of the requests running now (event loop only)

    @property
    def status(self) -> Status:
        if self._status is Status.READY and self.engine is not None and self.engine.fatal_error:
            return Status.ERRORED
        return self._status

    async def load(self) -> None:
        """Build the engine on a worker thread so the server answers /health (503) meanwhile."""
        try:
            self.engine = await asyncio.to_thread(self._factory)
        except Exception as error:  # noqa: BLE001 - the app reports it once, the process then exits
            self.load_error = f"{type(error).__name__}: {error}"
            self._status = Status.ERRORED
        else:
            self.engine.start()
            self._status = Status.READY
            logger.info("ready: %s", self.engine.info.summary())
        finally:
            self.loaded.set()

    def drain(self) -> None:
        if self._status is Status.READY:
            self._status = Status.DRAINING

    def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()

    def ready_engine(self) -> Engine:
        status = self.status
        if status is not Status.READY or self.engine is None:
            raise ApiError(503, f"the server is {status.value}", UNAVAILABLE)
        return self.engine

    def admit(self) -> None:
        """Take one of the `max_concurrent_requests` places, or refuse with 429."""
        with self._lock:
            if self.in_flight >= self.max_concurrent_requests:
                raise ApiError(429, "Model is overloaded", OVERLOADED, headers={"Retry-After": "1"})
            self.in_flight += 1

    def release(self) -> None:
        with self._lock:
            self.in_flight -= 1

    async def stream(
        self, prompt_ids: list[int], params: SamplingParams, adapter: AdapterLocation | None = None
    ) -> AsyncIterator[RequestOutput]:
        """Submit a request and yield its outputs; leaving early (client gone) aborts it in the engine."""
        engine = self.ready_engine()
        loop = asyncio.get_running_loop()
        if self._mailbox is None or self._mailbox.loop is not loop:
            self._mailbox = OutputMailbox(loop)
        mailbox = self._mailbox
        queue: asyncio.Queue[RequestOutput] = asyncio.Queue()

        def deliver(output: RequestOutput) -> None:
            mailbox.post(queue, output)

        request = engine.make_request(prompt_ids, params, sink=deliver, adapter=adapter)
        engine.submit(request)
        finished = False
        self._streams.add(queue)
        try:
            while not finished:
                output = await queue.get()
                if output is _CUT_OFF:
                    raise ApiError(503, "the server is shutting down: generation cut off", UNAVAILABLE)
                finished = output.finished
                yield output
        finally:
            self._streams.discard(queue)
            if not finished:
                engine.abort(request.request_id)

    def cut_off(self) -> None:
        """From any thread: end every running request now (the shutdown timeout passed). Each ends as
        a 503, or with that error as the last event of its stream, and its KV blocks are freed."""
        mailbox = self._mailbox
        if mailbox is not None:
            mailbox.loop.call_soon_threadsafe(self._cut_off_all)

    def _cut_off_all(self) -> None:
        for queue in list(self._streams):
            queue.put_nowait(_CUT_OFF)
