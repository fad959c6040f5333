"""The demo's byte-level tokenizer: every byte is a token, so any UTF-8 text round-trips.

Ids 0-3 are the special tokens, id ``BYTE_OFFSET + b`` is byte ``b``. With ``add_special_tokens=True``
a text is framed as ``<bos> text <sep>``: the prompt format the model was trained on, so a raw
``{"inputs": "hello world"}`` is a complete prompt and the model's continuation is the answer
followed by ``<eos>``. The chat template renders the last user message in the same frame.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, SEP = "<pad>", "<bos>", "<eos>", "<sep>"
SPECIAL_TOKENS = (PAD, BOS, EOS, SEP)
PAD_ID, BOS_ID, EOS_ID, SEP_ID = range(4)
BYTE_OFFSET = len(SPECIAL_TOKENS)
VOCAB_SIZE = BYTE_OFFSET + 256
MODEL_MAX_LENGTH = 256

CHAT_TEMPLATE = (
    "{%- set ns = namespace(text='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if message['content'] is string -%}{%- set ns.text = message['content'] -%}"
    "{%- else -%}{%- set ns.text = '' -%}"
    "{%- for part in message['content'] if part['type'] == 'text' -%}"
    "{%- set ns.text = ns.text + part['text'] -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{{ bos_token }}{{ ns.text }}<sep>"
)
"""Renders ``<bos>{last user message}<sep>``; tokenize the result with ``add_special_tokens=False``."""


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (what ``ByteLevel`` works on)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The byte-level tokenizer, with the ``<bos> $A <sep>`` post-processor and the chat template."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({char: BYTE_OFFSET + b for b, char in _byte_to_unicode().items()})
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {SEP}",
        pair=f"{BOS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(BOS, BOS_ID), (SEP, SEP_ID)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        sep_token=SEP,
        model_max_length=MODEL_MAX_LENGTH,
        chat_template=CHAT_TEMPLATE,
    )
    return fast


def save_tokenizer(directory: Path) -> None:
    """Writes tokenizer.json and tokenizer_config.json (which carries the chat template) into ``directory``.

    The config names the class ``PreTrainedTokenizerFast`` and holds the template inline, as engines
    and older transformers versions expect, instead of a separate ``chat_template.jinja``.
    """
    directory = Path(directory)
    build_tokenizer().save_pretrained(directory)
    (directory / "chat_template.jinja").unlink(missing_ok=True)
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.update(tokenizer_class="PreTrainedTokenizerFast", chat_template=CHAT_TEMPLATE)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def text_ids(text: str) -> list[int]:
    """Token ids of ``text`` without framing: one per UTF-8 byte (what the tokenizer gives)."""
    return [BYTE_OFFSET + b for b in text.encode("utf-8")]


def example_ids(source: str, target: str) -> tuple[list[int], list[int]]:
    """A training example ``<bos> source <sep> target <eos>`` and its labels (-100 on the prompt)."""
    prompt = [BOS_ID, *text_ids(source), SEP_ID]
    answer = [*text_ids(target), EOS_ID]
    return prompt + answer, [-100] * len(prompt) + answer
