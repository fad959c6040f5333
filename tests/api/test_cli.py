"""`loraplex serve` as a user runs it: clear one-line failures, and a startup summary when it works."""

import json
import os
import shutil
import socket
import subprocess
import time

import httpx
import pytest
from server_harness import LORAPLEX, spawn_serve


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


def test_a_taken_port_is_refused_before_the_model_loads(llama_dir):
    """It used to load the model, then fail at bind with uvicorn's log lines and exit 3."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        started = time.monotonic()
        result = run_cli("serve", "--model-id", str(llama_dir), "--port", str(port))
        elapsed = time.monotonic() - started
    assert_one_clear_line(result, f"cannot listen on 127.0.0.1:{port}: address already in use")
    assert result.returncode == 2
    assert elapsed < 5, elapsed  # the CLI's imports and argument parsing only, no torch, no model


def test_a_failed_adapter_preload_is_reported_once(llama_dir):
    """It was logged as it happened, then printed again as the process exited."""
    result = run_cli("serve", "--model-id", str(llama_dir), "--preload-adapter", "nothing")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    reason = "adapter 'nothing': not found under the adapter roots and not a hub id"
    output = result.stdout + result.stderr
    assert output.count(reason) == 1, output
    assert result.stderr.splitlines()[-1] == f"loraplex: error: AdapterNotFoundError: {reason}"


def test_impossible_limits(llama_dir):
    result = run_cli("serve", "--model-id", str(llama_dir), "--max-total-tokens", "100000")
    assert result.returncode != 0 and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("flags", "loop", "http"),
    [((), "uvloop", "httptools"), (("--loop", "asyncio", "--http", "h11"), "asyncio", "h11")],
    ids=["default", "asyncio-h11"],
)
def test_serve_starts_logs_a_summary_and_generates(llama_dir, flags, loop, http):
    process, url = start_server(llama_dir, *flags)
    try:
        response = httpx.post(
            url + "/generate", json={"inputs": "Hello", "parameters": {"max_new_tokens": 3}}
        )
        assert response.status_code == 200
        info = httpx.get(url + "/info").json()
        assert info["architecture"] == "LlamaForCausalLM" and info["max_batch_total_tokens"] == 4096
        assert info["gil_switch_interval_ms"] == 0.5  # not Python's 5 ms
        assert (info["event_loop"], info["http_protocol"]) == (loop, http)
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    summary = [line for line in output.splitlines() if "ready: model=" in line]
    assert summary, output
    logged = [line for line in output.splitlines() if "INFO loraplex.router.generation: request id=" in line]
    assert len(logged) == 1 and "route=/generate adapter=base" in logged[0], output
    for field in (
        "architecture=LlamaForCausalLM",
        "dtype=float32",
        "device=cpu",
        "kv_blocks=256",
        "kv_tokens=4096",
    ):
        assert field in summary[0]


def test_log_level_warning_leaves_out_info_lines(llama_dir):
    process, url = start_server(llama_dir, "--log-level", "warning")
    try:
        response = httpx.post(
            url + "/generate", json={"inputs": "Hello", "parameters": {"max_new_tokens": 3}}
        )
        assert response.status_code == 200
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert " INFO " not in output and "request id=" not in output, output


def start_server(model_dir, *extra: str) -> tuple[subprocess.Popen, str]:
    return spawn_serve("--model-id", str(model_dir), "--max-batch-total-tokens", "4096", *extra)


@pytest.mark.parametrize(
    "flags", [(), ("--loop", "asyncio", "--http", "h11")], ids=["default", "asyncio-h11"]
)
def test_sigterm_drains_running_streams_then_exits_zero(llama_dir, flags):
    import signal

    process, url = start_server(llama_dir, "--shutdown-timeout", "60", *flags)
    try:
        body = {"inputs": "Hello", "parameters": {"max_new_tokens": 200, "ignore_eos_token": True}}
        with httpx.stream("POST", url + "/generate_stream", json=body, timeout=60) as response:
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith("data:"))
            assert '"token"' in first
            process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            refused = httpx.post(url + "/generate", json={"inputs": "hi"}, timeout=10)
            assert refused.status_code == 503 and refused.json()["error"] == "the server is draining"
            health = httpx.get(url + "/health", timeout=10)
            assert health.status_code == 503 and health.json() == {"status": "draining"}
            rest = [line for line in lines if line.startswith("data:")]
        assert len(rest) == 199 and '"generated_text":"' in rest[-1]
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def test_api_key_file(tmp_path, llama_dir):
    keys = tmp_path / "keys.txt"
    keys.write_text("# operators\nsecret-1\n\nsecret-2\n")
    process, url = start_server(llama_dir, "--api-key-file", str(keys))
    try:
        assert httpx.get(url + "/info").status_code == 401
        assert httpx.get(url + "/info", headers={"Authorization": "Bearer secret-2"}).status_code == 200
    finally:
        process.terminate()
        process.communicate(timeout=30)


@pytest.mark.parametrize("threads", ["0", "-2"])
def test_num_threads_must_be_positive(threads):
    result = run_cli("serve", f"--num-threads={threads}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--num-threads: must be a positive integer" in result.stderr


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--port", "99999", "must be a TCP port"),
        ("--max-concurrent-requests", "0", "must be a positive integer"),
        ("--request-timeout", "-1", "must be a positive number of seconds"),
        ("--request-timeout", "0", "must be a positive number of seconds"),
        ("--shutdown-timeout", "-1", "must be 0 or more"),
        ("--rate-limit-requests", "-1", "must be a positive integer"),
        ("--rate-limit-tokens", "0", "must be a positive integer"),
        ("--metrics-adapter-label-limit", "-1", "must be 0 or more"),
        ("--gil-switch-interval-ms", "0", "must be in [0.001, 1000] ms"),
        ("--gil-switch-interval-ms", "1e-321", "must be in [0.001, 1000] ms"),
    ],
)
def test_out_of_range_flags_are_refused_at_start(flag, value, message):
    """Each of these used to start a server that failed every request (500, 504 or 429) or crashed."""
    result = run_cli("serve", f"{flag}={value}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{flag}: {message}" in result.stderr


@pytest.mark.parametrize("content", ["", "\n\n", "# no keys yet\n"])
def test_a_key_file_without_keys_refuses_to_start(tmp_path, llama_dir, content):
    """An empty key file left the server open to everyone, without a word."""
    keys = tmp_path / "keys.txt"
    keys.write_text(content)
    result = run_cli("serve", "--model-id", str(llama_dir), "--api-key-file", str(keys))
    assert_one_clear_line(result, "--api-key-file", "no key in it")


def test_without_uvloop_auto_serves_with_asyncio_and_naming_it_is_refused(tmp_path, llama_dir):
    (tmp_path / "uvloop.py").write_text("raise ImportError('not on this machine')\n")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [LORAPLEX, "serve", "--model-id", str(llama_dir), "--loop", "uvloop"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert_one_clear_line(result, "--loop: uvloop is not installed (pip install uvloop)")
    process, url = spawn_serve("--model-id", str(llama_dir), env=env)
    try:
        info = httpx.get(url + "/info").json()
        assert (info["event_loop"], info["http_protocol"]) == ("asyncio", "httptools")
    finally:
        process.terminate()
        process.communicate(timeout=30)


def test_an_unknown_event_loop_is_refused_at_start():
    result = run_cli("serve", "--loop", "trio")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--loop: invalid choice: 'trio'" in result.stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("no/such/template.jinja", "--chat-template: no such file: no/such/template.jinja"),
        ("{% for m in messages %}{{ m.content }}", "--chat-template: not a valid Jinja template"),
    ],
    ids=["missing-file", "bad-jinja"],
)
def test_a_chat_template_that_cannot_be_used_refuses_to_start(llama_dir, value, message):
    result = run_cli("serve", "--model-id", str(llama_dir), "--chat-template", value)
    assert_one_clear_line(result, message)


def test_a_blank_api_key_refuses_to_start(llama_dir):
    result = run_cli("serve", "--model-id", str(llama_dir), "--api-key", " ")
    assert_one_clear_line(result, "--api-key: a key cannot be blank")


def test_a_missing_adapter_dir_refuses_to_start(tmp_path, llama_dir):
    result = run_cli("serve", "--model-id", str(llama_dir), "--adapter-dir", str(tmp_path / "nowhere"))
    assert_one_clear_line(result, "nowhere", "does not exist or is not a directory")


def test_sigterm_cuts_off_streams_that_outlast_the_shutdown_timeout(llama_dir):
    """Each long stream ends with the shutdown's error event, and the process exits 0, promptly and
    without a traceback (uvicorn used to wait for every stream, whatever the timeout)."""
    import signal
    import threading

    process, url = start_server(llama_dir, "--shutdown-timeout", "0.3")
    last_events: list[dict] = []

    def stream() -> None:
        body = {"inputs": "Hello", "parameters": {"max_new_tokens": 480, "ignore_eos_token": True}}
        with httpx.stream("POST", url + "/generate_stream", json=body, timeout=60) as response:
            events = [line for line in response.iter_lines() if line.startswith("data:")]
        last_events.append(json.loads(events[-1][5:]))

    try:
        clients = [threading.Thread(target=stream) for _ in range(4)]
        for client in clients:
            client.start()
        time.sleep(0.5)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert time.monotonic() - started < 10
        for client in clients:
            client.join(timeout=30)
        assert (
            last_events
            == [{"error": "the server is shutting down: generation cut off", "error_type": "unavailable"}] * 4
        )
        assert "Traceback" not in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)
