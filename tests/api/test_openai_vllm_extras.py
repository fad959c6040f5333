"""vLLM's additions to the OpenAI routes, through the real `openai` package: `stop_reason` on choices,
`stream_options.continuous_usage_stats`, chat `echo`, and the chat-template extras."""

import json
import shutil

import httpx
import openai
import pytest
from server_harness import serve

from loraplex.server.config import EngineConfig

from .sse import parse_events

TEMPLATE = (
    "{{ preamble | default('') }}{% for m in messages %}<s>{{ m.role }}: {{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant:{% endif %}"
)
MESSAGES = [{"role": "user", "content": "Tell me"}]
GREEDY = dict(model="", temperature=0, extra_body={"ignore_eos_token": True})


@pytest.fixture(scope="module")
def server(tmp_path_factory, llama_dir):
    model = tmp_path_factory.mktemp("vllm-extras") / "chat-model"
    shutil.copytree(llama_dir, model)
    config_path = model / "tokenizer_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "chat_template": TEMPLATE}))
    config = EngineConfig(model_id=str(model), max_batch_total_tokens=8192, max_total_tokens=256)
    with serve(config) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _complete(
    client, route: str, stream: bool, text: str = "Tell me", **arguments
) -> tuple[str, str, str | None, list]:
    """(text, finish_reason, stop_reason, chunks) of one choice, streamed or not, for a prompt of `text`
    (a user message's, for chat)."""
    if route == "chat":
        messages = [{"role": "user", "content": text}]
        result = client.chat.completions.create(messages=messages, stream=stream, **GREEDY, **arguments)
    else:
        result = client.completions.create(prompt=text, stream=stream, **GREEDY, **arguments)
    if not stream:
        choice = result.choices[0]
        text = choice.message.content if route == "chat" else choice.text
        return text, choice.finish_reason, choice.stop_reason, []
    chunks = list(result)
    choices = [c.choices[0] for c in chunks if c.choices]
    text = "".join((c.delta.content or "") if route == "chat" else c.text for c in choices)
    last = [c for c in choices if c.finish_reason is not None]
    assert len(last) == 1
    return text, last[0].finish_reason, last[0].stop_reason, chunks


def _earliest_stop_last(text: str) -> list[str]:
    """Two stop sequences found in `text`, the one found first listed last."""
    early = text[3:5]
    late = next(text[i : i + 2] for i in range(8, len(text) - 1) if text.find(text[i : i + 2]) > 3)
    assert text.find(early) < text.find(late)
    return [late, early]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("route", ["completions", "chat"])
def test_stop_reason_is_the_stop_sequence_that_ended_the_text(client, route, stream):
    full, reason, stop_reason, _ = _complete(client, route, stream, max_tokens=16)
    assert (reason, stop_reason) == ("length", None)
    stops = _earliest_stop_last(full)
    text, reason, stop_reason, chunks = _complete(client, route, stream, max_tokens=16, stop=stops)
    assert text == full[: full.index(stops[1])]
    assert (reason, stop_reason) == ("stop", stops[1])
    unmatched = _complete(client, route, stream, max_tokens=16, stop=["\x00never"])
    assert unmatched[1:3] == ("length", None)
    if stream and route == "completions":  # vLLM's completion chunks carry it always, null until the end
        assert [c.choices[0].stop_reason for c in chunks if c.choices][:-1] == [None] * (len(chunks) - 1)
    if stream and route == "chat":  # vLLM's chat chunks carry it on the finishing chunk only
        carrying = [c for c in chunks if c.choices and "stop_reason" in c.choices[0].model_extra]
        assert [c.choices[0].finish_reason for c in carrying] == ["stop"]


def _first_incomplete_character(client, route: str, text: str) -> int:
    """How many tokens greedy generation takes to end on an incomplete character (a lone UTF-8 byte)."""
    if route == "chat":
        messages = [{"role": "user", "content": text}]
        result = client.chat.completions.create(messages=messages, max_tokens=40, logprobs=True, **GREEDY)
        tokens = [t.token for t in result.choices[0].logprobs.content]
    else:
        result = client.completions.create(prompt=text, max_tokens=40, logprobs=0, **GREEDY)
        tokens = result.choices[0].logprobs.tokens
    incomplete = [i for i, token in enumerate(tokens) if "\ufffd" in token]
    assert incomplete, tokens
    return incomplete[0] + 1


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("route", ["completions", "chat"])
def test_a_stop_sequence_in_text_released_at_the_end_is_the_stop_reason(client, route, stream):
    """The detokenizer holds back an incomplete character until generation ends, so a stop sequence in
    that last text is only found in the final text: the text is cut there and the reasons say so. (Here
    the replacement character that the lone byte decodes to; with real tokenizers a token such as
    " \\xe2\\x80" holds back a whole space with the partial character.)"""
    text = {"completions": "Tell me", "chat": "Hello"}[route]  # generate a lone byte after a few tokens
    length = _first_incomplete_character(client, route, text)
    full, reason, stop_reason, _ = _complete(client, route, stream, text, max_tokens=length)
    assert full.endswith("\ufffd") and (reason, stop_reason) == ("length", None)
    cut = _complete(client, route, stream, text, max_tokens=length, stop=["\ufffd"])[:3]
    assert cut == (full[: full.index("\ufffd")], "stop", "\ufffd")


def _usages_by_choice(chunks) -> dict[int, list[tuple[int, int, int]]]:
    by_choice: dict[int, list[tuple[int, int, int]]] = {}
    for c in chunks:
        if c.choices:
            u = c.usage
            by_choice.setdefault(c.choices[0].index, []).append(
                (u.prompt_tokens, u.completion_tokens, u.total_tokens)
            )
    return by_choice


def test_completion_continuous_usage_counts_each_choice_so_far(client, server):
    prompts = ["Hello", "The quick brown fox"]
    options = {"include_usage": True, "continuous_usage_stats": True}
    chunks = list(
        client.completions.create(
            prompt=prompts, max_tokens=5, echo=True, stream=True, stream_options=options, **GREEDY
        )
    )
    lengths = [len(server.engine.tokenizer(p).input_ids) for p in prompts]
    for index, length in enumerate(lengths):  # the echoed prompt first (nothing generated), then each token
        expected = [(length, k, length + k) for k in range(6)]
        assert _usages_by_choice(chunks)[index] == expected
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert chunks[-1].usage.prompt_tokens == sum(lengths)
    for stream_options in ({"include_usage": True}, {"continuous_usage_stats": True}):
        plain = list(
            client.completions.create(
                prompt=prompts, max_tokens=5, stream=True, stream_options=stream_options, **GREEDY
            )
        )
        assert all(c.usage is None for c in plain if c.choices)


def test_chat_continuous_usage_counts_each_choice_so_far(client, server):
    options = {"include_usage": True, "continuous_usage_stats": True}
    chunks = list(
        client.chat.completions.create(
            messages=MESSAGES, n=2, max_tokens=4, stream=True, stream_options=options, **GREEDY
        )
    )
    final = chunks[-1].usage
    assert chunks[-1].choices == [] and final.completion_tokens == 8
    for counts in _usages_by_choice(chunks).values():
        # the role chunk (nothing generated yet), a chunk per token with text, the finishing chunk
        assert counts[0] == (final.prompt_tokens, 0, final.prompt_tokens)
        assert counts[-1] == (final.prompt_tokens, 4, final.prompt_tokens + 4)
        generated = [completion for _, completion, _ in counts]
        assert generated == sorted(generated) and len(counts) >= 3
        assert all(total == prompt + completion for prompt, completion, total in counts)
    plain = list(
        client.chat.completions.create(
            messages=MESSAGES, max_tokens=4, stream=True, stream_options={"include_usage": True}, **GREEDY
        )
    )
    assert all(c.usage is None for c in plain[:-1]) and plain[-1].usage.completion_tokens == 4


def _chat_texts(client, messages, stream: bool, echo: bool = False) -> tuple[list[str], list]:
    """The text of each of two choices, and the chunks' choices when streamed."""
    result = client.chat.completions.create(
        model="",
        messages=messages,
        n=2,
        max_tokens=6,
        temperature=0,
        stream=stream,
        extra_body={"ignore_eos_token": True, "echo": echo},
    )
    if not stream:
        return [c.message.content for c in result.choices], []
    chunks = [c.choices[0] for c in result]
    return ["".join(c.delta.content or "" for c in chunks if c.index == i) for i in (0, 1)], chunks


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_chat_echo_starts_the_reply_with_the_last_assistant_message(client, stream):
    """vLLM's chat `echo`: the last message's content comes first when that message is the assistant's."""
    partial = [*MESSAGES, {"role": "assistant", "content": "Once upon"}]
    plain, _ = _chat_texts(client, partial, stream)
    echoed, chunks = _chat_texts(client, partial, stream, echo=True)
    assert echoed == ["Once upon" + text for text in plain]
    if stream:  # one chunk per choice, right after the role chunks
        assert [(c.index, c.delta.content) for c in chunks[2:4]] == [(0, "Once upon"), (1, "Once upon")]
    # the last message is the user's: nothing to echo
    assert _chat_texts(client, MESSAGES, stream, echo=True)[0] == _chat_texts(client, MESSAGES, stream)[0]


STORY = [*MESSAGES, {"role": "assistant", "content": "Once upon"}]


def _prompt_and_reply(client, server, messages, stream=False, **extra) -> tuple[int | None, str, str]:
    """The prompt's length in tokens (not streamed), the reply's role and its text."""
    result = client.chat.completions.create(
        messages=messages,
        max_tokens=6,
        stream=stream,
        **{**GREEDY, "extra_body": {**GREEDY["extra_body"], **extra}},
    )
    if stream:
        chunks = list(result)
        role = chunks[0].choices[0].delta.role
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return None, role, text
    choice = result.choices[0]
    return result.usage.prompt_tokens, choice.message.role, choice.message.content


def _continuation(client, server, prompt: str) -> tuple[int, str]:
    """Prompt length and greedy reply of `prompt` as exact token ids (no template)."""
    ids = server.engine.tokenizer(prompt, add_special_tokens=False).input_ids
    result = client.completions.create(prompt=ids, max_tokens=6, **GREEDY)
    return result.usage.prompt_tokens, result.choices[0].text


@pytest.mark.parametrize(
    ("extra", "prompt", "role"),
    [
        ({}, "<s>user: Tell me\n<s>assistant: Once upon\n<s>assistant:", "assistant"),
        ({"add_generation_prompt": False}, "<s>user: Tell me\n<s>assistant: Once upon\n", "assistant"),
        (
            {"add_generation_prompt": False, "continue_final_message": True},
            "<s>user: Tell me\n<s>assistant: Once upon",
            "assistant",
        ),
        (
            {"chat_template_kwargs": {"preamble": "Story time. ", "add_generation_prompt": False}},
            "Story time. <s>user: Tell me\n<s>assistant: Once upon\n<s>assistant:",
            "assistant",
        ),
    ],
    ids=["generation-prompt", "none", "continued", "template-kwargs"],
)
def test_chat_template_extras_shape_the_prompt(client, server, extra, prompt, role):
    """vLLM's `add_generation_prompt`, `continue_final_message` and `chat_template_kwargs` (whose own
    `add_generation_prompt` gives way to the request's): the engine gets the prompt vLLM renders."""
    length, expected = _continuation(client, server, prompt)
    assert _prompt_and_reply(client, server, STORY, **extra) == (length, role, expected)
    assert _prompt_and_reply(client, server, STORY, stream=True, **extra)[1:] == (role, expected)


def test_without_generation_prompt_the_reply_has_the_last_messages_role(client, server):
    """vLLM's reply role: the last message's when no generation prompt is added; echo follows it."""
    length, expected = _continuation(client, server, "<s>user: Tell me\n")
    assert _prompt_and_reply(client, server, MESSAGES, add_generation_prompt=False) == (
        length,
        "user",
        expected,
    )
    echoed = _prompt_and_reply(client, server, MESSAGES, add_generation_prompt=False, echo=True)
    assert echoed == (length, "user", "Tell me" + expected)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"continue_final_message": True, "add_generation_prompt": True},
            "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
        ),
        ({"continue_final_message": True}, "`add_generation_prompt` defaults to true"),
        ({"chat_template": "{{ messages }}"}, "`chat_template` is not accepted"),
        ({"chat_template_kwargs": {"chat_template": "{{ messages }}"}}, "`chat_template` is not accepted"),
        ({"chat_template_kwargs": {"tokenize": True}}, "`chat_template_kwargs` cannot set 'tokenize'"),
        ({"chat_template_kwargs": {"messages": []}}, "the chat template could not be rendered"),
    ],
    ids=["both", "continue-alone", "template", "template-in-kwargs", "tokenize", "render-error"],
)
def test_chat_template_extras_vllm_refuses_are_refused(server, extra, message):
    body = {"model": "", "messages": STORY, "max_tokens": 2, **extra}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 422, response.text
    assert response.json()["error_type"] == "validation" and message in response.json()["error"]


def test_content_parts_are_joined_with_newlines(client, server):
    """vLLM joins a message's text parts with "\\n", in the prompt and in what `echo` repeats."""
    parts = [{"type": "text", "text": "Tell"}, {"type": "text", "text": "me"}]
    length, expected = _continuation(client, server, "<s>user: Tell\nme\n<s>assistant:")
    assert _prompt_and_reply(client, server, [{"role": "user", "content": parts}]) == (
        length,
        "assistant",
        expected,
    )
    story = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "Once"}, {"type": "text", "text": "upon"}],
        },
    ]
    length, expected = _continuation(client, server, "<s>user: Tell me\n<s>assistant: Once\nupon")
    continued = _prompt_and_reply(
        client, server, story, add_generation_prompt=False, continue_final_message=True, echo=True
    )
    assert continued == (length, "assistant", "Once\nupon" + expected)


@pytest.mark.parametrize("route", ["completions", "chat/completions"])
def test_streams_with_usage_send_null_usage_on_every_other_chunk(server, route):
    """OpenAI: with include_usage, every chunk but the last carries `"usage": null` (the key, not absent)."""
    body = {"model": "", "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}
    body |= {"prompt": "Hello"} if route == "completions" else {"messages": MESSAGES}
    with httpx.stream("POST", f"{server.url}/v1/{route}", json=body, timeout=30) as response:
        chunks = parse_events(response.iter_lines())
    assert len(chunks) >= 4
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3


def test_server_template_and_trusted_request_templates(llama_dir):
    """--chat-template gives a model without one a chat route; with --trust-request-chat-template a
    request's own template is rendered instead (the prompt's token count shows which one was)."""
    server_template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
    own = "{{ 'note: ' }}{% for m in messages %}{{ m.content }}{% endfor %}"
    config = EngineConfig(model_id=str(llama_dir), max_batch_total_tokens=4096, max_total_tokens=256)
    with serve(config, chat_template=server_template, trust_request_chat_template=True) as running:
        tokenizer = running.engine.tokenizer
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0, timeout=60)

        def prompt_tokens(**extra) -> int:
            body = {**GREEDY["extra_body"], **extra}
            reply = client.chat.completions.create(
                messages=MESSAGES, max_tokens=1, model="", temperature=0, extra_body=body
            )
            return reply.usage.prompt_tokens

        def count(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False).input_ids)

        assert prompt_tokens() == count("[user] Tell me\n")
        assert prompt_tokens(chat_template=own) == count("note: Tell me")
        running.wait_idle()
