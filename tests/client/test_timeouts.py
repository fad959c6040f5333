"""The client's timeout: a server slower than it raises APITimeoutError quickly; read timeouts are
retried only when asked for."""

from __future__ import annotations

import time

import httpx
import pytest

from loraplex.client import APITimeoutError, StreamInterruptedError, StreamTimeoutError

from .fake_server import Reply, token_event

SLOW = Reply(delay=5.0, body={"generated_text": "too late"})


def test_a_slow_answer_times_out_quickly_and_is_not_retried(call, server):
    server.script("/generate", SLOW)
    started = time.monotonic()
    with pytest.raises(APITimeoutError, match="timed out"):
        call("generate", "Hi", options={"timeout": 0.3})
    assert time.monotonic() - started < 1.5
    assert server.count("/generate") == 1


def test_read_timeouts_are_retried_when_asked(call, server):
    server.script("/generate", SLOW, SLOW)
    started = time.monotonic()
    response = call("generate", "Hi", options={"timeout": 0.2, "retry_read_timeouts": True})
    assert response.generated_text == "Hello world"
    assert server.count("/generate") == 3
    assert 0.4 <= time.monotonic() - started < 2.0


def test_an_httpx_timeout_object_applies(call, server):
    server.script("/generate", SLOW)
    with pytest.raises(APITimeoutError):
        call("generate", "Hi", options={"timeout": httpx.Timeout(5.0, read=0.2)})
    assert server.count("/generate") == 1


def test_a_stream_stalling_before_its_first_event_times_out(call, server):
    server.script("/generate_stream", Reply(events=[5.0, token_event("late")]))
    started = time.monotonic()
    with pytest.raises(APITimeoutError) as raised:
        call.stream("generate_stream", "Hi", options={"timeout": 0.3})
    assert not isinstance(raised.value, StreamInterruptedError)
    assert time.monotonic() - started < 1.5
    assert server.count("/generate_stream") == 1


def test_a_stream_stalling_after_its_first_event_times_out_unretried(call, server):
    server.script("/generate_stream", Reply(events=[token_event("Hello"), 5.0, token_event("late")]))
    events: list = []
    started = time.monotonic()
    with pytest.raises(StreamTimeoutError) as raised:
        call.stream(
            "generate_stream", "Hi", sink=events, options={"timeout": 0.3, "retry_read_timeouts": True}
        )
    assert isinstance(raised.value, APITimeoutError)
    assert isinstance(raised.value, StreamInterruptedError)
    assert len(events) == 1
    assert time.monotonic() - started < 1.5
    assert server.count("/generate_stream") == 1
