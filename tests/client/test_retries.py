"""Retries against a server that fails N times: counts, backoff, Retry-After, what is never retried."""

from __future__ import annotations

import email.utils
import socket
import time

import pytest

from loraplex.client import (
    AdapterLoadError,
    AdapterNotFoundError,
    AdapterUnsupportedError,
    APIConnectionError,
    AuthenticationError,
    GenerationError,
    InternalServerError,
    OverloadedError,
    RequestTimeoutError,
    UnavailableError,
    ValidationError,
)

from .fake_server import Reply, error

FAILURES = {
    "503": error(503, "the server is initializing", "unavailable"),
    "502": Reply(502, "<html><body>Bad Gateway</body></html>"),
    "504": error(504, "request timed out", "request_timeout"),
    "429": error(429, "Model is overloaded", "overloaded"),
    "reset": Reply(drop="reset"),
    "close": Reply(drop="close"),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_post_is_retried_until_it_succeeds(call, server, failure):
    server.script("/generate", FAILURES[failure], FAILURES[failure])
    response = call("generate", "Hi", max_new_tokens=2)
    assert response.generated_text == "Hello world"
    assert server.count("/generate") == 3
    assert all(hit.method == "POST" and hit.json["inputs"] == "Hi" for hit in server.hits)


def test_retries_stop_at_max_retries_with_the_last_error(call, server):
    server.script("/generate", *[error(503, "the server is draining", "unavailable")] * 5)
    with pytest.raises(UnavailableError) as raised:
        call("generate", "Hi", options={"max_retries": 2})
    assert server.count("/generate") == 3
    assert raised.value.status_code == 503
    assert raised.value.error_type == "unavailable"
    assert raised.value.message == "the server is draining"


def test_no_retry_when_max_retries_is_zero(call, server):
    server.script("/generate", error(429, "Model is overloaded", "overloaded"))
    with pytest.raises(OverloadedError):
        call("generate", "Hi", options={"max_retries": 0})
    assert server.count("/generate") == 1


def test_a_proxy_error_page_becomes_the_message(call, server):
    server.script("/generate", *[FAILURES["502"]] * 2)
    with pytest.raises(InternalServerError) as raised:
        call("generate", "Hi", options={"max_retries": 1})
    assert raised.value.status_code == 502
    assert "Bad Gateway" in raised.value.message
    assert raised.value.error_type is None
    assert server.count("/generate") == 2


def test_exhausted_504_is_a_request_timeout_error(call, server):
    server.script("/generate", *[FAILURES["504"]] * 2)
    with pytest.raises(RequestTimeoutError):
        call("generate", "Hi", options={"max_retries": 1})


def test_retry_after_seconds_is_honored(call, server):
    busy = error(429, "rate limited", "rate_limited", {"Retry-After": "0.3"})
    server.script("/generate", busy, busy)
    started = time.monotonic()
    assert call("generate", "Hi").generated_text == "Hello world"
    elapsed = time.monotonic() - started
    assert server.count("/generate") == 3
    assert 0.6 <= elapsed < 2.0


def test_retry_after_as_an_http_date_is_honored(call, server):
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    server.script("/generate", error(503, "wait", "unavailable", {"Retry-After": past}))
    started = time.monotonic()
    assert call("generate", "Hi").generated_text == "Hello world"
    assert time.monotonic() - started < 1.0  # a date in the past: no wait
    assert server.count("/generate") == 2


def test_a_retry_after_too_long_is_raised_not_waited(call, server):
    server.script("/generate", error(429, "come back in an hour", "rate_limited", {"Retry-After": "3600"}))
    started = time.monotonic()
    with pytest.raises(OverloadedError) as raised:
        call("generate", "Hi", options={"max_retry_after": 10})
    assert time.monotonic() - started < 1.0
    assert raised.value.retry_after == 3600
    assert server.count("/generate") == 1


def test_backoff_grows_exponentially(call, server):
    server.script("/generate", *[error(503, "busy", "unavailable")] * 3)
    started = time.monotonic()
    call("generate", "Hi", options={"backoff": 0.08, "max_backoff": 10})
    elapsed = time.monotonic() - started
    # waits of 0.08, 0.16, 0.32 s, each jittered into its upper half: 0.28 to 0.56 s in all
    assert 0.28 <= elapsed < 1.5
    assert server.count("/generate") == 4


def test_backoff_is_capped_by_max_backoff(call, server):
    server.script("/generate", *[error(503, "busy", "unavailable")] * 3)
    started = time.monotonic()
    call("generate", "Hi", options={"backoff": 5.0, "max_backoff": 0.05})
    assert time.monotonic() - started < 1.0


NOT_RETRIED = [
    (422, "validation", "`max_new_tokens` must be strictly positive", ValidationError),
    (424, "adapter_not_found", "adapter 'x': not found", AdapterNotFoundError),
    (424, "adapter_unsupported", "adapter 'x': DoRA is not supported", AdapterUnsupportedError),
    (424, "adapter_load_failed", "adapter 'x': truncated file", AdapterLoadError),
    (424, "generation", "the engine failed", GenerationError),
    (401, "authentication", "missing or invalid API key", AuthenticationError),
    (500, "internal", "internal error: boom", InternalServerError),
]


@pytest.mark.parametrize(("status", "error_type", "message", "exception"), NOT_RETRIED)
def test_client_and_server_errors_are_not_retried(call, server, status, error_type, message, exception):
    server.script("/generate", error(status, message, error_type))
    with pytest.raises(exception) as raised:
        call("generate", "Hi")
    assert server.count("/generate") == 1
    assert raised.value.status_code == status
    assert raised.value.error_type == error_type
    assert raised.value.message == message
    assert message in str(raised.value)


def test_connection_refused_is_retried_then_raised(call):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    call.url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    with pytest.raises(APIConnectionError, match="connection failed"):
        call("health", options={"max_retries": 2, "backoff": 0.1, "max_backoff": 1})
    assert time.monotonic() - started >= 0.15  # two waits: >= 0.05 + 0.1


def test_health_503_is_an_answer_not_retried(call, server):
    server.script("/health", Reply(503, {"status": "initializing"}), method="GET")
    health = call("health")
    assert (health.status, health.ready) == ("initializing", False)
    assert server.count("/health") == 1
    assert call("health").ready is True


def test_get_routes_are_retried_too(call, server):
    server.script("/adapters", FAILURES["reset"], FAILURES["503"], method="GET")
    assert call("adapters").gpu_slots == 4
    assert server.count("/adapters") == 3
