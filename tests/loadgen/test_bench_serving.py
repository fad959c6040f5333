"""The serving benchmark's pieces, and its GPU configuration's code path run end to end with tiny shapes
on CPU (so the command that only runs on a GPU machine does not rot)."""

import dataclasses
import json
import math
import os

import pytest
import torch
from safetensors import safe_open

from benchmarks import bench_serving, bench_serving_build
from benchmarks.bench_serving import run_config
from benchmarks.bench_serving_build import (
    LLAMA3_8B,
    TINY,
    adapter_bytes,
    llama_tensors,
    write_random_adapters,
    write_random_model,
)
from benchmarks.bench_serving_configs import TINY_GPU
from benchmarks.bench_serving_floor import copy_bandwidth, floor_fraction, step_bytes


def test_random_model_shards_load_in_transformers_and_our_loader(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from loraplex.server.models.loader import check_model_folder, safetensors_files

    monkeypatch.setattr(bench_serving_build, "_SHARD_BYTES", 40_000)
    folder = write_random_model(tmp_path / "m", TINY, torch.bfloat16, "cpu", seed=3)
    files = safetensors_files(folder)
    assert len(files) > 1
    check_model_folder(folder)
    expected = dict(llama_tensors(TINY))
    seen = {}
    for file in files:
        with safe_open(file, framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118
                seen[name] = handle.get_tensor(name)
    assert {n: tuple(t.shape) for n, t in seen.items()} == expected
    assert seen["model.norm.weight"].eq(1).all()
    assert 0.015 < seen["lm_head.weight"].float().std() < 0.025
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    assert torch.equal(model.lm_head.weight, seen["lm_head.weight"])
    assert write_random_model(tmp_path / "m", TINY, torch.bfloat16, "cpu", seed=3) == folder  # reused


def test_adapters_past_unique_hard_link_earlier_weights(tmp_path):
    model = write_random_model(tmp_path / "m", TINY, torch.float32, "cpu")
    ids = write_random_adapters(model, tmp_path / "a", count=5, rank=4, unique=2, dtype=torch.float32)
    assert ids == [f"bench-r4-{i}" for i in range(5)]
    inode = [os.stat(tmp_path / "a" / i / "adapter_model.safetensors").st_ino for i in ids]
    assert inode[2] == inode[0] and inode[3] == inode[1] and inode[0] != inode[1]
    config = json.loads((tmp_path / "a" / ids[4] / "adapter_config.json").read_text())
    assert config["r"] == 4 and len(config["target_modules"]) == 7


def test_step_bytes_by_hand():
    # TINY: hidden 64, inter 128, 2 layers, 4 heads (head_dim 16), 2 KV heads, vocab 512; bf16.
    per_layer = 64 * 64 * 2 + 32 * 64 * 2 + 3 * 64 * 128 + 2 * 64  # q,o + k,v + mlp + norms
    weights = (2 * per_layer + 64 + 512 * 64 + 4 * 64) * 2  # layers, final norm, lm_head, 4 embedding rows
    need = step_bytes(TINY, 2, batch=4, context=9, distinct_adapters=3, rank=8)
    assert need["weights"] == weights
    assert need["kv"] == 4 * 10 * (2 * 2 * 2 * 16 * 2)
    # rank x (in + out) of q, k, v, o, gate, up, down, in 2 layers, 2 bytes each
    assert adapter_bytes(TINY, 8, 2) == 2 * 8 * (128 + 96 + 96 + 128 + 192 + 192 + 192) * 2
    assert need["adapters"] == 3 * adapter_bytes(TINY, 8, 2)
    assert need["total"] == need["weights"] + need["kv"] + need["adapters"]


def test_llama3_8b_adapter_and_weight_bytes():
    params = sum(math.prod(s) for _, s in llama_tensors(LLAMA3_8B))
    assert params == pytest.approx(8.03e9, rel=0.01)
    assert adapter_bytes(LLAMA3_8B, 16, 2) == 32 * 16 * (2 * 8192 + 2 * 5120 + 3 * 18432) * 2


def test_floor_fraction_and_bandwidth():
    assert copy_bandwidth("cpu", 1 << 20, repeats=2) > 1e8
    run = {"distinct_adapters": 10, "summary": {"itl_s": {"p50": 0.02}, "output_tokens_per_s": 100.0}}
    floor = floor_fraction(run, TINY, 2, bandwidth=1e9, batch=4, context=9, rank=8)
    assert floor["distinct_adapters_per_step"] == 4
    assert floor["floor_step_s"] == pytest.approx(floor["bytes"]["total"] / 1e9)
    assert floor["fraction_of_floor_step"] == pytest.approx(floor["floor_step_s"] / 0.02)
    assert floor["fraction_of_floor_throughput"] == pytest.approx(100.0 / (4 / floor["floor_step_s"]))


def test_gpu_config_code_path_runs_with_tiny_shapes_on_cpu(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_serving, "work_dir", lambda needed: tmp_path / "work")
    config = dataclasses.replace(
        TINY_GPU, adapter_counts=(1, 3), num_requests=6, output_len="3", concurrency=3, peft_order=(3, 0),
        peft_requests=3, unique_adapters=2,
    )  # fmt: skip
    out = tmp_path / "serving_gpu_tiny.json"
    report = run_config(config, out, tmp_path / "plot", progress=False)
    assert json.loads(out.read_text())["config"] == "gpu-tiny"
    assert [r["name"] for r in report["runs"]] == [
        "loraplex 1 adapters",
        "loraplex 3 adapters",
        "loraplex base model",
        "peft 3 adapters",
        "transformers base model",
    ]
    for run in report["runs"]:
        assert run["summary"]["failed"] == 0, run["summary"].get("errors")
        assert run["summary"]["length_mismatches"] == 0 or run["system"] != "loraplex"
    assert report["server"]["model_dtype"] == "bfloat16"
    floor = report["runs"][1]["byte_floor"]
    assert floor["distinct_adapters_per_step"] == 3 and floor["fraction_of_floor_step"] > 0
    assert report["comparisons"]["vs_peft"][3] > 0
    assert {"environment", "workload", "comparisons", "timing_s", "options"} <= set(report)
    assert report["options"]["budget_s"] == config.budget_s
    assert report["workload"]["adapter_pool"] == 3 and report["workload"]["adapter_counts"] == [1, 3]
    assert len(list(tmp_path.glob("plot_*.png"))) == 3


def test_decode_step_benchmark_times_the_engine_without_http(tmp_path, monkeypatch):
    from benchmarks import bench_decode_step

    monkeypatch.setattr(bench_serving, "work_dir", lambda needed: tmp_path / "work")
    config = dataclasses.replace(TINY_GPU, adapter_counts=(1, 2), concurrency=2, unique_adapters=2)
    report = bench_decode_step.measure(config, (0, 1, 2), passes=2)
    assert report["batch"] == 2 and report["passes"] == 2 and report["cuda_graphs"] is False
    steps = report["steps"]
    assert set(steps) == {"0", "1", "2"}
    new_tokens = bench_decode_step.LENGTHS["gpu-tiny"][1]
    for n, entry in steps.items():
        # every step after the prefill and the first decode one, in each of the two passes
        assert entry["steps"] == 2 * (new_tokens - 2)
        assert entry["distinct_adapters"] == int(n)
        assert 0 < entry["runner_ms"] <= entry["step_ms"] and entry["min_step_ms"] <= entry["step_ms"]
        assert entry["rest_ms"] == pytest.approx(entry["step_ms"] - entry["runner_ms"])
        assert entry["fraction_of_floor"] == pytest.approx(entry["floor_ms"] / entry["step_ms"])
    assert steps["0"]["lora_cost_ms"] is None
    assert steps["2"]["lora_cost_ms"] == pytest.approx(steps["2"]["step_ms"] - steps["0"]["step_ms"])
    assert steps["2"]["floor_ms"] > steps["1"]["floor_ms"] > steps["0"]["floor_ms"]  # adapter bytes
    assert "LoRA cost ms" in bench_decode_step.table(report)


SPINNER = """
import sys, threading, time

def spin(seconds):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass

def step(name):  # say where we are, then wait for the go-ahead (a thread that ends leaves /proc)
    print(name, flush=True)
    sys.stdin.readline()

step("ready")
spin(0.3)
step("main spun")
worker = threading.Thread(target=lambda: (spin(0.3), step("worker spun")))
worker.start()
worker.join()
"""


def test_thread_cpu_seconds_tells_the_main_thread_from_the_others():
    import subprocess
    import sys

    from benchmarks.bench_http_stack import thread_cpu_seconds

    # A process of its own: the test process may have busy threads of its own.
    child = subprocess.Popen(
        [sys.executable, "-c", SPINNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    samples = []
    try:
        for expected in ("ready", "main spun", "worker spun"):
            assert child.stdout.readline().strip() == expected
            samples.append(thread_cpu_seconds(child.pid))
            child.stdin.write("go\n")
            child.stdin.flush()
        assert child.wait(timeout=30) == 0
    finally:
        child.kill()
    (main0, others0), (main1, others1), (main2, others2) = samples
    assert main1 - main0 >= 0.25 and others1 - others0 < 0.1
    assert others2 - others1 >= 0.25 and main2 - main1 < 0.1


def test_http_stack_benchmark_serves_each_stack_it_names(tmp_path, monkeypatch):
    from benchmarks import bench_http_stack

    monkeypatch.setattr(bench_serving, "work_dir", lambda needed: tmp_path / "work")
    workload = bench_http_stack.Workload(TINY_GPU, concurrency=3, new_tokens=4, requests=6)
    report = bench_http_stack.measure_stacks(2, "tiny", workload)
    assert report["workload"]["name"] == "tiny" and report["workload"]["concurrency"] == 3
    assert list(report["runs"]) == ["asyncio + h11", "uvloop + httptools"]
    for name, runs in report["runs"].items():
        assert len(runs) == 2
        for run in runs:
            assert run["served_with"] == name.split(" + ")  # /info of the server that ran it
            assert run["failed"] == 0 and run["generated_tokens"] == 6 * 4
            assert run["event_loop_cpu_us_per_token"] > 0 and run["other_threads_cpu_us_per_token"] > 0
        assert report["medians"][name]["output_tokens_per_s"] == pytest.approx(
            (runs[0]["output_tokens_per_s"] + runs[1]["output_tokens_per_s"]) / 2
        )
    plain, fast = (report["medians"][name]["event_loop_cpu_us_per_token"] for name in report["runs"])
    assert report["event_loop_cpu_ratio"] == pytest.approx(fast / plain)
