"""Which content format a chat template expects, as vLLM detects it: a template that loops over a
message's content (`{% for part in message['content'] %}`) takes the list of text parts, as OpenAI
sends them; any other takes one string per message. Read from the template's syntax tree."""

from __future__ import annotations

from functools import lru_cache

import jinja2
import jinja2.ext
import jinja2.nodes


class _GenerationTag(jinja2.ext.Extension):
    """Reads transformers' `{% generation %}...{% endgeneration %}` blocks, so templates that mark the
    assistant's tokens with them can be parsed."""

    tags = {"generation"}

    def parse(self, parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _reads(node: jinja2.nodes.Node, names: set[str], key: str | None = None) -> bool:
    """Whether `node` is one of `names` (or its `key` item or attribute), also through filters, tests and
    slices around it."""
    while isinstance(node, (jinja2.nodes.Filter, jinja2.nodes.Test)) or (
        isinstance(node, jinja2.nodes.Getitem) and isinstance(node.arg, jinja2.nodes.Slice)
    ):
        if node.node is None:  # a filter block
            return False
        node = node.node
    if key is not None:
        if isinstance(node, jinja2.nodes.Getitem) and isinstance(node.arg, jinja2.nodes.Const):
            if node.arg.value != key:
                return False
        elif not (isinstance(node, jinja2.nodes.Getattr) and node.attr == key):
            return False
        node = node.node
    return isinstance(node, jinja2.nodes.Name) and node.name in names


def _loop_names(tree: jinja2.nodes.Template, names: set[str], key: str | None = None) -> set[str]:
    """The names that `{% for name in X %}` loops bind, for X one of `names` (or its `key`)."""
    return {
        loop.target.name
        for loop in tree.find_all(jinja2.nodes.For)
        if isinstance(loop.target, jinja2.nodes.Name) and _reads(loop.iter, names, key)
    }


def _aliases(tree: jinja2.nodes.Template, name: str) -> set[str]:
    """`name` and the variables set from it (`{% set rest = messages[1:] %}`), and from those, ..."""
    names = {name}
    while True:
        more = {
            assign.target.name
            for assign in tree.find_all(jinja2.nodes.Assign)
            if isinstance(assign.target, jinja2.nodes.Name) and _reads(assign.node, names)
        }
        if more <= names:
            return names
        names |= more


def template_environment() -> jinja2.Environment:
    """An environment that parses what transformers renders: loop controls and `{% generation %}`."""
    return jinja2.Environment(extensions=[jinja2.ext.loopcontrols, _GenerationTag])


@lru_cache(maxsize=64)
def takes_content_parts(template: str) -> bool:
    """vLLM's content format: a template that loops over a message's content (`{% for part in
    message['content'] %}`) is given each message's content as a list of text parts, as OpenAI sends
    it; any other is given one string. A template that cannot be parsed is given strings."""
    try:
        tree = template_environment().parse(template)
    except jinja2.TemplateError:
        return False
    messages = _loop_names(tree, _aliases(tree, "messages"))
    return bool(_loop_names(tree, messages, "content"))
