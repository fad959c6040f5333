from __future__ import annotations

import asyncio

import pytest

from loraplex.client import AsyncClient, Client

from .fake_server import FakeServer

# Tiny waits so that retry tests take milliseconds; tests that measure waits set their own.
FAST = dict(max_retries=3, backoff=0.01, max_backoff=0.05, timeout=5.0)


@pytest.fixture(scope="module")
def fake_server():
    server = FakeServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(fake_server: FakeServer) -> FakeServer:
    fake_server.reset()
    return fake_server


class Caller:
    """Calls one method of a fresh `Client` or `AsyncClient` (as `kind` says) and returns its result,
    so that each test runs against both clients the same way."""

    def __init__(self, kind: str, url: str):
        self.kind = kind
        self.url = url

    def __call__(self, method: str, *args, options: dict | None = None, **kwargs):
        options = {**FAST, **(options or {})}
        if self.kind == "sync":
            with Client(self.url, **options) as client:
                return getattr(client, method)(*args, **kwargs)

        async def run():
            async with AsyncClient(self.url, **options) as client:
                return await getattr(client, method)(*args, **kwargs)

        return asyncio.run(run())

    def stream(
        self, method: str, *args, sink: list | None = None, options: dict | None = None, **kwargs
    ) -> list:
        """Collect a stream's events into `sink` (returned), so that a test still sees the events
        that came before an exception."""
        sink = [] if sink is None else sink
        options = {**FAST, **(options or {})}
        if self.kind == "sync":
            with Client(self.url, **options) as client:
                for event in getattr(client, method)(*args, **kwargs):
                    sink.append(event)
            return sink

        async def run():
            async with AsyncClient(self.url, **options) as client:
                async for event in getattr(client, method)(*args, **kwargs):
                    sink.append(event)

        asyncio.run(run())
        return sink


@pytest.fixture(params=["sync", "async"])
def call(request, server: FakeServer) -> Caller:
    return Caller(request.param, server.url)
