"""Start `loraplex serve` as a subprocess for a benchmark, wait until it is healthy, stop it after."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_command(args: Sequence[str], port: int) -> list[str]:
    """`loraplex serve ARGS --port PORT`, through the console script next to this Python if present."""
    script = Path(sys.executable).with_name("loraplex")
    program = [str(script)] if script.is_file() else [shutil.which("loraplex") or "loraplex"]
    return [*program, "serve", *args, "--host", "127.0.0.1", "--port", str(port)]


def wait_healthy(url: str, process: subprocess.Popen | None, timeout: float) -> None:
    """Poll /health until 200; RuntimeError if the process exits first or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode} before it was ready")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server at {url} was not healthy after {timeout:.0f} s")


@contextmanager
def local_server(
    args: Sequence[str],
    log_path: Path | None = None,
    timeout: float = 300.0,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Run `loraplex serve ARGS` on a free port; yields its base URL. Its output goes to `log_path`.

    On exit the server gets SIGINT (uvicorn's clean shutdown), then SIGKILL after 30 s.
    """
    with local_server_process(args, log_path, timeout, env) as (url, _):
        yield url


@contextmanager
def local_server_process(
    args: Sequence[str],
    log_path: Path | None = None,
    timeout: float = 300.0,
    env: dict[str, str] | None = None,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`local_server`, yielding (base URL, the server's process) for callers that watch the process.

    On exit the server gets SIGINT (uvicorn's clean shutdown), then SIGKILL after 30 s.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        serve_command(args, port),
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    try:
        try:
            wait_healthy(url, process, timeout)
        except RuntimeError as error:
            tail = Path(log_path).read_text()[-2000:] if log_path else ""
            raise RuntimeError(f"{error}\n{tail}") from error
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if log_path:
            log.close()
