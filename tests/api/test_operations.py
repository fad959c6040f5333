"""Operations: /metrics after a known workload, auth, rate limits, request timeouts, slow starts."""

import asyncio
import re
import threading
import time

import httpx
import pytest
from adapter_factory import build_adapter
from server_harness import serve

from loraplex.router.auth import RateLimiter
from loraplex.router.errors import ApiError
from loraplex.server.config import EngineConfig
from loraplex.server.engine import Engine


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}{re.escape(labels)} (\S+)$" if labels else rf"^{re.escape(name)} (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"{name}{labels} not in metrics"
    return float(match.group(1))


def test_metrics_after_a_known_workload(llama_dir):
    config = EngineConfig(model_id=str(llama_dir), max_batch_total_tokens=4096)
    with serve(config) as running:
        url = running.url
        prompt_tokens = len(running.engine.tokenizer("Hello world").input_ids)
        body = {"inputs": "Hello world", "parameters": {"max_new_tokens": 5, "ignore_eos_token": True}}
        for _ in range(3):
            assert httpx.post(url + "/generate", json=body).status_code == 200
        with httpx.stream("POST", url + "/generate_stream", json=body) as response:
            list(response.iter_lines())
        for _ in range(2):
            assert httpx.post(url + "/generate", json={"inputs": ""}).status_code == 422
        text = httpx.get(url + "/metrics").text
    assert metric(text, "loraplex_requests_total", '{adapter="base",outcome="success"}') == 4
    assert metric(text, "loraplex_requests_total", '{adapter="base",outcome="validation"}') == 2
    assert metric(text, "loraplex_generated_tokens_total", '{adapter="base"}') == 20
    assert metric(text, "loraplex_prompt_tokens_total", '{adapter="base"}') == 4 * prompt_tokens
    assert metric(text, "loraplex_request_duration_seconds_count") == 4
    assert metric(text, "loraplex_time_to_first_token_seconds_count") == 4
    assert metric(text, "loraplex_request_queue_duration_seconds_count") == 4
    assert metric(text, "loraplex_inter_token_latency_seconds_count") == 4 * 4
    assert metric(text, "loraplex_running_requests") == 0 and metric(text, "loraplex_waiting_requests") == 0
    assert metric(text, "loraplex_kv_cache_usage_ratio") == 0
    assert metric(text, "loraplex_kv_cache_blocks_capacity") == 256
    assert metric(text, "loraplex_kv_cache_blocks_used") == 0
    gauges = re.findall(r"^# TYPE (\S+) gauge$", text, re.MULTILINE)
    assert gauges and not [name for name in gauges if name.endswith("_total")]  # the counters' suffix
    assert metric(text, "loraplex_engine_steps_total") >= 5
    assert metric(text, "loraplex_adapters_resident", '{tier="gpu"}') == 0
    assert metric(text, "loraplex_batch_size") == 0  # idle
    # Queue time ends when a request is admitted, before its prefill: on an idle server, well under TTFT.
    queued = metric(text, "loraplex_request_queue_duration_seconds_sum")
    assert queued < metric(text, "loraplex_time_to_first_token_seconds_sum") / 2


def test_adapter_labels_are_capped(llama_dir, tmp_path):
    from adapter_factory import build_adapter

    for i in range(3):
        build_adapter(llama_dir, tmp_path / f"a{i}", seed=i, r=2, target_modules=["q_proj"])
    config = EngineConfig(model_id=str(llama_dir), max_batch_total_tokens=4096, adapter_dirs=(str(tmp_path),))
    with serve(config, adapter_label_limit=2) as running:
        for made_up in ("typo-1", "x" * 300):  # ids that name nothing take no label
            body = {"inputs": "Hi", "parameters": {"max_new_tokens": 1, "adapter_id": made_up}}
            assert httpx.post(running.url + "/generate", json=body).status_code in (422, 424)
        for i in [0, 1, 2, 0]:
            body = {"inputs": "Hi", "parameters": {"max_new_tokens": 1, "adapter_id": f"a{i}"}}
            assert httpx.post(running.url + "/generate", json=body).status_code == 200
        text = httpx.get(running.url + "/metrics").text
    assert metric(text, "loraplex_requests_total", '{adapter="unresolved",outcome="adapter_not_found"}') == 1
    assert metric(text, "loraplex_requests_total", '{adapter="unresolved",outcome="validation"}') == 1
    assert "typo-1" not in text and "x" * 300 not in text
    # Three cold loads (misses); only the second request for a0 found it in a slot (a hit).
    assert metric(text, "loraplex_adapter_cache_misses_total") == 3
    assert metric(text, "loraplex_adapter_cache_hits_total") == 1
    assert metric(text, "loraplex_requests_total", '{adapter="a0",outcome="success"}') == 2
    assert metric(text, "loraplex_requests_total", '{adapter="a1",outcome="success"}') == 1
    assert metric(text, "loraplex_requests_total", '{adapter="other",outcome="success"}') == 1
    assert metric(text, "loraplex_adapter_loads_total") == 3
    assert metric(text, "loraplex_adapters_resident", '{tier="gpu"}') == 3


def test_api_keys(llama_dir):
    config = EngineConfig(model_id=str(llama_dir), max_batch_total_tokens=4096)
    with serve(config, api_keys=frozenset({"k1", "k2"})) as running:
        url = running.url
        body = {"inputs": "Hi", "parameters": {"max_new_tokens": 1}}
        assert httpx.get(url + "/health").status_code == 200
        assert httpx.head(url + "/health").status_code == 200  # load balancers' probes
        for path in ("/info", "/metrics", "/adapters", "/v1/models"):
            response = httpx.get(url + path)
            assert response.status_code == 401 and response.json()["error_type"] == "authentication"
        assert httpx.post(url + "/generate", json=body).status_code == 401
        wrong = httpx.post(url + "/generate", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        for key in ("k1", "k2"):
            ok = httpx.post(url + "/generate", json=body, headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200
    with serve(config, api_keys=frozenset({"k1"}), metrics_without_auth=True) as running:
        assert httpx.get(running.url + "/metrics").status_code == 200
        assert httpx.get(running.url + "/info").status_code == 401


def test_rate_limit_answers_429_with_retry_after(llama_dir):
    config = EngineConfig(model_id=str(llama_dir), max_batch_total_tokens=4096)
    with serve(config, api_keys=frozenset({"a", "b"}), rate_limit_requests=2) as running:
        body = {"inputs": "Hi", "parameters": {"max_new_tokens": 1}}
        as_a = {"Authorization": "Bearer a"}
        codes = [httpx.post(running.url + "/generate", json=body, headers=as_a).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        refused = httpx.post(running.url + "/generate", json=body, headers=as_a)
        assert (
            refused.json()["error_type"] == "rate_limited" and 1 <= int(refused.headers["retry-after"]) <= 60
        )
        other_key = httpx.post(running.url + "/generate", json=body, headers={"Authorization": "Bearer b"})
        assert other_key.status_code == 200


def test_token_rate_limit(llama_dir):
    config = EngineConfig(model_id=str(llama_dir), max_batch_total_tokens=4096)
    with serve(config, rate_limit_tokens=30) as running:
        body = {"inputs": "Hello world", "parameters": {"max_new_tokens": 30, "ignore_eos_token": True}}
        assert httpx.post(running.url + "/generate", json=body).status_code == 200
        refused = httpx.post(running.url + "/generate", json=body)
        assert refused.status_code == 429 and "tokens per minute" in refused.json()["error"]
        assert "retry-after" in refused.headers


def test_token_rate_limit_holds_against_a_burst(llama_dir):
    """Six requests at once, each able to use the whole limit: the first reserves it, the others get 429
    (all six ran, as none had been charged yet when the others came)."""
    config = EngineConfig(model_id=str(llama_dir), max_batch_total_tokens=4096)
    with serve(config, rate_limit_tokens=30) as running:
        run = running.engine.runner.run

        def slower(batch):  # 30 steps: the first request is still running when the others come
            time.sleep(0.02)
            return run(batch)

        running.engine.runner.run = slower
        body = {"inputs": "Hello", "parameters": {"max_new_tokens": 30, "ignore_eos_token": True}}

        async def burst():
            async with httpx.AsyncClient(base_url=running.url, timeout=30) as client:
                return await asyncio.gather(*(client.post("/generate", json=body) for _ in range(6)))

        codes = sorted(r.status_code for r in asyncio.run(burst()))
        assert codes == [200, 429, 429, 429, 429, 429]
        running.wait_idle()


def test_rate_limiter_reservations_come_back_when_requests_end():
    limiter = RateLimiter(None, 100)
    limiter.check("k", 50)
    limiter.check("k", 50)  # 100 with the first: it fits
    with pytest.raises(ApiError) as refused:
        limiter.check("k", 1)  # 101 would not
    assert refused.value.status == 429 and refused.value.headers == {"Retry-After": "1"}
    limiter.settle("k", 50, 5)  # 50 reserved and 5 charged
    limiter.check("k", 45)
    with pytest.raises(ApiError):
        limiter.check("k", 1)
    limiter.settle("k", 50, 0)
    limiter.settle("k", 45, 10)
    assert limiter._reserved == {} and sum(n for _, n in limiter._tokens["k"]) == 15
    with pytest.raises(ApiError):
        limiter.check("k", 86)  # 15 charged: 86 more would pass the limit
    limiter.check("k", 85)
    limiter.check("other", 1000)  # larger than the limit, with nothing else counted: it runs
    with pytest.raises(ApiError):
        limiter.check("other", 1)


def test_token_rate_limit_counts_openai_streams_without_usage(llama_dir):
    """An OpenAI stream is charged its tokens whether or not it asked for `usage` (it was charged 0)."""
    config = EngineConfig(model_id=str(llama_dir), max_batch_total_tokens=4096)
    with serve(config, rate_limit_tokens=10) as running:
        body = {"model": "", "prompt": "Hello", "max_tokens": 20, "stream": True, "ignore_eos_token": True}
        with httpx.stream("POST", running.url + "/v1/completions", json=body, timeout=30) as response:
            assert response.status_code == 200 and list(response.iter_lines())
        refused = httpx.post(running.url + "/v1/completions", json=body, timeout=30)
        assert refused.status_code == 429 and "tokens per minute" in refused.json()["error"]


def test_token_rate_limit_counts_requests_that_timed_out(llama_dir):
    """The tokens a request made the engine compute count, also when it ended in a 504 (it counted 0)."""
    config = EngineConfig(model_id=str(llama_dir), max_batch_total_tokens=4096, max_total_tokens=512)
    with serve(config, rate_limit_tokens=10, request_timeout=0.3) as running:
        run = running.engine.runner.run

        def slower(batch):  # about 25 tokens before the timeout
            time.sleep(0.01)
            return run(batch)

        running.engine.runner.run = slower
        body = {"inputs": "Hi", "parameters": {"max_new_tokens": 500, "ignore_eos_token": True}}
        assert httpx.post(running.url + "/generate", json=body, timeout=30).status_code == 504
        refused = httpx.post(running.url + "/generate", json=body, timeout=30)
        assert refused.status_code == 429 and "tokens per minute" in refused.json()["error"]
        running.wait_idle()


def test_request_timeout_frees_blocks_and_says_why(llama_dir):
    config = EngineConfig(model_id=str(llama_dir), max_batch_total_tokens=4096, max_total_tokens=512)
    with serve(config, request_timeout=0.3) as running:
        body = {"inputs": "Hi", "parameters": {"max_new_tokens": 500, "ignore_eos_token": True}}
        slow = running.engine.runner.run

        def slower(batch):
            time.sleep(0.01)
            return slow(batch)

        running.engine.runner.run = slower
        response = httpx.post(running.url + "/generate", json=body, timeout=30)
        assert response.status_code == 504
        assert response.json() == {"error": "request timed out after 0.3 s", "error_type": "request_timeout"}
        running.wait_idle()
        stream = httpx.post(running.url + "/generate_stream", json=body, timeout=30)
        last = stream.text.strip().splitlines()[-1]
        assert last == 'data:{"error":"request timed out after 0.3 s","error_type":"request_timeout"}'
        running.wait_idle()
        assert running.engine.num_aborted == 2


def test_health_is_503_while_initializing(llama_dir):
    config = EngineConfig(model_id=str(llama_dir), max_batch_total_tokens=4096)
    release = threading.Event()

    def slow_engine():
        release.wait(timeout=30)
        return Engine(config)

    with serve(None, engine_factory=slow_engine, wait_healthy=False) as running:
        response = httpx.get(running.url + "/health")
        assert response.status_code == 503 and response.json() == {"status": "initializing"}
        assert httpx.get(running.url + "/info").json()["status"] == "initializing"
        early = httpx.post(running.url + "/generate", json={"inputs": "hi"})
        assert early.status_code == 503 and early.json()["error_type"] == "unavailable"
        release.set()
        deadline = time.monotonic() + 30
        while httpx.get(running.url + "/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert httpx.get(running.url + "/info").json()["status"] == "ready"


def test_concurrency_429_is_counted(llama_dir):
    config = EngineConfig(model_id=str(llama_dir), max_batch_total_tokens=4096, max_total_tokens=256)
    with serve(config, max_concurrent_requests=1) as running:

        async def burst():
            body = {"inputs": "Hi", "parameters": {"max_new_tokens": 100, "ignore_eos_token": True}}
            async with httpx.AsyncClient(base_url=running.url, timeout=60) as client:
                return await asyncio.gather(*(client.post("/generate", json=body) for _ in range(4)))

        codes = [r.status_code for r in asyncio.run(burst())]
        refused = codes.count(429)
        assert refused >= 1
        text = httpx.get(running.url + "/metrics").text
        assert metric(text, "loraplex_requests_total", '{adapter="base",outcome="overloaded"}') == refused


@pytest.mark.parametrize("route", ["/generate", "/v1/completions"])
def test_engine_errors_do_not_stop_the_server(llama_dir, route):
    config = EngineConfig(model_id=str(llama_dir), max_batch_total_tokens=4096)
    with serve(config) as running:
        run = running.engine.runner.run
        calls = {"n": 0}

        def failing_once(batch):
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("injected failure")
            return run(batch)

        running.engine.runner.run = failing_once
        body = (
            {"inputs": "Hi", "parameters": {"max_new_tokens": 2}}
            if route == "/generate"
            else {"model": "", "prompt": "Hi", "max_tokens": 2}
        )
        failed = httpx.post(running.url + route, json=body)
        assert failed.status_code == 424 and failed.json()["error_type"] == "generation"
        assert "injected failure" in failed.json()["error"]
        assert httpx.post(running.url + route, json=body).status_code == 200
        running.wait_idle()


def test_adapter_names_in_any_script_are_served_and_give_back_their_place(llama_dir, tmp_path):
    """An adapter named in Cyrillic: its x-adapter-id header is percent-encoded UTF-8 (a Latin-1-only
    header made every stream of it a 500 that kept its concurrency place and tokens for good)."""
    build_adapter(llama_dir, tmp_path / "модель", seed=3, r=4, target_modules=["q_proj"])
    config = EngineConfig(model_id=str(llama_dir), max_batch_total_tokens=4096, adapter_dirs=(str(tmp_path),))
    with serve(config, max_concurrent_requests=2, rate_limit_tokens=10_000) as running:
        native = {"inputs": "Hi", "parameters": {"adapter_id": "модель", "max_new_tokens": 2}}
        openai = {"model": "модель", "prompt": "Hi", "max_tokens": 2}
        calls = [
            ("/generate", native),
            ("/generate_stream", native),
            ("/v1/completions", openai),
            ("/v1/completions", {**openai, "stream": True}),
        ]
        for _ in range(3):  # more than the two places: each request gives its place back
            for route, body in calls:
                response = httpx.post(running.url + route, json=body, timeout=30)
                assert response.status_code == 200, response.text
                assert response.headers["x-adapter-id"] == "%D0%BC%D0%BE%D0%B4%D0%B5%D0%BB%D1%8C"
        running.wait_idle()
        assert running.app.state.client.in_flight == 0
        assert running.app.state.generator.limiter._reserved == {}


def test_one_failed_sequence_ends_its_siblings(llama_dir):
    """n=2 completions whose first sequence breaks every step it is in: the 424 comes back, and the other
    sequence is aborted then, not left generating with its place already given back."""
    config = EngineConfig(model_id=str(llama_dir), max_batch_total_tokens=4096)
    with serve(config) as running:
        engine = running.engine
        run, first = engine.runner.run, []

        def failing_first_sequence(batch):
            first[:] = first or [batch.rows[0].request.request_id]
            if any(row.request.request_id == first[0] for row in batch.rows):
                raise RuntimeError("injected failure")
            time.sleep(0.01)  # 300 steps: seconds, so a sibling left running is still running below
            return run(batch)

        engine.runner.run = failing_first_sequence
        aborted = engine.num_aborted
        body = {"model": "", "prompt": "Hi", "max_tokens": 300, "n": 2, "ignore_eos": True}
        failed = httpx.post(running.url + "/v1/completions", json=body, timeout=30)
        assert failed.status_code == 424 and "injected failure" in failed.json()["error"]
        deadline = time.monotonic() + 1.0
        while engine.num_running and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.num_running == 0
        assert engine.num_aborted == aborted + 1
        running.wait_idle()


def test_a_request_that_breaks_the_step_fails_alone_over_http(llama_dir):
    """Five concurrent generations, one of which makes every step it is in raise: it gets a 424, the
    others their full 200s, and the engine stays up."""
    config = EngineConfig(model_id=str(llama_dir), max_batch_total_tokens=4096)
    with serve(config) as running:
        engine = running.engine
        poison = engine.tokenizer("poison pill").input_ids
        run = engine.runner.run

        def failing_with_poison(batch):
            if any(row.request.prompt_token_ids == poison for row in batch.rows):
                raise RuntimeError("injected failure")
            return run(batch)

        engine.runner.run = failing_with_poison

        async def together():
            async with httpx.AsyncClient(base_url=running.url, timeout=60) as client:
                bodies = [
                    {
                        "inputs": text,
                        "parameters": {"max_new_tokens": 12, "ignore_eos_token": True, "details": True},
                    }
                    for text in ("Hello", "poison pill", "Hi there", "One two", "Three")
                ]
                return await asyncio.gather(*(client.post("/generate", json=b) for b in bodies))

        responses = asyncio.run(together())
        assert [r.status_code for r in responses] == [200, 424, 200, 200, 200]
        assert "injected failure" in responses[1].json()["error"]
        assert all(r.json()["details"]["generated_tokens"] == 12 for r in responses if r.status_code == 200)
        assert engine.fatal_error is None
        assert httpx.get(running.url + "/health").status_code == 200
        running.wait_idle()


def request_log_lines(caplog, count: int, timeout: float = 10) -> list[dict[str, str]]:
    """The fields of each per-request log line, once there are `count` of them (a left stream's comes
    when the server sees the client leave)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [
            r.getMessage()
            for r in caplog.records
            if r.name == "loraplex.router.generation" and r.levelname == "INFO"
        ]
        if len(lines) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(lines) == count, lines
    assert all(line.startswith("request ") for line in lines), lines
    return [dict(field.split("=", 1) for field in line.split()[1:]) for line in lines]


def test_each_generation_request_is_logged_once_with_its_numbers(llama_dir, tmp_path, caplog):
    from adapter_factory import build_adapter

    caplog.set_level("INFO", logger="loraplex.router.generation")
    build_adapter(llama_dir, tmp_path / "a0", seed=0, r=2, target_modules=["q_proj"])
    config = EngineConfig(model_id=str(llama_dir), max_batch_total_tokens=4096, adapter_dirs=(str(tmp_path),))
    with serve(config) as running:
        url = running.url
        prompt_tokens = len(running.engine.tokenizer("Hello world").input_ids)
        body = {"inputs": "Hello world", "parameters": {"max_new_tokens": 5, "ignore_eos_token": True}}
        assert httpx.post(url + "/generate", json=body).status_code == 200
        completion = {
            "model": "a0",
            "prompt": "Hello world",
            "max_tokens": 3,
            "n": 2,
            "ignore_eos_token": True,
        }
        assert httpx.post(url + "/v1/completions", json=completion).status_code == 200
        long = {"inputs": "Hello world", "parameters": {"max_new_tokens": 400, "ignore_eos_token": True}}
        with httpx.stream("POST", url + "/generate_stream", json=long) as response:
            next(line for line in response.iter_lines() if line.startswith("data:"))
        request_log_lines(caplog, 3)  # the stream's line, once the server saw the client leave
        running.wait_idle()
        run = running.engine.runner.run

        def failing(batch):
            running.engine.runner.run = run
            raise RuntimeError("injected failure")

        running.engine.runner.run = failing
        assert httpx.post(url + "/generate", json=body).status_code == 424
        logged = request_log_lines(caplog, 4)

    ok, choices, left, failed = logged
    assert {k: v for k, v in ok.items() if not k.endswith("_ms") and k != "id"} == {
        "route": "/generate",
        "adapter": "base",
        "prompt_tokens": str(prompt_tokens),
        "generated_tokens": "5",
        "outcome": "ok",
        "finish_reason": "length",
    }
    assert 0 <= int(ok["queue_ms"]) <= int(ok["ttft_ms"]) <= int(ok["total_ms"]) < 60_000
    assert (choices["route"], choices["adapter"], choices["outcome"]) == ("/v1/completions", "a0", "ok")
    assert (choices["prompt_tokens"], choices["generated_tokens"]) == (str(2 * prompt_tokens), "6")
    assert choices["finish_reason"] == "length,length"
    assert (left["route"], left["outcome"], left["finish_reason"], left["queue_ms"]) == (
        "/generate_stream",
        "cancelled",
        "-",
        "-",
    )
    assert 1 <= int(left["generated_tokens"]) < 400 and int(left["ttft_ms"]) <= int(left["total_ms"])
    assert (failed["outcome"], failed["generated_tokens"], failed["ttft_ms"]) == ("generation", "0", "-")
    assert len({line["id"] for line in logged}) == 4 and all(len(line["id"]) == 12 for line in logged)
