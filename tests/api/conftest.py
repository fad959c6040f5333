import pytest
from model_factory import build_model, load_reference
from server_harness import serve

from loraplex.server.config import EngineConfig


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("http-model") / "llama", "llama")


@pytest.fixture(scope="session")
def llama_reference(llama_dir):
    return load_reference(llama_dir)


@pytest.fixture(scope="module")
def server(llama_dir):
    config = EngineConfig(
        model_id=str(llama_dir),
        max_batch_total_tokens=8192,
        max_input_length=64,
        max_total_tokens=256,
        dtype="float32",
    )
    with serve(config, max_concurrent_requests=64) as running:
        yield running
