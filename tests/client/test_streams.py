"""Streams are retried only before their first event; afterwards a break is raised, never retried."""

from __future__ import annotations

import pytest

from loraplex.client import (
    APIConnectionError,
    GenerationError,
    OverloadedError,
    StreamInterruptedError,
    ValidationError,
)

from .fake_server import STREAM_EVENTS, Reply, chat_chunks, error, token_event


def test_a_stream_yields_tokens_then_the_final_text(call, server):
    events = call.stream("generate_stream", "Hi", max_new_tokens=2, details=True)
    assert [e.token.text for e in events] == ["Hello", " world"]
    assert [e.final for e in events] == [False, True]
    assert events[-1].generated_text == "Hello world"
    assert events[-1].details.finish_reason == "length"
    assert events[-1].details.generated_tokens == 2
    assert server.hits[0].json == {"inputs": "Hi", "parameters": {"max_new_tokens": 2, "details": True}}


def test_a_stream_failing_before_its_first_event_is_retried(call, server):
    server.script(
        "/generate_stream",
        error(503, "the server is initializing", "unavailable"),
        Reply(drop="reset"),
        Reply(events=[], break_stream="close"),  # 200, then the connection closes before any event
    )
    events = call.stream("generate_stream", "Hi")
    assert [e.token.text for e in events] == ["Hello", " world"]
    assert server.count("/generate_stream") == 4


def test_a_stream_that_ends_empty_is_retried(call, server):
    server.script("/generate_stream", Reply(events=[]))  # 200, a proper end, no event
    assert len(call.stream("generate_stream", "Hi")) == 2
    assert server.count("/generate_stream") == 2


@pytest.mark.parametrize("how", ["reset", "close"])
def test_a_stream_broken_after_its_first_event_is_not_retried(call, server, how):
    server.script("/generate_stream", Reply(events=[token_event("Hello")], break_stream=how))
    events: list = []
    with pytest.raises(StreamInterruptedError, match="after 1 event"):
        call.stream("generate_stream", "Hi", sink=events)
    assert [e.token.text for e in events] == ["Hello"]
    assert server.count("/generate_stream") == 1


def test_a_stream_ending_before_its_final_event_is_raised(call, server):
    server.script("/generate_stream", Reply(events=[token_event("Hello"), token_event(" there", 1)]))
    events: list = []
    with pytest.raises(StreamInterruptedError, match="before its last"):
        call.stream("generate_stream", "Hi", sink=events)
    assert len(events) == 2
    assert server.count("/generate_stream") == 1


def test_an_error_event_after_the_first_token_raises_its_exception(call, server):
    failure = {"error": "the engine failed: out of memory", "error_type": "generation"}
    server.script("/generate_stream", Reply(events=[token_event("Hello"), failure]))
    events: list = []
    with pytest.raises(GenerationError) as raised:
        call.stream("generate_stream", "Hi", sink=events)
    assert len(events) == 1
    assert raised.value.message == "the engine failed: out of memory"
    assert raised.value.error_type == "generation"
    assert raised.value.status_code is None
    assert server.count("/generate_stream") == 1


def test_an_error_event_first_is_raised_not_retried(call, server):
    server.script(
        "/generate_stream", Reply(events=[{"error": "Model is overloaded", "error_type": "overloaded"}])
    )
    with pytest.raises(OverloadedError):
        call.stream("generate_stream", "Hi")
    assert server.count("/generate_stream") == 1


def test_a_validation_error_before_the_stream_is_raised_not_retried(call, server):
    server.script("/generate_stream", error(422, "`top_p` must be > 0.0 and < 1.0", "validation"))
    with pytest.raises(ValidationError, match="top_p"):
        call.stream("generate_stream", "Hi", top_p=1.5)
    assert server.count("/generate_stream") == 1


def test_stream_retries_are_bounded(call, server):
    server.script("/generate_stream", *[Reply(drop="close")] * 3)
    with pytest.raises(APIConnectionError) as raised:
        call.stream("generate_stream", "Hi", options={"max_retries": 2})
    assert not isinstance(raised.value, StreamInterruptedError)
    assert server.count("/generate_stream") == 3


def test_chat_stream_runs_until_done(call, server):
    server.set_default("/v1/chat/completions", Reply(events=chat_chunks(["Hi", " there", "!"])))
    chunks = call.stream("chat_stream", [{"role": "user", "content": "Hello"}], adapter_id="a", max_tokens=3)
    assert "".join(c.text for c in chunks) == "Hi there!"
    assert chunks[-1].finish_reason == "length"
    body = server.hits[0].json
    assert (body["model"], body["stream"], body["max_tokens"]) == ("a", True, 3)


def test_chat_stream_without_done_is_interrupted(call, server):
    server.set_default("/v1/chat/completions", Reply(events=chat_chunks(["Hi"])[:-1]))
    with pytest.raises(StreamInterruptedError):
        call.stream("chat_stream", [{"role": "user", "content": "Hello"}])


def test_leaving_a_stream_early_closes_it(server):
    from loraplex.client import Client

    server.set_default("/generate_stream", Reply(events=[*STREAM_EVENTS[:1], 2.0, *STREAM_EVENTS[1:]]))
    with Client(server.url) as client:
        for event in client.generate_stream("Hi"):
            assert event.token.text == "Hello"
            break
    assert server.count("/generate_stream") == 1
