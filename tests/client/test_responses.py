"""What the client sends (bodies, auth) and the typed answers it reads back."""

from __future__ import annotations

import pytest

from loraplex.client import ChatMessage, Client, ConflictError, NotFoundError, ResponseDecodeError

from .fake_server import Reply, error

DETAILED = {
    "generated_text": " world",
    "details": {
        "finish_reason": "eos_token",
        "prompt_tokens": 2,
        "generated_tokens": 1,
        "seed": 42,
        "prefill": [{"id": 1, "text": "<s>", "logprob": None}, {"id": 7, "text": "Hi", "logprob": -2.5}],
        "tokens": [
            {
                "id": 9,
                "text": " world",
                "logprob": -0.1,
                "special": False,
                "alternative_tokens": [{"id": 10, "text": " there", "logprob": -2.0}],
            }
        ],
        "best_of_sequences": [
            {
                "generated_text": " you",
                "finish_reason": "length",
                "generated_tokens": 1,
                "seed": 7,
                "tokens": [],
            }
        ],
        "some_future_field": True,
    },
}


def test_generate_sends_lorax_parameters_and_reads_details(call, server):
    server.set_default(
        "/generate", Reply(body=DETAILED, headers={"x-adapter-id": "a", "x-compute-time": "0.25"})
    )
    response = call(
        "generate",
        "Hi",
        adapter_id="a",
        max_new_tokens=5,
        temperature=None,  # None is not sent: the server's default applies
        stop="\n",
        details=True,
        decoder_input_details=True,
        return_k_alternatives=1,
        best_of=2,
        do_sample=True,
        seed=42,
    )
    assert server.hits[0].path == "/generate"
    assert server.hits[0].json == {
        "inputs": "Hi",
        "parameters": {
            "adapter_id": "a",
            "max_new_tokens": 5,
            "stop": ["\n"],
            "details": True,
            "decoder_input_details": True,
            "return_k_alternatives": 1,
            "best_of": 2,
            "do_sample": True,
            "seed": 42,
        },
    }
    details = response.details
    assert (details.finish_reason, details.prompt_tokens, details.generated_tokens, details.seed) == (
        "eos_token",
        2,
        1,
        42,
    )
    assert details.prefill[1].logprob == -2.5
    assert details.tokens[0].alternative_tokens[0].text == " there"
    assert details.best_of_sequences[0].generated_text == " you"
    assert details.some_future_field is True  # unknown fields are kept
    assert response.meta.adapter_id == "a"
    assert response.meta.compute_time == 0.25


def test_generate_without_details_and_the_timing_headers(call, server):
    response = call("generate", "Hi")
    assert response.generated_text == "Hello world"
    assert response.details is None
    assert (response.meta.adapter_id, response.meta.prompt_tokens, response.meta.generated_tokens) == (
        "",
        3,
        2,
    )
    assert response.meta.headers["x-compute-time"] == "0.012"
    assert server.hits[0].json == {"inputs": "Hi", "parameters": {}}


def test_an_unknown_keyword_is_refused_before_sending(call, server):
    with pytest.raises(TypeError, match="max_new_token"):
        call("generate", "Hi", max_new_token=5)
    with pytest.raises(TypeError, match="max_new_tokens"):
        call("chat", [{"role": "user", "content": "Hi"}], max_new_tokens=5)
    assert server.hits == []


def test_chat_names_the_adapter_as_model_and_reads_the_completion(call, server):
    messages = [ChatMessage(role="system", content="Be brief."), {"role": "user", "content": "Hello"}]
    completion = call("chat", messages, adapter_id="my/adapter", max_tokens=8, temperature=0.5, top_k=4)
    assert server.hits[0].path == "/v1/chat/completions"
    assert server.hits[0].json == {
        "model": "my/adapter",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
        "max_tokens": 8,
        "temperature": 0.5,
        "top_k": 4,
        "stream": False,
    }
    assert completion.text == "Hi there"
    assert completion.finish_reason == "stop"
    assert (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
        completion.usage.total_tokens,
    ) == (
        5,
        2,
        7,
    )


def test_chat_with_the_base_model_sends_an_empty_model(call, server):
    call("chat", [{"role": "user", "content": "Hello"}])
    assert server.hits[0].json["model"] == ""


def test_adapters_load_unload_info(call, server):
    listing = call("adapters")
    assert (listing.gpu_slots, listing.cpu_capacity) == (4, 16)
    adapter = listing.adapters[0]
    assert (adapter.adapter_id, adapter.tier, adapter.rank, adapter.status) == ("a", "gpu", 8, "loaded")
    assert adapter.last_used.year == 2026
    assert call("load_adapter", "a", adapter_source="local").tier == "gpu"
    assert server.hits[-1].json == {"adapter_id": "a", "adapter_source": "local"}
    assert call("unload_adapter", "a").tier == "disk"
    assert server.hits[-1].json == {"adapter_id": "a"}
    info = call("info")
    assert (info.status, info.model_id, info.extra_field) == ("ready", "tiny", 7)


def test_unload_conflict_and_not_found(call, server):
    server.script("/adapters/unload", error(409, "adapter 'a' is in use", "adapter_in_use"))
    with pytest.raises(ConflictError, match="in use"):
        call("unload_adapter", "a")
    server.script("/adapters/unload", error(404, "adapter 'b' is not loaded", "adapter_not_loaded"))
    with pytest.raises(NotFoundError):
        call("unload_adapter", "b")


def test_a_malformed_success_answer_is_a_decode_error(call, server):
    server.script("/generate", Reply(body={"text": "no generated_text here"}))
    with pytest.raises(ResponseDecodeError, match="GenerateResponse"):
        call("generate", "Hi")


def test_the_api_key_is_sent_as_a_bearer_token(server):
    with Client(server.url, api_key="s3cret") as client:
        client.health()
    with Client(server.url, headers={"x-team": "blue"}) as client:
        client.health()
    assert server.hits[0].headers["authorization"] == "Bearer s3cret"
    assert "authorization" not in server.hits[1].headers
    assert server.hits[1].headers["x-team"] == "blue"
    assert server.hits[1].headers["user-agent"].startswith("loraplex-client")
