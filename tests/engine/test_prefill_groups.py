"""Whole-prompt prefill chunks batched in one causal attention call (right-padded) match transformers.

The engine batches them on CUDA; here the same path is switched on for the CPU engine.
"""

import pytest

from loraplex.server.models.attention import group_by_length
from loraplex.server.request import SamplingParams

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
    """An engine with grouped prefill on, recording (B, L, real tokens, the rows' start positions) of
    every group, the steps that held a continuation chunk beside other prefill chunks, and per step
    whether it built the block table and whether a chunk after cached context needed it."""
    engine = make_engine(model_dir, **overrides)
    engine.runner.batch_prefill = True
    groups: list[tuple[int, int, int, list[int]]] = []
    mixed_steps, tables = [], []
    prepare = engine.runner.prepare

    def recording_prepare(batch):
        inputs = prepare(batch)
        starts = [row.start for row in batch.rows if row.num_tokens > 1]
        if len(starts) > 1 and any(starts):
            mixed_steps.append(starts)
        tables.append((inputs.attention.block_tables is not None, any(starts)))
        for g in inputs.attention.prefill_groups:
            groups.append((g.batch, g.length, g.valid.numel(), [batch.rows[r].start for r in g.rows]))
        return inputs

    engine.runner.prepare = recording_prepare
    engine.mixed_prefill_steps = mixed_steps
    engine.block_table_steps = tables
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
    assert any(valid < batch * length for batch, length, valid, _ in groups), "no group was padded"
    for request in requests:
        assert_matches_reference(references[arch], request, records)


def test_chunks_with_cached_context_are_not_grouped(model_dirs, references):
    """21-token prompts, 14 tokens a step: a step holds a prompt's last 7 tokens (from position 14) and the
    next prompt's first 7, equal lengths; only the first chunk may join a group, the later one attends
    the cache."""
    engine, groups = grouped_engine(model_dirs["llama"], max_batch_prefill_tokens=14)
    records = capture_logits(engine)
    params = SamplingParams(max_new_tokens=4, ignore_eos_token=True)
    requests = []
    for i, text in enumerate(PROMPTS[:4]):
        ids = (engine.tokenizer(text * 8).input_ids * 2)[:21]
        requests.append(engine.make_request(ids, params, request_id=f"r{i}"))
    engine.generate(requests)
    assert [14, 0] in engine.mixed_prefill_steps, "no step held a later chunk beside a first chunk"
    assert all(start == 0 for *_, starts in groups for start in starts)
    built = engine.block_table_steps
    assert all(has == needs for has, needs in built) and {has for has, _ in built} == {True, False}
    for request in requests:
        assert_matches_reference(references["llama"], request, records)
