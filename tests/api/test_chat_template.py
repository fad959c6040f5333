"""How chat messages reach the template, as vLLM gives them: one string per message (text parts joined
with newlines), or, for a template that loops over a message's content, the text parts themselves."""

import pytest

from loraplex.router.chat_template import chat_options, render_chat
from loraplex.router.content_format import takes_content_parts
from loraplex.router.openai_schemas import ChatMessage, ChatRequest
from loraplex.server.tokenizer import load_tokenizer

STRING_TEMPLATE = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
PARTS_TEMPLATE = (
    "{% for m in messages %}{{ m.role }}:"
    "{% if m.content is string %}{{ m.content }}{% else %}{% for p in m.content %}[{{ p.text }}]{% endfor %}"
    "{% endif %};{% endfor %}"
)


@pytest.mark.parametrize(
    ("template", "parts"),
    [
        (STRING_TEMPLATE, False),
        (PARTS_TEMPLATE, True),
        (
            "{% for m in messages %}{% for p in m['content'] | selectattr('type') %}{{ p.text }}{% endfor %}"
            "{% endfor %}",
            True,
        ),
        (
            "{% set rest = messages[1:] %}{% set later = rest %}{% for m in later %}"
            "{% for p in m.content %}{{ p.text }}{% endfor %}{% endfor %}",
            True,
        ),
        (
            "{% for m in messages %}{% generation %}{% for p in m.content %}{{ p.text }}{% endfor %}"
            "{% endgeneration %}{% endfor %}",
            True,
        ),
        ("{% for t in tools %}{% for p in t.content %}{{ p }}{% endfor %}{% endfor %}", False),
        ("{% for m in messages %}{% for c in m.content.split(',') %}{{ c }}{% endfor %}{% endfor %}", False),
        ("{% for m in messages %}{{ m.content", False),
    ],
    ids=["string", "parts", "filtered", "aliased", "generation-tag", "not-messages", "a-call", "unparsable"],
)
def test_templates_that_loop_over_a_messages_content_take_parts(template, parts):
    assert takes_content_parts(template) is parts


def _prompt(tokenizer, template: str, messages: list[dict]) -> str:
    tokenizer.chat_template = template
    ids = render_chat(tokenizer, [ChatMessage(**m) for m in messages], None)
    return tokenizer.decode(ids)


def test_messages_reach_the_template_as_vllm_gives_them(llama_dir):
    tokenizer = load_tokenizer(llama_dir)
    parts = [{"type": "text", "text": "Tell"}, {"type": "text", "text": ""}, {"type": "text", "text": "me"}]
    messages = [
        {"role": "user", "content": parts},
        {"role": "assistant", "content": "Hi"},
        {"role": "tool", "content": parts},
    ]
    # one string each, empty parts left out; a template that takes parts gets them all, a string as one
    # part, and a tool's result as one string
    assert _prompt(tokenizer, STRING_TEMPLATE, messages) == (
        "user: Tell\nme\nassistant: Hi\ntool: Tell\nme\n"
    )
    assert _prompt(tokenizer, PARTS_TEMPLATE, messages) == "user:[Tell][][me];assistant:[Hi];tool:Tell\n\nme;"


def test_documents_reach_the_template_as_vllm_passes_them():
    body = ChatRequest(
        model="", messages=[{"role": "user", "content": "hi"}], documents=[{"title": "T", "text": "body"}]
    )
    options = chat_options(body)
    assert options.template_kwargs == {"documents": [{"title": "T", "text": "body"}]}
    assert (
        chat_options(ChatRequest(model="", messages=[{"role": "user", "content": "hi"}])).template_kwargs
        == {}
    )


def _request(**fields) -> ChatRequest:
    return ChatRequest(model="", messages=[{"role": "user", "content": "Hi"}], **fields)


def test_a_requests_own_template_is_used_only_when_the_server_trusts_it():
    own = "{% for m in messages %}<<{{ m.content }}>>{% endfor %}"
    with pytest.raises(Exception, match="--trust-request-chat-template"):
        chat_options(_request(chat_template=own))
    with pytest.raises(Exception, match="--trust-request-chat-template"):
        chat_options(_request(chat_template_kwargs={"chat_template": own}))
    assert chat_options(_request(chat_template=own), trust_request_template=True).template == own
    # as in current vLLM, one inside chat_template_kwargs counts when the field is not set
    trusted = chat_options(_request(chat_template_kwargs={"chat_template": own, "x": 1}), True)
    assert trusted.template == own and trusted.template_kwargs == {"x": 1}
    both = chat_options(_request(chat_template="field", chat_template_kwargs={"chat_template": own}), True)
    assert both.template == "field" and both.template_kwargs == {}


def test_template_precedence_request_then_adapter_then_server_then_base_model(llama_dir, tmp_path):
    from loraplex.server.adapters.sources import LOCAL, AdapterLocation

    tokenizer = load_tokenizer(llama_dir)
    tokenizer.chat_template = "base:{{ messages[0].content }}"
    server = "server:{{ messages[0].content }}"
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "chat_template.jinja").write_text("adapter:{{ messages[0].content }}")
    adapter = AdapterLocation(source=LOCAL, path=folder, adapter_id="a", repo_id=None)
    messages = [ChatMessage(role="user", content="Hi")]
    own = chat_options(_request(chat_template="request:{{ messages[0].content }}"), True)

    def text(adapter_location, options=None, server_template=None):
        return tokenizer.decode(render_chat(tokenizer, messages, adapter_location, options, server_template))

    assert text(adapter, own, server) == "request:Hi"
    assert text(adapter, None, server) == "adapter:Hi"
    assert text(None, None, server) == "server:Hi"
    assert text(None) == "base:Hi"


def test_the_server_template_is_read_from_a_file_or_taken_as_written(tmp_path):
    from loraplex.router.chat_template import load_server_template

    template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    path = tmp_path / "chat.jinja"
    path.write_text(template)
    assert load_server_template(str(path)) == template
    assert load_server_template(template) == template
    assert load_server_template("{{ 'a' }}\\n{{ 'b' }}") == "{{ 'a' }}\n{{ 'b' }}"  # as vLLM decodes it
    # what transformers renders parses: loop controls and {% generation %} blocks
    for accepted in (
        "{% for m in messages %}{{ m.content }}{% if loop.index > 1 %}{% break %}{% endif %}{% endfor %}",
        "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}",
    ):
        assert load_server_template(accepted) == accepted
    with pytest.raises(ValueError, match="no such file"):
        load_server_template(str(tmp_path / "missing.jinja"))
