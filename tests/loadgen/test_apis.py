"""The two wire formats of the load generator: request bodies, stream events, and runs over each."""

import json

import httpx
import pytest

from loraplex.loadgen.apis import LORAX, OpenAIApi, StreamEvent, make_api, served_base_model
from loraplex.loadgen.arrivals import Arrivals
from loraplex.loadgen.cli import main
from loraplex.loadgen.dataset import count_tokens, load_dataset
from loraplex.loadgen.runner import run
from loraplex.loadgen.workload import RequestSpec, build_workload

REQUEST = RequestSpec(0, "w5 w6", (5, 6), 7, "my-adapter", 0.0)
BASE_REQUEST = RequestSpec(1, "w5 w6", (5, 6), 3, None, 0.0)


def test_lorax_body_and_events():
    assert LORAX.body(REQUEST) == {
        "inputs": "w5 w6",
        "parameters": {
            "max_new_tokens": 7, "ignore_eos_token": True, "details": True, "adapter_id": "my-adapter"
        },
    }  # fmt: skip
    assert "adapter_id" not in LORAX.body(BASE_REQUEST)["parameters"]
    assert LORAX.parse('{"token": {"id": 3, "text": "a"}, "details": null}') == StreamEvent(token=True)
    final = '{"token": {"id": 4}, "details": {"prompt_tokens": 2, "generated_tokens": 7, "finish_reason": "length"}}'
    assert LORAX.parse(final) == StreamEvent(True, False, None, 2, 7, "length")
    assert LORAX.parse('{"error": "boom", "error_type": "generation"}').error == "generation: boom"


def test_openai_body_and_events():
    api = OpenAIApi("base-model")
    body = api.body(REQUEST)
    assert body["model"] == "my-adapter" and api.body(BASE_REQUEST)["model"] == "base-model"
    assert body["prompt"] == "w5 w6" and body["max_tokens"] == 7 and body["temperature"] == 0
    assert body["stream"] and body["stream_options"] == {"include_usage": True}
    assert body["ignore_eos"] and body["ignore_eos_token"]  # vLLM's name and loraplex/LoRAX's
    chunk = {"choices": [{"index": 0, "text": "", "finish_reason": None}]}
    assert api.parse(json.dumps(chunk)) == StreamEvent(token=True)
    chunk["choices"][0]["finish_reason"] = "length"
    assert api.parse(json.dumps(chunk)).finish_reason == "length"
    usage = {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 7, "total_tokens": 9}}
    assert api.parse(json.dumps(usage)) == StreamEvent(prompt_tokens=2, generated_tokens=7)
    assert api.parse("[DONE]") == StreamEvent(done=True)
    assert api.parse('{"error": "bad", "error_type": "validation"}').error == "validation: bad"
    vllm_error = {"error": {"message": "no such model", "type": "NotFoundError", "code": 404}}
    assert api.parse(json.dumps(vllm_error)).error == "NotFoundError: no such model"


def test_make_api():
    assert make_api("lorax") is LORAX and make_api("openai", "m") == OpenAIApi("m")
    with pytest.raises(ValueError, match="unknown API 'grpc'"):
        make_api("grpc")


def test_count_tokens_reads_vllm_answers_too():
    seen = []

    def vllm(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"count": 3, "max_model_len": 4096, "tokens": [11, 12, 13]})

    with httpx.Client(transport=httpx.MockTransport(vllm)) as client:
        assert count_tokens(client, "http://vllm", "hello there") == ([11, 12, 13], 4096)
    assert seen == [{"inputs": "hello there", "prompt": "hello there"}]


def test_openai_runs_match_native_runs_token_for_token(server, two_adapter_spec):
    requests = build_workload(two_adapter_spec) + [
        RequestSpec(6, "w7 w8 w9", (7, 8, 9), 4, None, 0.0)  # the base model, by its name
    ]
    api = OpenAIApi(served_base_model(server.url, httpx.get(server.url + "/info").json()))
    over_openai = run(server.url, requests, Arrivals(concurrency=3), progress=False, api=api)
    native = run(server.url, requests, Arrivals(concurrency=3), progress=False)
    for openai_result, native_result, request in zip(
        over_openai.results, native.results, requests, strict=True
    ):
        assert openai_result.ok, openai_result.error
        assert len(openai_result.token_times) == request.output_len == openai_result.generated_tokens
        assert openai_result.finish_reason == "length"
        assert openai_result.prompt_tokens == native_result.prompt_tokens
        assert openai_result.token_times == sorted(openai_result.token_times)
    server.wait_idle()


def test_openai_errors_are_recorded(server):
    bad = RequestSpec(0, "w5 w6", (5, 6), 2, "no-such-adapter", 0.0)
    (result,) = run(server.url, [bad], Arrivals(concurrency=1), progress=False, api=OpenAIApi()).results
    assert not result.ok and result.error.startswith("HTTP 4")


def test_base_model_name_from_info_else_from_the_model_list(server):
    info = httpx.get(server.url + "/info").json()
    assert served_base_model(server.url, info) == info["model_id"]
    assert served_base_model(server.url, {}) == info["model_id"]  # /v1/models lists the base first
    assert served_base_model("http://127.0.0.1:9", {}) == ""  # nothing listening


def test_bench_cli_over_openai(server, tiny_adapters, tmp_path, monkeypatch):
    _, ids = tiny_adapters
    out = tmp_path / "report.json"
    sent = []  # the `model` of every OpenAI body, warm-ups included
    body = OpenAIApi.body

    def recording_body(self, request):
        payload = body(self, request)
        sent.append(payload["model"])
        return payload

    monkeypatch.setattr(OpenAIApi, "body", recording_body)
    main(
        [
            "--url", server.url,
            "--api", "openai",
            "--adapter-ids", ",".join(ids),
            "--adapter-counts", "2",
            "--popularity", "roundrobin",
            "--num-requests", "4",
            "--prompt-len", "4",
            "--output-len", "3",
            "--concurrency", "2",
            "--vocab", "3:300",
            "--out", str(out),
            "--no-progress",
        ]
    )  # fmt: skip
    report = json.loads(out.read_text())
    model_id = httpx.get(server.url + "/info").json()["model_id"]
    assert report["api"] == {"name": "openai", "route": "/v1/completions", "base_model": model_id}
    assert [r["name"] for r in report["runs"]] == ["loraplex 2 adapters", "loraplex base model"]
    for record in report["runs"]:
        summary = record["summary"]
        assert summary["completed"] == 4 and summary["length_mismatches"] == 0
        assert summary["generated_tokens"] == 12
    # Both runs went over /v1/completions: 4 timed requests each, plus their warm-ups.
    assert len(sent) >= 8 and set(sent) == set(ids[:2]) | {model_id}
    server.wait_idle()


def test_a_dataset_on_a_vllm_server_is_filtered_by_the_context_its_tokenize_states(tmp_path, monkeypatch):
    from loraplex.loadgen import dataset as dataset_module

    def vllm(request: httpx.Request) -> httpx.Response:
        words = json.loads(request.content)["prompt"].split()
        return httpx.Response(
            200, json={"count": len(words), "max_model_len": 10, "tokens": list(range(len(words)))}
        )

    real_client = httpx.Client
    monkeypatch.setattr(
        dataset_module.httpx, "Client", lambda **kw: real_client(transport=httpx.MockTransport(vllm), **kw)
    )
    path = tmp_path / "d.jsonl"
    records = [
        {"prompt": "one two three four five six", "output_len": 4},  # 6 + 4 = 10: fits
        {"prompt": "one two three four five six", "output_len": 5},  # 6 + 5 > 10: skipped
        {"prompt": "a b c d", "output_len": 6},
    ]
    path.write_text("\n".join(json.dumps(r) for r in records))
    chosen = load_dataset(path, "http://vllm", 2, seed=0, info={})
    assert sorted(p.output_len for p in chosen.prompts) == [4, 6] and chosen.examined == 3
