"""Background loading: a slow load stalls nobody, concurrent requests load once, the API and tiers."""

import asyncio
import logging
import threading
import time

import httpx
import pytest
from adapter_factory import build_adapter, edit_config
from server_harness import serve

from loraplex.server.config import EngineConfig
from loraplex.server.request import SamplingParams

from .test_mixed_batches_match_peft import make_engine, make_request


def test_slow_load_does_not_delay_resident_adapter_steps(base_dir, adapter_root):
    engine = make_engine(base_dir, adapter_root, preload_adapters=("acme/attn-r4",))
    read = engine.adapters.read
    release = threading.Event()

    def slow_read(location):
        if location.adapter_id == "acme/all-r64":
            release.wait(timeout=30)
        return read(location)

    engine.adapters.read = slow_read
    resident = make_request(engine, "acme/attn-r4", "Hello world", 30, "resident")
    cold = make_request(engine, "acme/all-r64", "Hello world", 5, "cold")
    engine.submit(cold)
    engine.submit(resident)
    steps_while_loading = 0
    while not resident.is_finished:
        engine.step()
        assert engine.last_step_ran, "a step stalled while the cold adapter was loading"
        steps_while_loading += 1
    assert steps_while_loading == 30 and cold.num_output_tokens == 0
    release.set()
    engine.generate([])
    assert cold.is_finished and cold.num_output_tokens == 5


def test_concurrent_requests_for_one_cold_adapter_load_it_once(base_dir, adapter_root):
    engine = make_engine(base_dir, adapter_root)
    reads = []
    read = engine.adapters.read

    def counting_read(location):
        reads.append(location.adapter_id)
        time.sleep(0.2)
        return read(location)

    engine.adapters.read = counting_read
    requests = [make_request(engine, "acme/mlp-r8", "Hello", 4, f"r{i}") for i in range(5)]
    engine.generate(requests)
    assert reads == ["acme/mlp-r8"]
    assert all(r.num_output_tokens == 4 for r in requests)
    assert engine.adapters.stats.loads == 1


def test_a_small_host_cache_never_drops_an_adapter_its_waiting_requests_need(base_dir, adapter_root):
    """One slot, room for one adapter in host memory, four adapters wanted at once: every read from disk
    ends in a slot (before, a load that finished dropped the host copy of the one loaded before it, still
    waiting for the slot, so that one was read again, over and over)."""
    engine = make_engine(base_dir, adapter_root, max_active_adapters=1, adapter_cpu_cache=1)
    activations = []
    write = engine.adapters.slots.write

    def counting_write(slot, weights, stream=None):
        activations.append(slot)
        return write(slot, weights, stream=stream)

    engine.adapters.slots.write = counting_write
    names = ["acme/attn-r4", "acme/mlp-r8", "acme/all-r16-rslora", "acme/patterns"]
    requests = [make_request(engine, names[i % 4], "Hello world", 3, f"r{i}") for i in range(16)]
    engine.generate(requests)
    assert all(r.num_output_tokens == 3 for r in requests)
    assert engine.adapters.stats.loads == len(activations), (engine.adapters.stats, len(activations))


def test_an_adapter_trained_on_another_base_is_warned_about_once(base_dir, tmp_path, caplog):
    """Evicted and read back from disk again and again, it is named in the log once."""
    for name, seed in (("other", 1), ("second", 2)):
        build_adapter(base_dir, tmp_path / name, seed=seed, r=4, target_modules=["q_proj"])
    edit_config(tmp_path / "other", base_model_name_or_path="someone/another-model")
    engine = make_engine(base_dir, tmp_path, max_active_adapters=1, adapter_cpu_cache=1)
    caplog.set_level(logging.WARNING, logger="loraplex")
    for i in range(3):
        engine.generate(
            [make_request(engine, name, "Hello world", 2, f"{name}{i}") for name in ("other", "second")]
        )
    assert engine.adapters.stats.loads >= 4  # "other" was read from disk more than once
    warnings = [r.getMessage() for r in caplog.records if "was trained on" in r.getMessage()]
    assert warnings == [
        "adapter 'other' was trained on 'someone/another-model', serving it on "
        f"{engine.info.model_id!r} (shapes fit)"
    ]


def test_an_adapter_trained_on_the_served_model_name_is_not_warned_about(base_dir, tmp_path, caplog):
    """The base model is known by its served name too (the demo serves a folder as `loraplex-demo`)."""
    build_adapter(base_dir, tmp_path / "named", seed=4, r=4, target_modules=["q_proj"])
    edit_config(tmp_path / "named", base_model_name_or_path="acme/base-model")
    engine = make_engine(base_dir, tmp_path, served_model_name="acme/base-model")
    caplog.set_level(logging.WARNING, logger="loraplex")
    engine.generate([make_request(engine, "named", "Hello world", 2, "named")])
    assert engine.adapters.stats.loads == 1
    assert not [r for r in caplog.records if "was trained on" in r.getMessage()]


def test_one_adapter_under_several_spellings_loads_once(base_dir, adapter_root):
    """`acme/mlp-r8`, `./acme/mlp-r8` and its absolute path are one folder: one load, one slot."""
    engine = make_engine(base_dir, adapter_root)
    spellings = ["acme/mlp-r8", "./acme/mlp-r8", "acme//mlp-r8", str(adapter_root / "acme" / "mlp-r8")]
    requests = [make_request(engine, spelling, "Hello", 4, f"r{i}") for i, spelling in enumerate(spellings)]
    engine.generate(requests)
    assert engine.adapters.stats.loads == 1 and len(engine.adapters.entries()) == 1
    assert len({tuple(r.output_token_ids) for r in requests}) == 1


@pytest.fixture(scope="module")
def server(base_dir, adapter_root):
    config = EngineConfig(
        model_id=str(base_dir),
        max_batch_total_tokens=4096,
        adapter_dirs=(str(adapter_root),),
        max_active_adapters=2,
        adapter_cpu_cache=3,
    )
    with serve(config) as running:
        yield running


def test_adapters_route_reports_tiers_and_counts(server):
    url = server.url
    assert httpx.get(url + "/adapters").json()["adapters"] == []
    loaded = httpx.post(url + "/adapters/load", json={"adapter_id": "acme/attn-r4"}, timeout=30)
    assert loaded.status_code == 200
    assert loaded.json()["tier"] == "gpu" and loaded.json()["rank"] == 4
    for _ in range(2):
        r = httpx.post(
            url + "/generate",
            json={"inputs": "Hi", "parameters": {"adapter_id": "acme/attn-r4", "max_new_tokens": 2}},
        )
        assert r.status_code == 200 and r.headers["x-adapter-id"] == "acme/attn-r4"
        assert r.headers["x-adapter-source"] == "local"
    for name in ("mlp-r8", "all-r16-rslora", "regex-r6"):
        r = httpx.post(
            url + "/generate",
            json={"inputs": "Hi", "parameters": {"adapter_id": f"acme/{name}", "max_new_tokens": 2}},
        )
        assert r.status_code == 200
    listing = {a["adapter_id"]: a for a in httpx.get(url + "/adapters").json()["adapters"]}
    assert listing["acme/attn-r4"]["requests"] == 2
    assert listing["acme/regex-r6"]["tier"] == "gpu" and listing["acme/regex-r6"]["rank"] == 6
    assert sum(a["tier"] == "gpu" for a in listing.values()) == 2
    assert sum(a["tier"] == "cpu" for a in listing.values()) <= 3 - 2
    assert listing["acme/attn-r4"]["tier"] == "disk" and all(a["bytes"] for a in listing.values())
    assert server.engine.adapters.stats.evictions >= 2
    info = httpx.get(url + "/info").json()
    assert info["adapters"]["gpu"] == 2 and info["max_active_adapters"] == 2


def test_unload_and_reload(server):
    url = server.url
    httpx.post(url + "/adapters/load", json={"adapter_id": "acme/patterns"}, timeout=30)
    evictions = server.engine.adapters.stats.evictions
    unloaded = httpx.post(url + "/adapters/unload", json={"adapter_id": "acme/patterns"})
    assert unloaded.status_code == 200
    assert (unloaded.json()["tier"], unloaded.json()["status"]) == ("disk", "unloaded")
    assert server.engine.adapters.stats.evictions == evictions  # asked for, not chosen by the cache
    listing = {a["adapter_id"]: a for a in httpx.get(url + "/adapters").json()["adapters"]}
    assert listing["acme/patterns"]["tier"] == "disk"
    again = httpx.post(url + "/adapters/unload", json={"adapter_id": "acme/patterns"})
    assert again.status_code == 404 and again.json()["error_type"] == "adapter_not_loaded"
    r = httpx.post(
        url + "/generate",
        json={"inputs": "Hi", "parameters": {"adapter_id": "acme/patterns", "max_new_tokens": 2}},
    )
    assert r.status_code == 200


def test_unload_refused_while_in_use(server):
    url = server.url

    async def scenario():
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            body = {
                "inputs": "Hi",
                "parameters": {"adapter_id": "acme/all-r64", "max_new_tokens": 150, "ignore_eos_token": True},
            }
            running = asyncio.ensure_future(client.post("/generate", json=body))
            for _ in range(200):
                await asyncio.sleep(0.02)
                if server.engine.num_running:
                    break
            refused = await client.post("/adapters/unload", json={"adapter_id": "acme/all-r64"})
            return refused, await running

    refused, finished = asyncio.run(scenario())
    assert refused.status_code == 409 and refused.json()["error_type"] == "adapter_in_use"
    assert finished.status_code == 200


def test_load_api_reports_failures(server, tmp_path):
    r = httpx.post(server.url + "/adapters/load", json={"adapter_id": "acme/nothing-here"}, timeout=30)
    assert r.status_code == 424 and r.json()["error_type"] == "adapter_not_found"
    r = httpx.post(server.url + "/adapters/load", json={"adapter_id": "../x"}, timeout=30)
    assert r.status_code == 422


def test_base_model_and_adapter_requests_mixed_over_http(server, base_dir):
    """The model's own id and an empty id both mean the base model."""
    url = server.url
    plain = httpx.post(
        url + "/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 5, "details": True}}
    ).json()
    for adapter_id in ("", str(base_dir)):
        r = httpx.post(
            url + "/generate",
            json={
                "inputs": "Hi",
                "parameters": {"max_new_tokens": 5, "details": True, "adapter_id": adapter_id},
            },
        )
        assert r.json()["details"]["tokens"] == plain["details"]["tokens"]
        assert "x-adapter-id" not in r.headers


def test_preload_leaves_dynamic_loading_on(base_dir, adapter_root):
    engine = make_engine(base_dir, adapter_root, preload_adapters=("acme/mlp-r8",))
    assert {e.location.adapter_id: e.tier for e in engine.adapters.entries()} == {"acme/mlp-r8": "gpu"}
    request = make_request(engine, "acme/attn-r4", "Hello", 3, "dyn")
    engine.generate([request])
    assert request.num_output_tokens == 3
    assert SamplingParams  # noqa: B018 - keep import used for readers of this module
