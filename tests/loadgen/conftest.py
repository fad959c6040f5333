"""The load generator's tests: a real server for the end-to-end ones."""

import pytest
from model_factory import build_model
from server_harness import serve

from loraplex.loadgen.arrivals import Arrivals
from loraplex.loadgen.lengths import LengthDist
from loraplex.loadgen.workload import WorkloadSpec
from loraplex.server.config import EngineConfig


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("loadgen-model") / "llama", "llama")


@pytest.fixture(scope="session")
def tiny_adapters(tiny_model, tmp_path_factory):
    from benchmarks.random_adapters import build_adapters

    root = tmp_path_factory.mktemp("loadgen-adapters")
    ids = build_adapters(tiny_model, root, 3, 4)
    return root, ids


@pytest.fixture(scope="module")
def server(tiny_model, tiny_adapters):
    root, _ = tiny_adapters
    config = EngineConfig(
        model_id=str(tiny_model),
        max_batch_total_tokens=8192,
        max_input_length=128,
        max_total_tokens=256,
        adapter_dirs=(str(root),),
        max_active_adapters=4,
        max_lora_rank=8,
    )
    with serve(config, max_concurrent_requests=64) as running:
        yield running


@pytest.fixture
def two_adapter_spec(tiny_adapters) -> WorkloadSpec:
    """Six short requests round robin over the first two test adapters, 3 in flight (tests replace
    what they vary)."""
    _, ids = tiny_adapters
    return WorkloadSpec(
        num_requests=6,
        prompt_len=LengthDist.parse("3:6"),
        output_len=LengthDist.parse("2:5"),
        popularity="roundrobin",
        adapters=tuple(ids[:2]),
        arrivals=Arrivals(concurrency=3),
        vocab=(3, 300),
    )
