"""CPU float32 models keep their weights in oneDNN's blocked layout; the logits do not change."""

import pytest
import torch
from model_factory import build_model

from loraplex.server.models import onednn_linear
from loraplex.server.models.attention import TorchAttention
from loraplex.server.models.context import ForwardContext, forward_context
from loraplex.server.models.layers import LoRALinear
from loraplex.server.models.loader import build_model as load_model
from loraplex.server.models.loader import load_config

from .conftest import ARCHITECTURES

CPU = torch.device("cpu")


def load(path, dtype=torch.float32):
    return load_model(path, load_config(path), TorchAttention(), dtype, CPU)


def projections(model) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


@pytest.fixture(scope="module")
def untied_dir(tmp_path_factory):
    return build_model(tmp_path_factory.mktemp("untied") / "llama", "llama", tie_word_embeddings=False)


def test_float32_cpu_weights_move_to_onednn_and_plain_copies_are_dropped(untied_dir):
    assert onednn_linear.onednn_enabled(torch.float32, CPU)
    model = load(untied_dir)
    assert all(p.weight is None and p.weight_onednn is not None for p in projections(model))
    assert model.lm_head.weight is None and model.head_onednn is not None
    assert model.model.embed_tokens.weight is not None  # still needed for lookups


def test_tied_head_gets_its_own_copy_and_the_embedding_stays(model_dirs):
    model = load(model_dirs["llama"])
    assert model.lm_head is None
    assert model.head_onednn is not None
    assert model.model.embed_tokens.weight.shape == (model.shape.vocab_size, model.shape.hidden_size)


def test_switch_and_other_dtypes_keep_plain_weights(monkeypatch, untied_dir):
    assert not onednn_linear.onednn_enabled(torch.bfloat16, CPU)
    monkeypatch.setenv(onednn_linear.ENV_SWITCH, "0")
    model = load(untied_dir)
    assert all(p.weight is not None and p.weight_onednn is None for p in projections(model))
    assert model.head_onednn is None


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_projections_and_logits_match_plain_linear(arch, model_dirs, monkeypatch):
    onednn = load(model_dirs[arch])
    monkeypatch.setenv(onednn_linear.ENV_SWITCH, "0")
    plain = load(model_dirs[arch])
    x = torch.randn(7, onednn.shape.hidden_size, generator=torch.Generator().manual_seed(0))
    with forward_context(ForwardContext(attention=None)):
        for a, b in zip(projections(onednn), projections(plain), strict=True):
            inputs = torch.randn(5, a.in_features)
            torch.testing.assert_close(a(inputs), b(inputs), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(onednn.compute_logits(x), plain.compute_logits(x), rtol=1e-5, atol=1e-5)
