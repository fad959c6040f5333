"""The client against the real loraplex server (a tiny random llama, in-process uvicorn)."""

from __future__ import annotations

import asyncio
import json

import pytest
from model_factory import build_model
from server_harness import serve

from loraplex.client import (
    AdapterNotFoundError,
    AsyncClient,
    Client,
    GenerateResponse,
    StreamResponse,
    ValidationError,
)
from loraplex.server.config import EngineConfig

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m.role }}: {{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant:{% endif %}"
)


@pytest.fixture(scope="module")
def real_server(tmp_path_factory):
    model = build_model(tmp_path_factory.mktemp("client-model") / "llama", "llama")
    config_path = model / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config["chat_template"] = CHAT_TEMPLATE
    config_path.write_text(json.dumps(tokenizer_config))
    with serve(EngineConfig(model_id=str(model), max_batch_total_tokens=4096)) as running:
        yield running


@pytest.fixture
def client(real_server):
    with Client(real_server.url, max_retries=1, backoff=0.05, timeout=30) as client:
        yield client


def test_generate_with_details(client):
    response = client.generate("The quick brown fox", max_new_tokens=6, ignore_eos_token=True, details=True)
    assert isinstance(response, GenerateResponse)
    details = response.details
    assert details.finish_reason == "length"
    assert details.generated_tokens == len(details.tokens) == 6
    assert details.prompt_tokens > 0
    assert "".join(token.text for token in details.tokens) == response.generated_text
    assert all(token.logprob is not None and token.logprob <= 0 for token in details.tokens)
    assert (response.meta.prompt_tokens, response.meta.generated_tokens) == (details.prompt_tokens, 6)
    assert response.meta.adapter_id is None  # the base model: no x-adapter-id, as LoRAX
    assert response.meta.compute_time == response.meta.total_time >= response.meta.inference_time


def test_generate_stream_tokens_add_up_to_the_final_text(client):
    events = list(
        client.generate_stream("Hello world", max_new_tokens=8, ignore_eos_token=True, details=True)
    )
    assert all(isinstance(event, StreamResponse) for event in events)
    assert [event.final for event in events] == [False] * 7 + [True]
    final = events[-1]
    assert "".join(event.token.text for event in events) == final.generated_text
    assert (final.details.finish_reason, final.details.generated_tokens) == ("length", 8)
    greedy = client.generate("Hello world", max_new_tokens=8, ignore_eos_token=True)
    assert greedy.generated_text == final.generated_text


def test_async_client_against_the_real_server(real_server):
    async def run():
        async with AsyncClient(real_server.url, timeout=30) as client:
            events = [
                e
                async for e in client.generate_stream("Adapters let", max_new_tokens=4, ignore_eos_token=True)
            ]
            whole = await client.generate("Adapters let", max_new_tokens=4, ignore_eos_token=True)
            return events, whole, await client.health()

    events, whole, health = asyncio.run(run())
    assert "".join(e.token.text for e in events) == events[-1].generated_text == whole.generated_text
    assert health.ready


def test_status_routes(client):
    health = client.health()
    assert (health.ready, health.status) == (True, "ready")
    listing = client.adapters()
    assert listing.adapters == []
    assert listing.gpu_slots > 0
    info = client.info()
    assert info.status == "ready"
    assert info.max_total_tokens > 0


def test_a_real_422_is_a_validation_error(client):
    with pytest.raises(ValidationError) as raised:
        client.generate("Hello", max_new_tokens=0)
    assert raised.value.status_code == 422
    assert raised.value.error_type == "validation"
    assert "max_new_tokens" in raised.value.message
    with pytest.raises(ValidationError):
        list(client.generate_stream("Hello", top_p=5.0))


def test_an_unknown_adapter_is_adapter_not_found(client):
    with pytest.raises(AdapterNotFoundError) as raised:
        client.generate("Hello", adapter_id="no-such-adapter", max_new_tokens=2)
    assert raised.value.status_code == 424
    assert "no-such-adapter" in raised.value.message


def test_chat_with_the_base_model(client):
    completion = client.chat([{"role": "user", "content": "Hello"}], max_tokens=4)
    assert completion.finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens <= 4
    assert (
        completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    chunks = list(client.chat_stream([{"role": "user", "content": "Hello"}], max_tokens=4, temperature=0))
    greedy = client.chat([{"role": "user", "content": "Hello"}], max_tokens=4, temperature=0)
    assert "".join(chunk.text for chunk in chunks) == greedy.text
