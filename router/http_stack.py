"""The event loop and HTTP/1.1 implementation `serve` runs uvicorn with (`--loop`, `--http`).

uvloop and httptools are C implementations of the asyncio event loop and of HTTP parsing (what
`uvicorn[standard]` installs). "auto" is uvicorn's own choice: them where they import, else asyncio's
loop and h11 (pure Python, always there). `benchmarks/bench_http_stack.py` measures the event loop's
CPU time per streamed token with each pair: on CPU it was lower with uvloop and httptools at a GPU
server's token rate, and not at a few hundred tokens/s.
"""

from __future__ import annotations

import importlib

EVENT_LOOPS = ("uvloop", "asyncio")
HTTP_PROTOCOLS = ("httptools", "h11")


def check_installed(choice: str) -> None:
    """Raise ValueError when a named choice (not "auto") does not import, before uvicorn would fail
    on it with a traceback."""
    if choice == "auto":
        return
    try:
        importlib.import_module(choice)
    except ImportError:
        raise ValueError(f"{choice} is not installed (pip install {choice})") from None


def protocol_name(protocol_class: type) -> str:
    """uvicorn's HTTP protocol class -> "httptools" or "h11" (from its module, `..._impl`)."""
    return protocol_class.__module__.rsplit(".", 1)[-1].removesuffix("_impl")
