"""The event loop and HTTP/1.1 implementation `serve` runs uvicorn with.

uvloop and httptools are C implementations of the asyncio event loop and of HTTP parsing (what
`uvicorn[standard]` installs): every streamed token costs the event loop less CPU time than with
asyncio's own loop and h11, and on a GPU that time is taken from the engine thread through the GIL
(`benchmarks/bench_http_stack.py` measures it). "auto" takes them where they are installed, as
uvicorn does, and asyncio and h11 (pure Python, always there) elsewhere.
"""

from __future__ import annotations

import importlib

EVENT_LOOPS = ("uvloop", "asyncio")
HTTP_PROTOCOLS = ("httptools", "h11")


def installed(module: str) -> bool:
    """Whether `module` imports (as uvicorn tells, so a broken install counts as missing)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def resolve(choice: str, options: tuple[str, ...]) -> str:
    """Resolve "auto" to the first of `options` that is installed; a named one must be installed.

    Raises ValueError for a named choice that is not installed (or not one of `options`).
    """
    if choice == "auto":
        return next(option for option in options if installed(option))
    if choice not in options:
        raise ValueError(f"{choice!r} is not one of {', '.join(options)}")
    if not installed(choice):
        raise ValueError(f"{choice} is not installed (pip install {choice})")
    return choice


def protocol_name(protocol_class: type) -> str:
    """uvicorn's HTTP protocol class -> "httptools" or "h11" (from its module, `..._impl`)."""
    return protocol_class.__module__.rsplit(".", 1)[-1].removesuffix("_impl")
