"""Streaming detokenization: the fast window decoder is tokenizer.decode, and the streamed pieces add
up to the whole text."""

import random

import pytest

from loraplex.server.tokenizer import IncrementalDetokenizer, load_tokenizer, window_decoder

from .conftest import ARCHITECTURES


def windows(tokenizer, count=200, seed=0):
    rng = random.Random(seed)
    special = list(tokenizer.all_special_ids)
    for _ in range(count):
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randrange(1, 12))]
        if special and rng.random() < 0.3:
            ids.insert(rng.randrange(len(ids) + 1), rng.choice(special))
        yield ids


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_window_decoder_is_tokenizer_decode(arch, model_dirs):
    tokenizer = load_tokenizer(model_dirs[arch])
    decode = window_decoder(tokenizer)
    for ids in windows(tokenizer):
        assert decode(ids) == tokenizer.decode(ids, skip_special_tokens=False)


def test_tokenizers_that_clean_up_spaces_keep_transformers_decode(model_dirs):
    tokenizer = load_tokenizer(model_dirs["llama"])
    tokenizer.clean_up_tokenization_spaces = True
    decode = window_decoder(tokenizer)
    calls = []
    original = tokenizer.decode
    tokenizer.decode = lambda ids, **kwargs: calls.append(ids) or original(ids, **kwargs)
    ids = tokenizer("Hello , world .").input_ids
    assert decode(ids) == original(ids, skip_special_tokens=False)
    assert calls == [ids]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_streamed_pieces_add_up_to_the_whole_text(arch, model_dirs):
    tokenizer = load_tokenizer(model_dirs[arch])
    prompt = tokenizer("The quick brown fox").input_ids
    generated = tokenizer(" jumps over the lazy dog, twice; then 12 + 30 = 42!").input_ids
    detokenizer = IncrementalDetokenizer(tokenizer, prompt)
    pieces = [detokenizer.add(token) for token in generated]
    pieces.append(detokenizer.flush())
    assert "".join(pieces) == tokenizer.decode(prompt + generated)[len(tokenizer.decode(prompt)) :]


def test_text_held_back_before_a_special_token_is_kept_for_stop_checks(model_dirs):
    """An incomplete character is held back; a special token after it (an end-of-sequence token under
    ignore_eos) releases it with the special token's own text. The text kept for stop checks has the
    released part, as the final text has, so a stop sequence in it ends generation there. (Here the
    replacement character the lone byte decodes to; real tokenizers have tokens such as " \\xe2\\x80" that
    hold back a whole space with the partial character.)"""
    tokenizer = load_tokenizer(model_dirs["llama"])
    lone_byte = tokenizer.convert_tokens_to_ids("\u00c3")  # byte 0xC3 in byte-level BPE: starts "é"
    eos = tokenizer.eos_token_id
    detokenizer = IncrementalDetokenizer(tokenizer, tokenizer("Hi").input_ids, stop=("\ufffd",))
    assert detokenizer.add(lone_byte) == "" and detokenizer.text == ""
    delta = detokenizer.add(eos)
    assert delta == "\ufffd" + tokenizer.eos_token
    assert detokenizer.text == "\ufffd" == detokenizer.final_text([lone_byte, eos])
    assert detokenizer.stop_matched(delta)
