"""Choosing the event loop and HTTP implementation that `serve` runs uvicorn with."""

import pytest

from loraplex.router import http_stack
from loraplex.router.http_stack import EVENT_LOOPS, HTTP_PROTOCOLS, resolve


def test_auto_takes_the_c_implementations_where_installed():
    pytest.importorskip("uvloop")  # not installed on Windows, Cygwin or PyPy
    assert resolve("auto", EVENT_LOOPS) == "uvloop"  # a dependency of the package
    assert resolve("auto", HTTP_PROTOCOLS) == "httptools"


def test_auto_falls_back_to_the_pure_python_ones(monkeypatch):
    monkeypatch.setattr(http_stack, "installed", lambda module: module in ("asyncio", "h11"))
    assert resolve("auto", EVENT_LOOPS) == "asyncio"
    assert resolve("auto", HTTP_PROTOCOLS) == "h11"


def test_a_named_choice_must_be_installed(monkeypatch):
    assert resolve("h11", HTTP_PROTOCOLS) == "h11"
    monkeypatch.setattr(http_stack, "installed", lambda module: module != "uvloop")
    with pytest.raises(ValueError, match=r"uvloop is not installed \(pip install uvloop\)"):
        resolve("uvloop", EVENT_LOOPS)
    with pytest.raises(ValueError, match="not one of"):
        resolve("trio", EVENT_LOOPS)


def test_protocol_names_come_from_uvicorns_classes():
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    assert http_stack.protocol_name(H11Protocol) == "h11"
    assert http_stack.protocol_name(HttpToolsProtocol) == "httptools"
