import pytest
from model_factory import build_model, load_reference

ARCHITECTURES = ("llama", "mistral", "qwen2")


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {arch: build_model(root / arch, arch) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def references(model_dirs):
    return {arch: load_reference(path) for arch, path in model_dirs.items()}
