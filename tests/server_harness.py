"""A real uvicorn server on 127.0.0.1 in a background thread, for HTTP tests with real clients."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn

from loraplex.loadgen.server import free_port, wait_healthy
from loraplex.router.app import ServerSettings, create_app
from loraplex.server.config import EngineConfig
from loraplex.server.engine import Engine

LORAPLEX = str(Path(sys.executable).with_name("loraplex"))


def spawn_serve(
    *args: str, timeout: float = 90, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    """`loraplex serve ARGS` as a user starts it, on a free port; returns once /health says ready."""
    port = free_port()
    process = subprocess.Popen(
        [LORAPLEX, "serve", "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, timeout)
    except RuntimeError as error:
        process.kill()
        pytest.fail(f"{error}: {process.stdout.read()}")
    return process, url


def post_json(url: str, body: dict) -> httpx.Response:
    """POST `body` as Python's json writes it: NaN and Infinity as bare words, a lone surrogate as its
    \\u escape (what a client in another language may send; httpx itself refuses both)."""
    content = json.dumps(body).encode()
    return httpx.post(url, content=content, headers={"content-type": "application/json"}, timeout=30)


class RunningServer:
    def __init__(self, app, port: int):
        self.app = app
        self.url = f"http://127.0.0.1:{port}"

    @property
    def engine(self) -> Engine:
        return self.app.state.client.engine

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Until the engine has no request left and every KV block is back in the pool."""
        deadline = time.monotonic() + timeout
        engine = self.engine
        while time.monotonic() < deadline:
            if (
                not engine.scheduler.has_work
                and engine.allocator.num_free_blocks == engine.allocator.num_blocks
            ):
                return
            time.sleep(0.02)
        raise AssertionError(
            f"engine not idle: running={engine.num_running} waiting={engine.num_waiting} "
            f"free_blocks={engine.allocator.num_free_blocks}/{engine.allocator.num_blocks}"
        )


@contextmanager
def serve(
    config: EngineConfig | None,
    max_concurrent_requests: int = 128,
    engine_factory=None,
    wait_healthy: bool = True,
    **settings,
) -> Iterator[RunningServer]:
    port = free_port()
    server_settings = ServerSettings(max_concurrent_requests=max_concurrent_requests, **settings)
    app = create_app(engine_factory or (lambda: Engine(config)), server_settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    running = RunningServer(app, port)
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                status = httpx.get(running.url + "/health", timeout=1).status_code
                if status == 200 or (status == 503 and not wait_healthy):
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become healthy")
            time.sleep(0.05)
        yield running
    finally:
        server.should_exit = True
        thread.join(timeout=15)
