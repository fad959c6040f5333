"""Where a model comes from: sharded safetensors with an index, and a hub id in the local HF cache."""

import shutil

import torch
from transformers import AutoModelForCausalLM

from loraplex.server.models.loader import resolve_model_path, safetensors_files

from .reference import assert_matches_reference, capture_logits
from .test_engine_matches_transformers import PROMPTS, greedy_request, make_engine


def test_sharded_checkpoint_loads_and_matches(tmp_path, model_dirs, references):
    sharded = tmp_path / "sharded"
    model = AutoModelForCausalLM.from_pretrained(model_dirs["qwen2"], dtype=torch.float32)
    model.save_pretrained(sharded, max_shard_size="100KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model_dirs["qwen2"] / name, sharded / name)
    files = safetensors_files(sharded)
    assert len(files) > 1 and (sharded / "model.safetensors.index.json").is_file()
    engine = make_engine(sharded)
    records = capture_logits(engine)
    request = greedy_request(engine, PROMPTS[0], 8, "sharded")
    engine.generate([request])
    assert_matches_reference(references["qwen2"], request, records)


def test_hub_id_resolves_through_the_local_cache_offline(tmp_path, model_dirs, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    snapshot = repo / "snapshots" / revision
    shutil.copytree(model_dirs["llama"], snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    path = resolve_model_path("acme/tiny-llama")
    assert path == snapshot
    engine = make_engine("acme/tiny-llama")
    assert engine.info.architecture == "LlamaForCausalLM"
