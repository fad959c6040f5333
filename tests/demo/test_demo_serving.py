"""The demo through loraplex's own engine and HTTP server: three adapters in one batch, each right."""

import asyncio

import httpx
import pytest
from server_harness import serve

from loraplex.demo import ADAPTER_NAMES, adapters_dir, base_model_dir
from loraplex.demo.tasks import TRANSFORMS, heldout_inputs
from loraplex.server.config import EngineConfig
from loraplex.server.engine import Engine
from loraplex.server.request import SamplingParams

SAMPLE = 40
THRESHOLD = 0.9


def demo_config(**overrides) -> EngineConfig:
    settings = dict(
        model_id=str(base_model_dir()),
        served_model_name="loraplex-demo",
        adapter_dirs=(str(adapters_dir()),),
        preload_adapters=ADAPTER_NAMES,
        max_batch_total_tokens=16384,
    )
    settings.update(overrides)
    return EngineConfig(**settings)


@pytest.fixture(scope="module")
def engine():
    return Engine(demo_config())


@pytest.mark.parametrize("task", ["echo", *ADAPTER_NAMES])
def test_heldout_sample_accuracy(engine, task):
    inputs = heldout_inputs()[:SAMPLE]
    adapter = None if task == "echo" else engine.adapters.locate(task, None)
    requests = [
        engine.make_request(
            engine.tokenizer(text).input_ids, SamplingParams(max_new_tokens=64), adapter=adapter
        )
        for text in inputs
    ]
    engine.generate(requests)
    transform = TRANSFORMS[task]
    outputs = [engine.tokenizer.decode(r.output_token_ids, skip_special_tokens=True) for r in requests]
    right = sum(out == transform(text) for text, out in zip(inputs, outputs, strict=True))
    assert right / len(inputs) >= THRESHOLD, list(zip(inputs, outputs, strict=True))[:5]


def test_three_adapters_concurrently_in_one_batch():
    with serve(demo_config()) as running:
        steps: list[set[int]] = []
        run = running.engine.runner.run

        def recording_run(batch):
            steps.append({row.request.adapter_slot for row in batch.rows})
            return run(batch)

        running.engine.runner.run = recording_run
        text = "good morning"

        async def all_three():
            async with httpx.AsyncClient(base_url=running.url, timeout=60) as client:
                return await asyncio.gather(
                    *(
                        client.post("/generate", json={"inputs": text, "parameters": {"adapter_id": name}})
                        for name in ADAPTER_NAMES
                    )
                )

        responses = asyncio.run(all_three())
        for name, response in zip(ADAPTER_NAMES, responses, strict=True):
            assert response.status_code == 200
            assert response.json()["generated_text"] == TRANSFORMS[name](text)
        assert max(len(s) for s in steps) == 3, "the three adapters never shared a step"


def test_a_stop_on_the_last_allowed_token_is_length_natively_and_stop_for_openai():
    """`upper` answers "hello world" with 11 characters and an end-of-sequence token. With exactly that
    many tokens allowed (or a stop string met on the last one), LoRAX and TGI report `length`, as the
    native routes do; vLLM and OpenAI report `stop`, as the OpenAI routes do."""
    import openai

    with serve(demo_config()) as running:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="-", max_retries=0)

        def native(**parameters) -> str:
            body = {
                "inputs": "hello world",
                "parameters": {"adapter_id": "upper", "details": True, **parameters},
            }
            return httpx.post(running.url + "/generate", json=body, timeout=30).json()["details"][
                "finish_reason"
            ]

        def completion(**arguments):
            reply = client.completions.create(model="upper", prompt="hello world", temperature=0, **arguments)
            return reply.choices[0].text, reply.choices[0].finish_reason

        assert native(max_new_tokens=12) == "length" and native(max_new_tokens=13) == "eos_token"
        assert native(max_new_tokens=11, stop=["LD"]) == "length"
        assert native(max_new_tokens=12, stop=["LD"]) == "stop_sequence"
        assert completion(max_tokens=12) == ("HELLO WORLD", "stop")
        assert completion(max_tokens=11, stop=["LD"]) == ("HELLO WOR", "stop")
        assert completion(max_tokens=10) == ("HELLO WORL", "length")
        streamed = client.completions.create(
            model="upper", prompt="hello world", temperature=0, max_tokens=12, stream=True
        )
        assert [c.choices[0].finish_reason for c in streamed if c.choices][-1] == "stop"


def test_tokenize_with_and_without_special_tokens():
    """The demo's tokenizer wraps a prompt in <bos> ... <sep>; LoRAX's `add_special_tokens` leaves them out."""
    with serve(demo_config()) as running:
        url = running.url + "/tokenize"
        plain = [t["text"] for t in httpx.post(url, json={"inputs": "hi"}).json()]
        bare = [t["text"] for t in httpx.post(url, json={"inputs": "hi", "add_special_tokens": False}).json()]
    assert bare == ["h", "i"] and len(plain) == 4 and plain[1:3] == bare
