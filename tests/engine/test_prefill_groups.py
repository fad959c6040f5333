"""Whole-prompt prefill chunks batched in one causal attention call (right-padded) match transformers.

The engine batches them on CUDA; here the same path is switched on for the CPU engine.
"""

import pytest

from loraplex.server.models.attention import group_by_length

from .conftest import ARCHITECTURES
from .reference import assert_matches_reference, capture_logits
from .test_engine_matches_transformers import PROMPTS, greedy_request, make_engine


def test_groups_bound_the_padding():
    # sorted: 3 (idx 2), 10, 11, 12, 40; 3 alone (3 * 2 > 1.25 * 13), then 10-12, then 40 alone.
    assert group_by_length([10, 12, 3, 11, 40]) == [[2], [0, 3, 1], [4]]
    assert group_by_length([5, 5, 5]) == [[0, 1, 2]]
    assert group_by_length([]) == []
    assert group_by_length([7, 8], max_padding=0.0) == [[0], [1]]


def grouped_engine(model_dir, **overrides):
    engine = make_engine(model_dir, **overrides)
    engine.runner.batch_prefill = True
    groups: list[tuple[int, int, int]] = []
    prepare = engine.runner.prepare

    def recording_prepare(batch):
        inputs = prepare(batch)
        rows = inputs.attention.prefill_groups
        groups.extend((g.batch, g.length, g.valid.numel()) for g in rows)
        return inputs

    engine.runner.prepare = recording_prepare
    return engine, groups


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_grouped_prefill_matches_transformers(arch, model_dirs, references):
    """Prompts of different lengths in padded groups (mistral: some longer than its sliding window)."""
    engine, groups = grouped_engine(model_dirs[arch])
    records = capture_logits(engine)
    texts = PROMPTS + [text[::-1] for text in PROMPTS]
    requests = [greedy_request(engine, text, 5, f"r{i}") for i, text in enumerate(texts)]
    engine.generate(requests)
    assert groups, "no prefill group was formed"
    assert any(valid < batch * length for batch, length, valid in groups), "no group was padded"
    for request in requests:
        assert_matches_reference(references[arch], request, records)


def test_chunks_with_cached_context_are_not_grouped(model_dirs, references):
    """With 7-token chunks, only first chunks (position 0) are grouped; later ones attend the cache."""
    engine, groups = grouped_engine(model_dirs["llama"], max_batch_prefill_tokens=14)
    records = capture_logits(engine)
    requests = [greedy_request(engine, text, 4, f"r{i}") for i, text in enumerate(PROMPTS)]
    engine.generate(requests)
    assert groups
    for request in requests:
        assert_matches_reference(references["llama"], request, records)
