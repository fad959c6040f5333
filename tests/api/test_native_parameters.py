"""The rest of LoRAX's native parameters: details, prompt logprobs, alternatives, best_of, headers, /tokenize."""

import httpx
import pytest
from engine.reference import reference_logits


def generate(server, inputs="The quick brown fox", **parameters):
    return httpx.post(server.url + "/generate", json={"inputs": inputs, "parameters": parameters}, timeout=30)


def test_decoder_input_details_alone_brings_details(server):
    """LoRAX answers with details when either flag is set (`details || decoder_input_details`)."""
    body = generate(server, max_new_tokens=2, decoder_input_details=True).json()
    assert body["details"]["generated_tokens"] == 2 and body["details"]["prefill"]


def test_truncate_past_the_input_limit_is_refused(server):
    response = generate(server, max_new_tokens=2, truncate=10**6)
    assert response.status_code == 422
    assert response.json()["error"].startswith("`truncate` must be strictly positive and less than 64.")


def test_decoder_input_details_are_transformers_prompt_logprobs(server, llama_reference):
    body = generate(server, max_new_tokens=2, details=True, decoder_input_details=True).json()
    prefill = body["details"]["prefill"]
    ids = server.engine.tokenizer("The quick brown fox").input_ids
    assert [t["id"] for t in prefill] == ids and prefill[0]["logprob"] is None
    expected = reference_logits(llama_reference, ids).log_softmax(dim=1)
    for position, token in enumerate(prefill[1:], start=1):
        assert token["logprob"] == pytest.approx(expected[position - 1, ids[position]].item(), abs=1e-4)
        assert token["text"] == server.engine.tokenizer.decode([ids[position]])


def test_return_k_alternatives(server):
    tokens = generate(server, max_new_tokens=4, details=True, return_k_alternatives=3).json()["details"][
        "tokens"
    ]
    for token in tokens:
        alternatives = token["alternative_tokens"]
        assert len(alternatives) == 3
        assert alternatives[0]["id"] == token["id"] and alternatives[0]["logprob"] == pytest.approx(
            token["logprob"]
        )
        assert alternatives[0]["logprob"] >= alternatives[1]["logprob"] >= alternatives[2]["logprob"]
    plain = generate(server, max_new_tokens=2, details=True).json()["details"]["tokens"]
    assert "alternative_tokens" not in plain[0]


def test_best_of_returns_the_likeliest_sequence(server):
    body = generate(server, max_new_tokens=6, best_of=3, do_sample=True, temperature=1.5, details=True).json()
    details = body["details"]
    others = details["best_of_sequences"]
    assert len(others) == 2
    best = sum(t["logprob"] for t in details["tokens"])
    assert all(best >= sum(t["logprob"] for t in o["tokens"]) for o in others)
    assert details["seed"] is not None and all(o["seed"] is not None for o in others)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        (dict(best_of=2), "you must use sampling when `best_of` is > 1"),
        (dict(best_of=2, do_sample=True, seed=3), "`seed` must not be set when `best_of` > 1"),
        (dict(best_of=9, do_sample=True), "`best_of` must be > 0 and <= 4. Given: 9"),
        (dict(return_k_alternatives=0), "`return_k_alternatives` must be > 0 and <= 20"),
    ],
)
def test_best_of_and_alternatives_rules(server, parameters, message):
    response = generate(server, max_new_tokens=2, **parameters)
    assert response.status_code == 422 and response.json()["error"] == message


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        (dict(best_of=2, do_sample=True), "`best_of` != 1 is not supported when streaming tokens"),
        (
            dict(decoder_input_details=True),
            "`decoder_input_details` == true is not supported when streaming tokens",
        ),
    ],
)
def test_stream_only_refusals(server, parameters, message):
    response = httpx.post(
        server.url + "/generate_stream",
        json={"inputs": "hi", "parameters": {"max_new_tokens": 2, **parameters}},
    )
    assert response.status_code == 422 and response.json() == {"error": message, "error_type": "validation"}


def test_timing_headers(server):
    """LoRAX's headers: times in whole milliseconds, counts, what served the request."""
    response = generate(server, max_new_tokens=3)
    headers = response.headers
    times = ["x-compute-time", "x-total-time", "x-validation-time", "x-queue-time", "x-inference-time"]
    times += ["x-time-per-token", "x-time-to-first-token", "x-time-per-output-token"]
    assert all(headers[name].isdigit() for name in times), dict(headers)
    assert int(headers["x-total-time"]) >= int(headers["x-inference-time"]) >= 0
    assert headers["x-compute-time"] == headers["x-total-time"]
    assert headers["x-generated-tokens"] == "3" and headers["x-skipped-tokens"] == "0"
    assert int(headers["x-total-tokens"]) == int(headers["x-prompt-tokens"]) + 3
    assert headers["x-compute-type"] == "cpu" and headers["x-model-id"] == server.engine.info.model_id
    assert headers["x-compute-characters"] == str(len("The quick brown fox"))
    assert "x-adapter-id" not in headers and "x-adapter-source" not in headers  # the base model


def test_penalties_and_do_sample_are_accepted(server):
    body = generate(
        server,
        max_new_tokens=5,
        frequency_penalty=1.0,
        presence_penalty=0.5,
        repetition_penalty=1.2,
        details=True,
    ).json()
    assert body["details"]["generated_tokens"] == 5


def test_tokenize(server):
    tokens = httpx.post(server.url + "/tokenize", json={"inputs": "Hello world"}).json()
    assert [t["id"] for t in tokens] == server.engine.tokenizer("Hello world").input_ids
    assert "".join(t["text"] for t in tokens) == "Hello world"
    assert tokens[0]["start"] == 0 and tokens[-1]["stop"] == len("Hello world")
