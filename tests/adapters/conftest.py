import pytest
from adapter_factory import ADAPTER_SPECS, build_adapter, load_peft_reference
from model_factory import build_model


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("adapters-base") / "llama", "llama", tie_word_embeddings=False)


@pytest.fixture(scope="session")
def adapter_root(tmp_path_factory, base_dir):
    root = tmp_path_factory.mktemp("adapter-root")
    for seed, (name, spec) in enumerate(ADAPTER_SPECS.items()):
        build_adapter(base_dir, root / "acme" / name, seed=seed, **spec)
    return root


@pytest.fixture(scope="session")
def peft_references(base_dir, adapter_root):
    references = {None: load_peft_reference(base_dir, None)}
    for name in ADAPTER_SPECS:
        references[f"acme/{name}"] = load_peft_reference(base_dir, adapter_root / "acme" / name)
    return references
