"""`serve --loop/--http`: a named choice must import; /info names uvicorn's protocol class."""

import pytest

from loraplex.router import http_stack


def test_a_named_choice_must_import(monkeypatch):
    http_stack.check_installed("auto")  # uvicorn's to resolve
    http_stack.check_installed("h11")
    real_import = http_stack.importlib.import_module

    def without_uvloop(name):
        if name == "uvloop":
            raise ImportError("hidden")
        return real_import(name)

    monkeypatch.setattr(http_stack.importlib, "import_module", without_uvloop)
    with pytest.raises(ValueError, match=r"uvloop is not installed \(pip install uvloop\)"):
        http_stack.check_installed("uvloop")
    http_stack.check_installed("asyncio")


def test_protocol_names_come_from_uvicorns_classes():
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    assert http_stack.protocol_name(H11Protocol) == "h11"
    assert http_stack.protocol_name(HttpToolsProtocol) == "httptools"
