"""The OpenAI-compatible routes through the real `openai` package, against a real server."""

import json
import shutil

import httpx
import openai
import pytest
from adapter_factory import build_adapter
from engine.reference import reference_greedy
from server_harness import post_json, serve

from loraplex.server.config import EngineConfig

TEMPLATE = (
    "{% for m in messages %}<s>{{ m.role }}: {{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant:{% endif %}"
)
ADAPTER_TEMPLATE = (
    "{% for m in messages %}{{ m.content }}{% endfor %}{% if add_generation_prompt %} =>{% endif %}"
)


@pytest.fixture(scope="module")
def chat_setup(tmp_path_factory, llama_dir):
    root = tmp_path_factory.mktemp("openai")
    model = root / "chat-model"
    shutil.copytree(llama_dir, model)
    config_path = model / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = TEMPLATE
    config_path.write_text(json.dumps(config))
    adapters = root / "adapters"
    build_adapter(
        model, adapters / "acme" / "plain", seed=1, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]
    )
    templated = build_adapter(model, adapters / "acme" / "templated", seed=2, r=4, target_modules=["o_proj"])
    (templated / "chat_template.jinja").write_text(ADAPTER_TEMPLATE)
    return model, adapters


@pytest.fixture(scope="module")
def server(chat_setup):
    model, adapters = chat_setup
    config = EngineConfig(
        model_id=str(model), max_batch_total_tokens=8192, max_total_tokens=256, adapter_dirs=(str(adapters),)
    )
    with serve(config) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_completion_matches_greedy_reference(client, server, llama_reference):
    result = client.completions.create(
        model="",
        prompt="The quick brown fox",
        max_tokens=10,
        temperature=0,
        extra_body={"ignore_eos_token": True},
    )
    choice = result.choices[0]
    ids = server.engine.tokenizer("The quick brown fox").input_ids
    expected = server.engine.tokenizer.decode(reference_greedy(llama_reference, ids, 10))
    assert choice.text == expected and choice.finish_reason == "length"
    assert result.object == "text_completion" and result.id.startswith("cmpl-") and result.created > 0
    assert result.usage.prompt_tokens == len(ids) and result.usage.completion_tokens == 10
    assert result.usage.total_tokens == len(ids) + 10


def test_completion_stream_with_usage(client):
    plain = client.completions.create(
        model="", prompt="Hello", max_tokens=8, temperature=0, extra_body={"ignore_eos_token": True}
    )
    chunks = list(
        client.completions.create(
            model="",
            prompt="Hello",
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos_token": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == plain.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8


@pytest.mark.parametrize("route", ["completions", "chat"])
def test_vllm_ignore_eos_keeps_generating_past_eos(client, server, route):
    """vLLM's `ignore_eos` (what its serving benchmark sends) works as `ignore_eos_token` does."""

    def create(max_tokens: int, **extra):
        if route == "completions":
            result = client.completions.create(
                model="", prompt="Hello", max_tokens=max_tokens, temperature=0, extra_body=extra
            )
            return result.choices[0].finish_reason, result.usage.completion_tokens
        result = client.chat.completions.create(
            model="",
            messages=[{"role": "user", "content": "Hello"}],
            max_tokens=max_tokens,
            temperature=0,
            extra_body=extra,
        )
        return result.choices[0].finish_reason, result.usage.completion_tokens

    scheduler = server.engine.scheduler
    server.wait_idle()
    saved = scheduler.eos_token_ids
    try:
        # Every token is EOS: a plain request stops at its first token, an ignoring one runs to length.
        scheduler.eos_token_ids = frozenset(range(server.engine.info.vocab_size))
        reason, tokens = create(8)
        assert reason == "stop" and tokens <= 1
        assert create(8, ignore_eos=True) == ("length", 8)
        assert create(8, ignore_eos_token=True) == ("length", 8)
    finally:
        scheduler.eos_token_ids = saved


def test_completion_echo_logprobs_and_n(client, server):
    result = client.completions.create(
        model="", prompt="Hello world", max_tokens=4, temperature=0.8, seed=5, n=3, logprobs=2, echo=True
    )
    assert len(result.choices) == 3 and [c.index for c in result.choices] == [0, 1, 2]
    prompt_len = len(server.engine.tokenizer("Hello world").input_ids)
    for choice in result.choices:
        assert choice.text.startswith("Hello world")
        logprobs = choice.logprobs
        assert len(logprobs.tokens) == prompt_len + 4
        assert logprobs.token_logprobs[0] is None and all(lp <= 0 for lp in logprobs.token_logprobs[1:])
        # The two alternatives and the chosen token (OpenAI: up to logprobs + 1); two ids can decode to
        # the same text (partial UTF-8 bytes), and the dict then holds fewer keys.
        assert all(1 <= len(top) <= 3 for top in logprobs.top_logprobs[1:])
        assert logprobs.top_logprobs[0] is None
        steps = zip(logprobs.tokens[1:], logprobs.token_logprobs[1:], logprobs.top_logprobs[1:], strict=True)
        assert all(top[token] == logprob for token, logprob, top in steps)
    again = client.completions.create(
        model="", prompt="Hello world", max_tokens=4, temperature=0.8, seed=5, n=3
    )
    assert [c.text for c in again.choices] == [c.text[len("Hello world") :] for c in result.choices]
    assert result.usage.completion_tokens == 12
    chosen_only = client.completions.create(model="", prompt="Hello world", max_tokens=3, logprobs=0).choices[
        0
    ]
    steps = zip(chosen_only.logprobs.tokens, chosen_only.logprobs.token_logprobs, strict=True)
    assert chosen_only.logprobs.top_logprobs == [{token: logprob} for token, logprob in steps]


def test_completion_text_offsets_run_from_the_prompt_streamed_or_not(client):
    arguments = dict(
        model="",
        prompt="Hello world",
        max_tokens=6,
        temperature=0,
        logprobs=1,
        extra_body={"ignore_eos_token": True},
    )
    whole = client.completions.create(**arguments).choices[0].logprobs
    chunks = [c.choices[0] for c in client.completions.create(**arguments, stream=True) if c.choices]
    streamed = [offset for c in chunks for offset in c.logprobs.text_offset]
    assert streamed == whole.text_offset
    lengths = [len(token) for token in whole.tokens]
    assert whole.text_offset == [len("Hello world") + sum(lengths[:i]) for i in range(6)]


def test_echo_with_max_tokens_0_scores_the_prompt(client, server):
    """lm-evaluation-harness's loglikelihood request, as vLLM serves it: the prompt's own logprobs (the
    native route's prompt logprobs, checked against transformers elsewhere) and nothing generated."""
    prompt = "The quick brown fox"
    result = client.completions.create(model="", prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    choice = result.choices[0]
    body = {"inputs": prompt, "parameters": {"max_new_tokens": 1, "decoder_input_details": True}}
    prefill = httpx.post(server.url + "/generate", json=body, timeout=30).json()["details"]["prefill"]
    assert choice.text == prompt and choice.finish_reason == "length"
    assert choice.logprobs.token_logprobs == [t["logprob"] for t in prefill]
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (len(prefill), 0)
    with pytest.raises(openai.UnprocessableEntityError):
        client.completions.create(model="", prompt=prompt, max_tokens=0)  # without echo: nothing to give


def test_chat_with_base_template_and_stop_cut(client, server):
    messages = [{"role": "user", "content": "Hello there"}]
    full = client.chat.completions.create(
        model="", messages=messages, max_tokens=12, temperature=0, extra_body={"ignore_eos_token": True}
    )
    text = full.choices[0].message.content
    assert full.object == "chat.completion" and full.choices[0].message.role == "assistant"
    rendered = TEMPLATE.replace("{% for m in messages %}", "").split("{% endfor %}")[0]
    expected_prompt = (
        rendered.replace("{{ m.role }}", "user").replace("{{ m.content }}", "Hello there") + "<s>assistant:"
    )
    assert full.usage.prompt_tokens == len(
        server.engine.tokenizer(expected_prompt, add_special_tokens=False).input_ids
    )
    stop = text[4:6]
    cut = client.chat.completions.create(
        model="",
        messages=messages,
        max_tokens=12,
        temperature=0,
        stop=[stop],
        extra_body={"ignore_eos_token": True},
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.index(stop)]


def test_chat_stream_matches_and_never_leaks_the_stop(client):
    messages = [{"role": "user", "content": "Tell me"}]
    full = (
        client.chat.completions.create(
            model="", messages=messages, max_tokens=15, temperature=0, extra_body={"ignore_eos_token": True}
        )
        .choices[0]
        .message.content
    )
    stop = full[6:9]
    chunks = list(
        client.chat.completions.create(
            model="",
            messages=messages,
            max_tokens=15,
            temperature=0,
            stop=stop,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos_token": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == full[: full.index(stop)]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


def test_chat_logprobs(client):
    result = client.chat.completions.create(
        model="",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=3,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = result.choices[0].logprobs.content
    assert len(content) == 3 and all(len(entry.top_logprobs) == 2 for entry in content)
    assert all(entry.logprob == max(t.logprob for t in entry.top_logprobs) for entry in content)


def test_adapter_as_model_and_its_own_chat_template(client, server):
    messages = [{"role": "user", "content": "Hi"}]
    base = client.chat.completions.create(model="", messages=messages, max_tokens=1, temperature=0)
    templated = client.chat.completions.create(
        model="acme/templated", messages=messages, max_tokens=1, temperature=0
    )
    expected = len(server.engine.tokenizer("Hi =>", add_special_tokens=False).input_ids)
    assert templated.usage.prompt_tokens == expected != base.usage.prompt_tokens
    assert templated.model == "acme/templated"
    raw = client.completions.with_raw_response.create(model="acme/plain", prompt="Hello", max_tokens=2)
    assert raw.headers["x-adapter-id"] == "acme/plain"


def test_models_lists_the_base_and_every_adapter(client, server):
    models = client.models.list().data
    base = server.engine.info.model_id
    assert models[0].id == base and models[0].parent is None
    assert {"acme/plain", "acme/templated"} <= {m.id for m in models}
    for card in models[1:]:  # vLLM's LoRA cards: the adapter as root, the base model as parent
        assert (card.root, card.parent) == (card.id, base)
    assert all(card.max_model_len == 256 for card in models)


def test_prompts_as_token_ids_as_vllm_takes_them(client, server):
    """One list of ids, or several, give what the same prompts as text give; out-of-range ids are a 422."""
    texts = ["The quick brown fox", "Hello"]
    ids = [server.engine.tokenizer(t).input_ids for t in texts]
    arguments = dict(model="", max_tokens=6, temperature=0, extra_body={"ignore_eos_token": True})
    as_text = client.completions.create(prompt=texts, **arguments)
    as_ids = client.completions.create(prompt=ids, **arguments)
    one = client.completions.create(prompt=ids[0], **arguments)
    assert [c.text for c in as_ids.choices] == [c.text for c in as_text.choices]
    assert one.choices[0].text == as_text.choices[0].text and as_ids.usage == as_text.usage
    with pytest.raises(openai.UnprocessableEntityError) as error:
        client.completions.create(prompt=[1, 10**6], **arguments)
    assert "`prompt` token ids must be >= 0" in error.value.response.json()["error"]


def test_responses_name_the_base_model_when_model_is_left_empty(client, server):
    completion = client.completions.create(model="", prompt="Hi", max_tokens=2)
    chat = client.chat.completions.create(
        model="", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert completion.model == chat.model == server.engine.info.model_id


def test_missing_chat_template_is_a_clear_422(llama_dir):
    config = EngineConfig(model_id=str(llama_dir), max_batch_total_tokens=4096)
    with serve(config) as running:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.UnprocessableEntityError) as error:
            client.chat.completions.create(model="", messages=[{"role": "user", "content": "Hi"}])
        assert "no chat template" in error.value.body["error"] if isinstance(error.value.body, dict) else True
        assert "no chat template" in error.value.response.json()["error"]


REFUSED = [
    ("completions", dict(prompt="hi", logit_bias={"5": 1.0}), "`logit_bias` is not supported"),
    ("completions", dict(prompt="hi", suffix="x"), "`suffix` is not supported"),
    ("completions", dict(prompt="hi", n=17), "`n` must be >= 1 and <= 16"),
    ("completions", dict(prompt="hi", temperature=3), "`temperature` must be >= 0 and <= 2"),
    ("completions", dict(prompt="hi", logprobs=30), "`logprobs` must be >= 0 and <= 20"),
    ("completions", dict(prompt=""), "`prompt` cannot be empty"),
    ("completions", dict(prompt="hi", max_tokens=1000), "`max_tokens` must be <= 256"),
    ("completions", dict(prompt="hi", top_p=0), "`top_p` must be > 0.0 and <= 1.0"),
    (
        "completions",
        dict(prompt="hi", stop=["a", "b", "c", "d", "e"]),
        "`stop` supports up to 4 stop sequences",
    ),
    ("completions", dict(prompt="hi", model="../escape"), "`..` is not allowed"),
    ("chat", dict(tools=[{"type": "function", "function": {"name": "f"}}]), "`tools` are not supported"),
    ("chat", dict(response_format={"type": "json_object"}), "`response_format` is not supported"),
    ("chat", dict(top_logprobs=2), "`top_logprobs` requires `logprobs` to be true"),
    ("chat", dict(presence_penalty=5), "`presence_penalty` must be >= -2.0 and <= 2.0"),
    ("completions", dict(prompt="hi", extra_body={"min_tokens": 4}), "`min_tokens` is not supported"),
    (
        "completions",
        dict(prompt="hi", extra_body={"guided_json": {"type": "object"}}),
        "`guided_json` is not supported",
    ),
    ("chat", dict(extra_body={"guided_choice": ["a", "b"]}), "`guided_choice` is not supported"),
    ("chat", dict(extra_body={"min_p": 0.1}), "`min_p` is not supported"),
    (
        "completions",
        dict(prompt="hi", extra_body={"response_format": {"type": "json_object"}}),
        "`response_format` is not supported",
    ),
]


@pytest.mark.parametrize(("route", "arguments", "message"), REFUSED, ids=[r[2][:30] for r in REFUSED])
def test_refused_parameters(client, route, arguments, message):
    arguments = {"model": "", **arguments}
    with pytest.raises(openai.UnprocessableEntityError) as error:
        if route == "chat":
            client.chat.completions.create(messages=[{"role": "user", "content": "Hi"}], **arguments)
        else:
            client.completions.create(**arguments)
    body = error.value.response.json()
    assert body["error_type"] == "validation" and message in body["error"], body


@pytest.mark.parametrize(
    ("route", "body", "message"),
    [
        ("completions", {"prompt": "hi \ud800"}, "`prompt` is not valid Unicode"),
        (
            "chat/completions",
            {"messages": [{"role": "user", "content": "\udc00"}]},
            "`messages` is not valid",
        ),
        ("completions", {"prompt": "hi", "repetition_penalty": float("nan")}, "`repetition_penalty` must be"),
        (
            "chat/completions",
            {"messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 0},
            "`max_completion_tokens` must be strictly positive",
        ),
    ],
)
def test_refused_raw_bodies(server, route, body, message):
    """What the openai package will not send (NaN, lone surrogates) but other clients can."""
    response = post_json(f"{server.url}/v1/{route}", {"model": "", **body})
    assert response.status_code == 422, response.text
    assert response.json()["error_type"] == "validation" and message in response.json()["error"]


def test_vllm_top_k_minus_one_means_every_token(client):
    def sample(**extra):
        result = client.completions.create(
            model="", prompt="Hello", max_tokens=8, temperature=0.9, seed=3, extra_body=extra
        )
        return result.choices[0].text

    assert sample(top_k=-1) == sample(top_k=0) == sample()


def test_streamed_usage_counts_every_prompt_even_repeated_ones(client):
    arguments = dict(model="", prompt=["Hello", "Hello", "world"], max_tokens=3, temperature=0)
    plain = client.completions.create(**arguments)
    chunks = list(client.completions.create(**arguments, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage == plain.usage


def test_unknown_adapter_is_424_through_openai(client):
    with pytest.raises(openai.APIStatusError) as error:
        client.completions.create(model="acme/nope", prompt="hi", max_tokens=2)
    assert error.value.status_code == 424
    assert error.value.response.json()["error_type"] == "adapter_not_found"
