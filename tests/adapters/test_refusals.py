"""Every adapter the engine refuses: status, error_type and a message naming the cause; and the engine
keeps serving everyone else. Ids that escape the adapter roots are refused before anything is read."""

import json
import os
import shutil

import httpx
import pytest
from adapter_factory import build_adapter, edit_config
from server_harness import serve

from loraplex.server.config import EngineConfig

GOOD = "acme/attn-r4"


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory, base_dir, adapter_root):
    root = tmp_path_factory.mktemp("bad-root")
    good = adapter_root / "acme" / "attn-r4"

    def variant(name, **config):
        target = root / name
        shutil.copytree(good, target)
        if config:
            edit_config(target, **config)
        return target

    variant("dora", use_dora=True)
    variant("modules-to-save", modules_to_save=["lm_head"])
    variant("bias", bias="all")
    variant("lora-bias", lora_bias=True)
    variant("too-big-rank", r=128, lora_alpha=8)
    variant("prefix-tuning", peft_type="PREFIX_TUNING")
    variant("embedding-target", target_modules=["embed_tokens", "q_proj"])
    (variant("truncated") / "adapter_model.safetensors").write_bytes(
        (good / "adapter_model.safetensors").read_bytes()[:200]
    )
    (variant("not-json") / "adapter_config.json").write_text("{not json")
    (variant("no-weights") / "adapter_model.safetensors").unlink()
    build_adapter(base_dir, root / "wrong-shapes-source", seed=3, r=4, target_modules=["q_proj"])
    wrong = variant("wrong-shapes")
    from safetensors.torch import load_file, save_file

    tensors = load_file(good / "adapter_model.safetensors")
    key = next(k for k in tensors if "q_proj.lora_B" in k)
    tensors[key] = tensors[key][:10]
    save_file(tensors, wrong / "adapter_model.safetensors")
    other_arch = variant("other-architecture")
    tensors = load_file(good / "adapter_model.safetensors")
    save_file(
        {
            k.replace("model.layers", "transformer.h").replace("self_attn.q_proj", "attn.c_attn"): v
            for k, v in tensors.items()
        },
        other_arch / "adapter_model.safetensors",
    )
    edit_config(other_arch, target_modules=["c_attn"])
    other_base = variant("other-base-name", base_model_name_or_path="someone/another-model")
    # A symlink inside the root that leads out of it.
    outside = tmp_path_factory.mktemp("outside") / "secret-adapter"
    shutil.copytree(good, outside)
    os.symlink(outside, root / "escape")
    (root / "acme").mkdir()
    shutil.copytree(good, root / "acme" / "good")
    return root, outside, other_base


@pytest.fixture(scope="module")
def server(base_dir, bad_root):
    root, _, _ = bad_root
    config = EngineConfig(
        model_id=str(base_dir), max_batch_total_tokens=4096, adapter_dirs=(str(root),), max_lora_rank=64
    )
    with serve(config) as running:
        yield running


def generate(server, adapter_id, source=None, stream=False):
    parameters = {"max_new_tokens": 4, "adapter_id": adapter_id}
    if source:
        parameters["adapter_source"] = source
    route = "/generate_stream" if stream else "/generate"
    return httpx.post(server.url + route, json={"inputs": "Hello", "parameters": parameters}, timeout=30)


LOAD_REFUSALS = [
    ("dora", "adapter_unsupported", "use_dora"),
    ("modules-to-save", "adapter_unsupported", "modules_to_save"),
    ("bias", "adapter_unsupported", "bias"),
    ("lora-bias", "adapter_unsupported", "lora_bias"),
    ("too-big-rank", "adapter_unsupported", "r: rank 128 exceeds --max-lora-rank 64"),
    ("prefix-tuning", "adapter_unsupported", "peft_type 'PREFIX_TUNING'"),
    ("embedding-target", "adapter_unsupported", "target_modules"),
    ("wrong-shapes", "adapter_unsupported", "do not fit the base model"),
    ("other-architecture", "adapter_unsupported", "target_modules: 'transformer.h.0.attn.c_attn'"),
    ("truncated", "adapter_load_failed", "adapter_model.safetensors is unreadable or truncated"),
    ("not-json", "adapter_load_failed", "adapter_config.json is not readable JSON"),
    ("no-weights", "adapter_load_failed", "expected adapter_model.safetensors"),
    ("missing", "adapter_not_found", "not found"),
]


@pytest.mark.parametrize(
    ("adapter_id", "error_type", "fragment"), LOAD_REFUSALS, ids=[c[0] for c in LOAD_REFUSALS]
)
def test_unservable_adapters_are_424_naming_the_cause(server, adapter_id, error_type, fragment):
    response = generate(server, adapter_id)
    assert response.status_code == 424, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"}
    assert body["error_type"] == error_type
    assert adapter_id in body["error"] and fragment in body["error"], body["error"]
    ok = generate(server, "acme/good")
    assert ok.status_code == 200 and ok.headers["x-adapter-id"] == "acme/good"
    server.wait_idle()


def test_refusal_in_a_stream_is_one_error_event(server):
    response = generate(server, "dora", stream=True)
    events = [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]
    assert events == [{"error": events[0]["error"], "error_type": "adapter_unsupported"}]
    assert "use_dora" in events[0]["error"]


PATH_REFUSALS = [
    ("../outside", None, "`..` is not allowed"),
    ("acme/../../etc", "local", "`..` is not allowed"),
    ("/etc", None, "absolute paths must lie inside an --adapter-dir root"),
    ("escape", None, "leads outside the --adapter-dir roots"),
    ("escape", "local", "leads outside the --adapter-dir roots"),
    ("acme/good", "s3", "adapter_source 's3' is not supported"),
    ("not a hub id", "hub", "a hub adapter id looks like 'owner/name'"),
    ("x" * 5000, None, "a path component is longer than 255 bytes"),
    (".", None, "names an --adapter-dir root, not an adapter in it"),
    ("acme/..", "local", "`..` is not allowed"),
]


@pytest.mark.parametrize(
    ("adapter_id", "source", "fragment"), PATH_REFUSALS, ids=[f"{c[0][:20]}-{c[1]}" for c in PATH_REFUSALS]
)
def test_ids_escaping_the_roots_are_422_before_any_read(server, adapter_id, source, fragment, bad_root):
    _, outside, _ = bad_root
    before = (outside / "adapter_config.json").stat().st_atime_ns
    response = generate(server, adapter_id, source)
    assert response.status_code == 422
    body = response.json()
    assert body["error_type"] == "validation" and fragment in body["error"], body
    assert str(server.engine.adapters.sources.roots[0]) not in body["error"]  # no server path shown
    assert (outside / "adapter_config.json").stat().st_atime_ns == before
    if adapter_id != "acme/good":
        assert all(e.location.adapter_id != adapter_id for e in server.engine.adapters.entries())


def test_local_source_never_falls_back_to_the_hub(server):
    response = generate(server, "acme/not-there", "local")
    assert response.status_code == 424 and response.json()["error_type"] == "adapter_not_found"


def test_different_base_model_name_is_a_warning_only(server, caplog):
    with caplog.at_level("WARNING"):
        response = generate(server, "other-base-name")
    assert response.status_code == 200
    assert any("someone/another-model" in r.getMessage() for r in caplog.records)


def test_a_failed_load_can_be_retried(server, bad_root):
    root, _, _ = bad_root
    target = root / "fixed-later"
    shutil.copytree(root / "acme" / "good", target)
    weights = (target / "adapter_model.safetensors").read_bytes()
    (target / "adapter_model.safetensors").unlink()
    assert generate(server, "fixed-later").status_code == 424
    (target / "adapter_model.safetensors").write_bytes(weights)
    assert generate(server, "fixed-later").status_code == 200
