"""`loraplex serve` as a user runs it: clear one-line failures, and a startup summary when it works."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from server_harness import free_port

LORAPLEX = str(Path(sys.executable).with_name("loraplex"))


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([LORAPLEX, *args], capture_output=True, text=True, timeout=timeout)


def assert_one_clear_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("loraplex: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_missing_model_folder(tmp_path):
    result = run_cli("serve", "--model-id", str(tmp_path / "nowhere"))
    assert_one_clear_line(result, "does not exist")


def test_hub_id_not_in_cache(tmp_path, monkeypatch):
    result = subprocess.run(
        [LORAPLEX, "serve", "--model-id", "acme/never-downloaded"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert_one_clear_line(result, "acme/never-downloaded", "Hugging Face cache")


def test_folder_without_weights(tmp_path, llama_dir):
    folder = tmp_path / "no-weights"
    shutil.copytree(llama_dir, folder)
    (folder / "model.safetensors").unlink()
    assert_one_clear_line(run_cli("serve", "--model-id", str(folder)), "model.safetensors")


def test_folder_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert_one_clear_line(run_cli("serve", "--model-id", str(tmp_path)), "config.json")


def test_unsupported_architecture(tmp_path, llama_dir):
    folder = tmp_path / "gpt2"
    shutil.copytree(llama_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(architectures=["GPT2LMHeadModel"], model_type="gpt2")
    (folder / "config.json").write_text(json.dumps(config))
    assert_one_clear_line(run_cli("serve", "--model-id", str(folder)), "GPT2LMHeadModel", "LlamaForCausalLM")


def test_impossible_limits(llama_dir):
    result = run_cli("serve", "--model-id", str(llama_dir), "--max-total-tokens", "100000")
    assert result.returncode != 0 and "Traceback" not in result.stderr


def test_serve_starts_logs_a_summary_and_generates(llama_dir):
    port = free_port()
    process = subprocess.Popen(
        [
            LORAPLEX,
            "serve",
            "--model-id",
            str(llama_dir),
            "--port",
            str(port),
            "--max-batch-total-tokens",
            "4096",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stdout.read()
            if time.monotonic() > deadline:
                pytest.fail("server did not become healthy")
            time.sleep(0.2)
        response = httpx.post(
            url + "/generate", json={"inputs": "Hello", "parameters": {"max_new_tokens": 3}}
        )
        assert response.status_code == 200
        info = httpx.get(url + "/info").json()
        assert info["architecture"] == "LlamaForCausalLM" and info["max_batch_total_tokens"] == 4096
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    summary = [line for line in output.splitlines() if "ready: model=" in line]
    assert summary, output
    for field in (
        "architecture=LlamaForCausalLM",
        "dtype=float32",
        "device=cpu",
        "kv_blocks=256",
        "kv_tokens=4096",
    ):
        assert field in summary[0]
