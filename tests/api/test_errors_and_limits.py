"""Every error a client can cause: status, LoRAX's {"error", "error_type"} body, and nothing leaks."""

import asyncio
import itertools
import logging
import re
import time

import httpx
import pytest
from server_harness import post_json, serve

from loraplex.server.config import EngineConfig

from .sse import parse_events

CASES = [
    ({"inputs": ""}, "`inputs` cannot be empty"),
    ({"inputs": "hi", "parameters": {"temperature": 0}}, "`temperature` must be strictly positive"),
    ({"inputs": "hi", "parameters": {"temperature": -1}}, "`temperature` must be strictly positive"),
    (
        {"inputs": "hi", "parameters": {"temperature": float("nan")}},
        "`temperature` must be strictly positive",
    ),
    (
        {"inputs": "hi", "parameters": {"temperature": float("inf")}},
        "`temperature` must be strictly positive",
    ),
    (
        {"inputs": "hi", "parameters": {"repetition_penalty": float("nan")}},
        "`repetition_penalty` must be strictly positive",
    ),
    ({"inputs": "hi \ud800 there"}, "`inputs` is not valid Unicode: surrogates not allowed at 3"),
    (
        {"inputs": "hi", "parameters": {"repetition_penalty": 0}},
        "`repetition_penalty` must be strictly positive",
    ),
    ({"inputs": "hi", "parameters": {"top_k": 0}}, "`top_k` must be strictly positive"),
    ({"inputs": "hi", "parameters": {"top_p": 1.5}}, "`top_p` must be > 0.0 and <= 1.0"),
    ({"inputs": "hi", "parameters": {"top_p": 0}}, "`top_p` must be > 0.0 and <= 1.0"),
    ({"inputs": "hi", "parameters": {"typical_p": 2}}, "`typical_p` must be > 0.0 and <= 1.0"),
    ({"inputs": "hi", "parameters": {"max_new_tokens": 0}}, "`max_new_tokens` must be strictly positive"),
    ({"inputs": "hi", "parameters": {"truncate": 0}}, "`truncate` must be strictly positive"),
    ({"inputs": "hi", "parameters": {"seed": -3}}, "`seed` must be an integer in [0, 2^64)"),
    (
        {"inputs": "hi", "parameters": {"frequency_penalty": 3}},
        "`frequency_penalty` must be >= -2.0 and <= 2.0",
    ),
    (
        {"inputs": "hi", "parameters": {"stop": ["a", "b", "c", "d", "e"]}},
        "`stop` supports up to 4 stop sequences. Given: 5",
    ),
    ({"inputs": "hi", "parameters": {"watermark": True}}, "`watermark` is not supported by this server yet"),
    (
        {"inputs": "hi", "parameters": {"response_format": {"type": "json_object"}}},
        "`response_format` is not supported by this server yet",
    ),
    (
        {"inputs": "hi", "parameters": {"merged_adapters": {"ids": ["a"]}}},
        "`merged_adapters` is not supported by this server yet",
    ),
    (
        {"inputs": "hi", "parameters": {"grammar": {"type": "json", "value": {}}}},
        "`grammar` is not supported by this server yet",
    ),
    (
        {"inputs": "hi", "parameters": {"top_n_tokens": 2}},
        "`top_n_tokens` is not supported by this server yet",
    ),
    ({"inputs": "hi " * 80}, "`inputs` must have less than 64 tokens. Given: "),
    (
        {"inputs": "hi", "parameters": {"max_new_tokens": 300}},
        "`inputs` tokens + `max_new_tokens` must be <= 256. Given: 2 `inputs` tokens and 300 `max_new_tokens`",
    ),
    (
        {"inputs": "hi", "parameters": {"temperature": "hot"}},
        "parameters.temperature: Input should be a valid number",
    ),
    ({"parameters": {}}, "inputs: Field required"),
]


@pytest.mark.parametrize("route", ["/generate", "/generate_stream", "/"])
@pytest.mark.parametrize(("body", "message"), CASES, ids=[c[1][:40] for c in CASES])
def test_validation_errors_are_422_before_any_stream(server, route, body, message):
    response = post_json(server.url + route, body)
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/json")
    payload = response.json()
    assert set(payload) == {"error", "error_type"}
    assert payload["error_type"] == "validation"
    assert payload["error"].startswith(message)


def test_tokenize_refuses_a_lone_surrogate(server):
    response = post_json(server.url + "/tokenize", {"inputs": "\udfff"})
    assert response.status_code == 422
    assert response.json() == {
        "error": "`inputs` is not valid Unicode: surrogates not allowed at 0",
        "error_type": "validation",
    }


def test_top_k_past_the_vocabulary_keeps_every_token(server):
    """top_k >= the vocabulary filters nothing, up to values past int64; the others in the batch go on."""

    def body(top_k):
        parameters = {"max_new_tokens": 12, "do_sample": True, "seed": 5, "ignore_eos_token": True}
        if top_k is not None:
            parameters["top_k"] = top_k
        return {"inputs": "Hello world", "parameters": parameters}

    async def together():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            cases = [None, 10**6, 2**63, 2**70, None]
            return await asyncio.gather(*(client.post("/generate", json=body(k)) for k in cases))

    responses = asyncio.run(together())
    assert [r.status_code for r in responses] == [200] * 5, [r.text for r in responses]
    assert len({r.json()["generated_text"] for r in responses}) == 1
    server.wait_idle()


def test_malformed_json_is_422(server):
    response = httpx.post(
        server.url + "/generate", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422 and response.json()["error_type"] == "validation"


def test_server_keeps_serving_after_errors(server):
    httpx.post(server.url + "/generate", json={"inputs": ""}, timeout=30)
    ok = httpx.post(
        server.url + "/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 2}}, timeout=30
    )
    assert ok.status_code == 200
    server.wait_idle()


def cancelled_count(url: str) -> float:
    """loraplex_requests_total for base-model requests the client left (0 before the first)."""
    text = httpx.get(url + "/metrics").text
    match = re.search(r'^loraplex_requests_total\{adapter="base",outcome="cancelled"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_client_disconnect_mid_stream_aborts_and_frees_blocks(server):
    engine = server.engine
    aborted = engine.num_aborted
    cancelled = cancelled_count(server.url)
    body = {"inputs": "Hello world", "parameters": {"max_new_tokens": 180, "ignore_eos_token": True}}
    with httpx.stream("POST", server.url + "/generate_stream", json=body, timeout=30) as response:
        lines = response.iter_lines()
        events = parse_events(itertools.islice(lines, 6))
        assert events, "no event before disconnect"
        assert engine.num_running == 1 and engine.allocator.num_free_blocks < engine.allocator.num_blocks
    server.wait_idle()
    assert engine.num_aborted == aborted + 1
    assert cancelled_count(server.url) == cancelled + 1


def test_client_disconnect_on_generate_aborts(server, monkeypatch, caplog):
    engine = server.engine
    run_step = engine.runner.run

    def slow_step(batch):  # 190 steps take >= 1.9 s: the hang-up is always seen before the end
        time.sleep(0.01)
        return run_step(batch)

    monkeypatch.setattr(engine.runner, "run", slow_step)
    aborted = engine.num_aborted
    cancelled = cancelled_count(server.url)
    body = {"inputs": "Hello world", "parameters": {"max_new_tokens": 190, "ignore_eos_token": True}}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/generate", json=body, timeout=0.3)
    server.wait_idle(timeout=15)  # fails unless every KV block came back
    assert engine.num_aborted == aborted + 1
    # A hang-up is the client's doing: no traceback in the server's log.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert cancelled_count(server.url) == cancelled + 1  # once, as the 499 it is


def test_burst_over_max_concurrent_requests_gets_429(llama_dir):
    config = EngineConfig(model_id=str(llama_dir), max_batch_total_tokens=8192, max_total_tokens=256)
    with serve(config, max_concurrent_requests=3) as running:

        async def burst():
            body = {"inputs": "Hello", "parameters": {"max_new_tokens": 120, "ignore_eos_token": True}}
            async with httpx.AsyncClient(base_url=running.url, timeout=60) as client:
                return await asyncio.gather(*(client.post("/generate", json=body) for _ in range(10)))

        responses = asyncio.run(burst())
        codes = sorted(r.status_code for r in responses)
        assert codes.count(200) >= 3 and codes.count(429) >= 1 and set(codes) <= {200, 429}
        refused = next(r for r in responses if r.status_code == 429)
        assert refused.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
        assert refused.headers["retry-after"] == "1"
        running.wait_idle()
        time.sleep(0.1)
        after = httpx.post(
            running.url + "/generate", json={"inputs": "hi", "parameters": {"max_new_tokens": 2}}
        )
        assert after.status_code == 200
