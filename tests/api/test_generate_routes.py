"""/generate, /generate_stream and / against a real server, checked against transformers' greedy tokens."""

import asyncio

import httpx
from engine.reference import reference_greedy
from server_harness import serve

from loraplex.server.config import EngineConfig

from .sse import parse_events

PROMPT = "The quick brown fox"


def generate(server, inputs=PROMPT, **parameters):
    return httpx.post(server.url + "/generate", json={"inputs": inputs, "parameters": parameters}, timeout=30)


def test_generate_returns_transformers_greedy_tokens(server, llama_reference):
    response = generate(server, max_new_tokens=12, details=True, ignore_eos_token=True)
    assert response.status_code == 200
    body = response.json()
    details = body["details"]
    prompt_ids = server.engine.tokenizer(PROMPT).input_ids
    ids = [t["id"] for t in details["tokens"]]
    assert ids == reference_greedy(llama_reference, prompt_ids, 12)
    assert details["finish_reason"] == "length"
    assert details["prompt_tokens"] == len(prompt_ids) and details["generated_tokens"] == 12
    assert details["seed"] is None  # greedy, as LoRAX reports
    # LoRAX's fields in LoRAX's order (its current client requires `skipped` and `skipped_tokens`)
    assert list(details) == [
        "finish_reason", "prompt_tokens", "generated_tokens", "skipped_tokens", "seed", "prefill", "tokens"
    ]  # fmt: skip
    assert details["skipped_tokens"] == 0
    assert all(list(t) == ["id", "text", "logprob", "special", "skipped"] for t in details["tokens"])
    assert body["generated_text"] == server.engine.tokenizer.decode(ids)
    assert response.headers["x-generated-tokens"] == "12"
    assert response.headers["x-prompt-tokens"] == str(len(prompt_ids))


def test_generate_without_details_has_text_only(server):
    body = generate(server, max_new_tokens=3).json()
    assert set(body) == {"generated_text"}


def test_stream_events_match_generate(server):
    once = generate(server, max_new_tokens=10, details=True, ignore_eos_token=True).json()
    with httpx.stream(
        "POST",
        server.url + "/generate_stream",
        json={
            "inputs": PROMPT,
            "parameters": {"max_new_tokens": 10, "details": True, "ignore_eos_token": True},
        },
        timeout=30,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = parse_events(response.iter_lines())
    assert len(events) == 10
    assert [e["token"] for e in events] == once["details"]["tokens"]
    assert all(e["generated_text"] is None and e["details"] is None for e in events[:-1])
    last = events[-1]
    assert last["generated_text"] == once["generated_text"] == "".join(e["token"]["text"] for e in events)
    prompt_tokens = once["details"]["prompt_tokens"]
    assert last["details"] == {
        "finish_reason": "length",
        "prompt_tokens": prompt_tokens,
        "generated_tokens": 10,
        "seed": None,
    }


def test_compat_route_picks_by_stream_field(server):
    plain = httpx.post(
        server.url + "/", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 4}}, timeout=30
    )
    assert plain.status_code == 200 and isinstance(plain.json(), list) and "generated_text" in plain.json()[0]
    streamed = httpx.post(
        server.url + "/",
        json={"inputs": PROMPT, "stream": True, "parameters": {"max_new_tokens": 4}},
        timeout=30,
    )
    events = parse_events(streamed.text.splitlines())
    assert len(events) == 4 and events[-1]["generated_text"] == plain.json()[0]["generated_text"]


def test_seeded_sampling_over_http_is_reproducible(server):
    params = dict(max_new_tokens=16, do_sample=True, temperature=0.9, top_p=0.95, seed=7, details=True)
    first, second = generate(server, **params).json(), generate(server, **params).json()
    assert first["generated_text"] == second["generated_text"]
    assert first["details"]["seed"] == 7


def test_return_full_text_and_truncate(server):
    full = generate(server, max_new_tokens=3, return_full_text=True).json()["generated_text"]
    assert full.startswith(PROMPT)
    truncated = generate(server, max_new_tokens=3, truncate=2, details=True).json()
    assert truncated["details"]["prompt_tokens"] == 2


def test_concurrent_requests_are_batched_and_each_correct(server, llama_reference):
    prompts = ["Hello world", "Paged attention", "Adapters let", "0123", "The lazy dog", "How are you"]

    async def one(client, prompt):
        r = await client.post(
            "/generate",
            json={
                "inputs": prompt,
                "parameters": {"max_new_tokens": 16, "details": True, "ignore_eos_token": True},
            },
        )
        return [t["id"] for t in r.json()["details"]["tokens"]]

    async def all_at_once():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(*(one(client, p) for p in prompts))

    steps_before = server.engine.num_steps
    results = asyncio.run(all_at_once())
    steps = server.engine.num_steps - steps_before
    assert steps < len(prompts) * 16, "requests were not batched together"
    for prompt, ids in zip(prompts, results, strict=True):
        assert ids == reference_greedy(llama_reference, server.engine.tokenizer(prompt).input_ids, 16)


def test_info_answers_every_tgi_and_lorax_field(server):
    """TGI's and LoRAX's /info fields, with this server's limits where it has them and null where it has
    no such thing (the conftest server: inputs 64, total 256, KV cache 8192 tokens, 64 in flight)."""
    info = httpx.get(server.url + "/info").json()
    assert info["model_id"] == server.engine.info.model_id and info["router"] == "loraplex"
    assert (info["model_dtype"], info["model_device_type"]) == ("float32", "cpu")
    limits = ("max_input_length", "max_input_tokens", "max_total_tokens", "max_batch_total_tokens")
    assert [info[name] for name in limits] == [64, 64, 256, 8192]
    assert info["max_concurrent_requests"] == 64 and info["max_batch_size"] == 256
    assert (info["max_best_of"], info["max_stop_sequences"]) == (4, 4)
    assert isinstance(info["version"], str) and info["version"]
    absent = (
        "model_sha", "model_pipeline_tag", "waiting_served_ratio", "max_waiting_tokens",
        "validation_workers", "max_client_batch_size", "sha", "docker_label", "request_logger_url",
        "eager_prefill",
    )  # fmt: skip
    assert {name: info[name] for name in absent} == dict.fromkeys(absent)
    assert info["status"] == "ready" and info["architecture"] == "LlamaForCausalLM"


def test_outputs_held_back_a_step_as_on_cuda_stream_the_same_tokens(llama_dir, llama_reference):
    """With each step's outputs handed over once the next forward is queued (the CUDA behaviour),
    concurrent streams and plain requests get transformers' tokens, a stop sequence still ends its
    stream, and every KV block comes back."""
    config = EngineConfig(model_id=str(llama_dir), max_batch_total_tokens=4096, dtype="float32")
    prompts = ["Hello world", "Paged attention", "Adapters let", "0123"]
    with serve(config) as running:
        running.engine.defer_delivery = True
        body = {"max_new_tokens": 12, "details": True, "ignore_eos_token": True}

        async def streamed(client, prompt):
            async with client.stream(
                "POST", "/generate_stream", json={"inputs": prompt, "parameters": body}
            ) as response:
                lines = [line async for line in response.aiter_lines()]
            return [e["token"]["id"] for e in parse_events(iter(lines))]

        async def plain(client, prompt):
            r = await client.post("/generate", json={"inputs": prompt, "parameters": body})
            return [t["id"] for t in r.json()["details"]["tokens"]]

        async def all_at_once():
            async with httpx.AsyncClient(base_url=running.url, timeout=60) as client:
                return await asyncio.gather(
                    *(streamed(client, p) for p in prompts), *(plain(client, p) for p in prompts)
                )

        results = asyncio.run(all_at_once())
        for prompt, ids in zip(prompts * 2, results, strict=True):
            assert ids == reference_greedy(llama_reference, running.engine.tokenizer(prompt).input_ids, 12)
        full = generate(running, max_new_tokens=12, ignore_eos_token=True).json()["generated_text"]
        stop = full[4:7]
        cut = generate(running, max_new_tokens=12, ignore_eos_token=True, stop=[stop], details=True).json()
        assert cut["details"]["finish_reason"] == "stop_sequence"
        assert (
            stop in cut["generated_text"]
            and full.startswith(cut["generated_text"])
            and cut["generated_text"] != full
        )
        running.wait_idle()
        assert running.engine._pending == []
