"""LoRAX's own Python client (`lorax-client`), unchanged, against a real loraplex server.

lorax-client pins huggingface-hub < 1, which transformers 5 cannot share, so it lives in its own
environment: LORAPLEX_LORAX_CLIENT_PYTHON names that environment's Python (`.ci/run` builds one;
see the README's Development section). The calls run there (`lorax_client_calls.py`) and come back as
the client's parsed objects in JSON; each is compared with what the server sends to a plain HTTP client.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from server_harness import serve

from loraplex.demo import ADAPTER_NAMES, adapters_dir, base_model_dir
from loraplex.server.config import EngineConfig

CLIENT_PYTHON = os.environ.get("LORAPLEX_LORAX_CLIENT_PYTHON")
CALLS = Path(__file__).with_name("lorax_client_calls.py")
EXPECTED = {"upper": "HELLO WORLD", "reverse": "dlrow olleh", "rot13": "uryyb jbeyq", "None": "hello world"}

pytestmark = pytest.mark.skipif(
    not CLIENT_PYTHON,
    reason="LORAPLEX_LORAX_CLIENT_PYTHON is not set (a Python with lorax-client; .ci/run makes one)",
)


def demo_config() -> EngineConfig:
    return EngineConfig(
        model_id=str(base_model_dir()),
        adapter_dirs=(str(adapters_dir()),),
        preload_adapters=ADAPTER_NAMES,
        max_batch_total_tokens=8192,
    )


def run_client(url: str, *args: str) -> dict:
    done = subprocess.run(
        [CLIENT_PYTHON, str(CALLS), url, *args], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# Fields LoRAX's server sends that its client models only from 0.7 on (not on PyPI): 0.6.3 drops them.
NEWER_THAN_CLIENT = {"skipped", "skipped_tokens"}


def contains(parsed, raw) -> bool:
    """Every field the server sent is in the client's object with the same value (the client may add
    its own defaults, such as `alternative_tokens: null`)."""
    if isinstance(raw, dict):
        fields = {k: v for k, v in raw.items() if k not in NEWER_THAN_CLIENT}
        return isinstance(parsed, dict) and all(
            k in parsed and contains(parsed[k], v) for k, v in fields.items()
        )
    if isinstance(raw, list):
        return (
            isinstance(parsed, list)
            and len(parsed) == len(raw)
            and all(contains(p, r) for p, r in zip(parsed, raw, strict=True))
        )
    return parsed == raw


@pytest.fixture(scope="module")
def session():
    with serve(demo_config()) as running:
        yield running, run_client(running.url, "calls", str(adapters_dir() / "upper"))
        running.wait_idle()


@pytest.mark.parametrize("adapter", list(EXPECTED))
def test_generate_parses_every_field_the_server_sends(session, adapter):
    running, results = session
    parsed = results["generate"][adapter]
    assert parsed["generated_text"] == EXPECTED[adapter]
    parameters = {
        "max_new_tokens": 32,
        "details": True,
        "decoder_input_details": True,
        "return_k_alternatives": 2,
    }
    if adapter != "None":
        parameters["adapter_id"] = adapter
    raw = httpx.post(
        running.url + "/generate", json={"inputs": "hello world", "parameters": parameters}
    ).json()
    assert contains(parsed, raw), (parsed, raw)
    details = parsed["details"]
    assert details["finish_reason"] == "eos_token"
    assert details["generated_tokens"] == len(details["tokens"])
    assert len(details["prefill"]) == details["prompt_tokens"]
    for token in details["tokens"]:  # greedy: the chosen token is the most likely alternative
        assert [a["id"] for a in token["alternative_tokens"]][0] == token["id"]
        assert len(token["alternative_tokens"]) == 2


@pytest.mark.parametrize("adapter", list(EXPECTED))
def test_generate_stream_events_add_up_to_the_text(session, adapter):
    _, results = session
    events = results["stream"][adapter]["events"]
    final = events[-1]
    assert final["generated_text"] == EXPECTED[adapter]
    assert all(event["generated_text"] is None for event in events[:-1])
    assert "".join(e["token"]["text"] for e in events if not e["token"]["special"]) == EXPECTED[adapter]
    assert final["details"]["finish_reason"] == "eos_token"
    assert final["details"]["generated_tokens"] == len(events)


def test_local_source_and_sampling_parameters(session):
    _, results = session
    assert results["local_source"]["generated_text"] == "HELLO WORLD"
    sampled = results["sampled"]
    assert sampled["details"]["seed"] == 7
    assert sampled["details"]["generated_tokens"] >= 1


def test_async_client_runs_every_adapter_at_once(session):
    _, results = session
    async_results = results["async"]
    texts = [reply["generated_text"] for reply in async_results["generate"]]
    assert texts == ["GOOD MORNING", "gninrom doog", "tbbq zbeavat", "good morning"]
    stream = async_results["stream"]
    assert stream[-1]["generated_text"] == "gninrom doog"
    assert "".join(e["token"]["text"] for e in stream if not e["token"]["special"]) == "gninrom doog"


def test_errors_map_to_the_clients_exceptions(session):
    running, results = session
    # error_type "validation" is one the client knows: its ValidationError.
    assert results["too_long"]["raised"] == "ValidationError"
    assert "input" in results["too_long"]["message"].lower()
    # An unknown adapter is a 424 with error_type "adapter_not_found", which the client maps by status.
    for case in ("unknown_adapter", "unknown_adapter_stream"):
        assert results[case]["raised"] == "ShardNotReadyError", results[case]
        assert "no-such-adapter" in results[case]["message"]
    assert httpx.get(running.url + "/health").status_code == 200


def test_overloaded_server_raises_overloaded_error(llama_dir):
    """A server whose only request slot is taken answers 429 "overloaded": the client's OverloadedError."""
    config = EngineConfig(model_id=str(llama_dir), max_batch_total_tokens=4096, dtype="float32")
    with serve(config, max_concurrent_requests=1) as running:
        run = running.engine.runner.run

        def slow_run(batch):  # the held request must outlast the client's start-up
            time.sleep(0.05)
            return run(batch)

        running.engine.runner.run = slow_run
        body = {"inputs": "a b c", "parameters": {"max_new_tokens": 200, "ignore_eos_token": True}}
        with httpx.stream("POST", running.url + "/generate_stream", json=body, timeout=60) as held:
            events = held.iter_lines()  # kept: a dropped iterator closes the connection
            next(events)  # the slot is taken once the first event arrives
            result = run_client(running.url, "one")
        assert result == {"raised": "OverloadedError", "message": "Model is overloaded"}
        running.wait_idle()
