"""The built-in demo: its tokenizer, its adapters' PEFT files, their accuracy, and training determinism.

The full held-out evaluation (200 inputs, >= 95% for each) is ``python -m loraplex.demo.evaluate``;
here a sample of it runs against a lower threshold so that the test stays quick.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftConfig
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer, GenerationConfig

from loraplex.demo import ADAPTER_NAMES, adapter_dir, adapters_dir, base_model_dir
from loraplex.demo.evaluate import evaluate, load_demo
from loraplex.demo.recipe import ADAPTER_RECIPES, BASE_SCHEDULE, base_config
from loraplex.demo.tasks import HELDOUT_SIZE, MAX_INPUT_CHARS, TRANSFORMS, TrainingInputs, heldout_inputs
from loraplex.demo.tokenizer import BOS_ID, EOS_ID, PAD_ID, SEP_ID, build_tokenizer, text_ids
from loraplex.demo.train import load_base, save_adapter, save_base, train_adapter, train_base
from loraplex.demo.words import HELDOUT_WORDS

SAMPLE = 20
SAMPLE_THRESHOLD = 0.9


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(base_model_dir())


@pytest.fixture(scope="module")
def demo():
    return load_demo()


@pytest.fixture
def torch_state() -> Iterator[None]:
    """Training pins threads and deterministic algorithms process-wide; put them back afterwards."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng():
        yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    torch.set_flush_denormal(False)


def random_text(rng: random.Random) -> str:
    """Random text over ASCII, control characters, accents, CJK and emoji."""
    ranges = [(0x00, 0x7F), (0xA0, 0x24F), (0x4E00, 0x4FFF), (0x1F300, 0x1F64F)]
    chars = []
    for _ in range(rng.randint(0, 40)):
        low, high = rng.choice(ranges)
        chars.append(chr(rng.randint(low, high)))
    return "".join(chars)


def test_tokenizer_round_trips_any_utf8_text(tokenizer) -> None:
    assert tokenizer.is_fast
    rng = random.Random(0)
    texts = [
        "hello world",
        "",
        " leading and trailing ",
        "tab\tnew\nline",
        "héllo wörld 🌍 日本語",
        "<b>x</b>",
    ]
    texts += [random_text(rng) for _ in range(200)]
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert ids == text_ids(text), text
        assert tokenizer.decode(ids) == text


def test_tokenizer_frames_raw_text_as_a_prompt(tokenizer) -> None:
    ids = tokenizer("hello world").input_ids
    assert ids == [BOS_ID, *text_ids("hello world"), SEP_ID]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "hello world"
    assert (
        tokenizer.decode([*ids, *text_ids("HELLO"), EOS_ID, PAD_ID], skip_special_tokens=True)
        == "hello worldHELLO"
    )
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        BOS_ID,
        EOS_ID,
        PAD_ID,
    )


def test_chat_template_renders_the_last_user_message_in_the_same_frame(tokenizer) -> None:
    messages = [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "FIRST"},
        {"role": "user", "content": "hello world"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<bos>hello world<sep>"
    assert tokenizer.encode(text, add_special_tokens=False) == tokenizer("hello world").input_ids
    parts = [
        {"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "world"}]}
    ]
    assert tokenizer.apply_chat_template(parts, tokenize=False) == "<bos>hello world<sep>"


def test_shipped_files_match_the_code_that_builds_them() -> None:
    shipped = json.loads((base_model_dir() / "tokenizer.json").read_text())
    assert shipped == json.loads(build_tokenizer().backend_tokenizer.to_str())
    tokenizer_config = json.loads((base_model_dir() / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (tokenizer_config["bos_token"], tokenizer_config["eos_token"]) == ("<bos>", "<eos>")
    assert tokenizer_config["pad_token"] == "<pad>" and "chat_template" in tokenizer_config
    shipped_config, expected = AutoConfig.from_pretrained(base_model_dir()).to_dict(), base_config().to_dict()
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_key_value_heads", "rope_parameters"):
        assert shipped_config[key] == expected[key], key
    assert (shipped_config["eos_token_id"], shipped_config["architectures"]) == (EOS_ID, ["LlamaForCausalLM"])
    assert GenerationConfig.from_pretrained(base_model_dir()).eos_token_id == EOS_ID


@pytest.mark.parametrize("name", ADAPTER_NAMES)
def test_adapters_are_plain_peft_lora_with_their_own_rank(name: str) -> None:
    config = PeftConfig.from_pretrained(adapter_dir(name))
    assert isinstance(config, LoraConfig)
    assert config.r == ADAPTER_RECIPES[name].rank
    assert config.lora_alpha == ADAPTER_RECIPES[name].alpha
    assert (
        not config.use_dora
        and not config.use_rslora
        and config.modules_to_save is None
        and config.bias == "none"
    )
    assert set(config.target_modules) == set(ADAPTER_RECIPES[name].target_modules)
    layers = AutoConfig.from_pretrained(base_model_dir()).num_hidden_layers
    with safe_open(adapter_dir(name) / "adapter_model.safetensors", "pt") as weights:
        keys = sorted(weights.keys())
        assert len(keys) == 2 * layers * len(config.target_modules)
        assert all(".lora_A.weight" in key or ".lora_B.weight" in key for key in keys)
        assert {weights.get_slice(key).get_shape()[0] for key in keys if "lora_A" in key} == {config.r}


def test_adapter_ranks_differ() -> None:
    ranks = {PeftConfig.from_pretrained(adapter_dir(name)).r for name in ADAPTER_NAMES}
    assert len(ranks) == len(ADAPTER_NAMES)
    assert sorted(path.name for path in adapters_dir().iterdir()) == sorted(ADAPTER_NAMES)


def test_heldout_inputs_are_fixed_modest_and_never_trained_on() -> None:
    heldout = heldout_inputs()
    assert len(set(heldout)) == HELDOUT_SIZE and heldout_inputs(SAMPLE) == heldout[:SAMPLE]
    assert all(0 < len(text) <= MAX_INPUT_CHARS for text in heldout)
    training = TrainingInputs(seed=0).take(20_000)
    assert not set(training) & set(heldout)
    assert not {word for text in training for word in text.lower().split()} & set(HELDOUT_WORDS)


def test_base_and_adapters_transform_a_heldout_sample(demo) -> None:
    model, tokenizer = demo
    results = evaluate(model, tokenizer, heldout_inputs(SAMPLE))
    for name, (rate, misses) in results.items():
        assert rate >= SAMPLE_THRESHOLD, (name, misses)


def test_one_request_per_adapter_comes_back_transformed(demo) -> None:
    model, tokenizer = demo
    results = evaluate(model, tokenizer, ["hello world"])
    assert {name: rate for name, (rate, _) in results.items()} == dict.fromkeys(results, 1.0)
    assert TRANSFORMS["rot13"]("hello world") == "uryyb jbeyq"


def tiny(schedule, steps: int = 3):
    return dataclasses.replace(schedule, steps=steps, batch_size=8, buckets=2, warmup=2)


def test_training_is_deterministic(torch_state, tmp_path: Path) -> None:
    first, second = train_base(tiny(BASE_SCHEDULE), log=print), train_base(tiny(BASE_SCHEDULE), log=print)
    other = train_base(dataclasses.replace(tiny(BASE_SCHEDULE), seed=BASE_SCHEDULE.seed + 1), log=print)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    assert not torch.equal(first.lm_head.weight, other.lm_head.weight)

    save_base(first, tmp_path / "base")
    recipe = dataclasses.replace(
        ADAPTER_RECIPES["reverse"], schedule=tiny(ADAPTER_RECIPES["reverse"].schedule, 2)
    )
    for run in ("a", "b"):
        save_adapter(train_adapter(load_base(tmp_path / "base"), recipe, log=print), tmp_path / run)
    for filename in ("adapter_config.json", "adapter_model.safetensors"):
        assert (tmp_path / "a" / filename).read_bytes() == (tmp_path / "b" / filename).read_bytes(), filename
    assert sorted(path.name for path in (tmp_path / "a").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
