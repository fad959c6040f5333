"""Decode steps through the fixed buffers of a CUDA graph match transformers, padding rows included.

On CUDA the engine captures real graphs and replays them. Where there is no GPU the same buffers,
padding and paged decode kernel (under TRITON_INTERPRET) run eagerly: `use_graphs=False`.
"""

import pytest
import torch

from loraplex.server.cuda_graphs import capture_sizes

from .conftest import ARCHITECTURES
from .reference import assert_matches_reference, capture_logits, with_fixed_decode
from .test_engine_matches_transformers import PROMPTS, greedy_request, make_engine


def fixed_decode_engine(model_dir, **overrides):
    return with_fixed_decode(make_engine(model_dir, **overrides))


def test_capture_sizes_cover_every_batch_size():
    sizes = capture_sizes(256)
    assert sizes[:5] == (1, 2, 4, 8, 16) and sizes[-1] == 256
    assert list(sizes) == sorted(set(sizes))
    assert capture_sizes(6) == (1, 2, 4, 6)
    assert capture_sizes(1) == (1,)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_padded_decode_steps_match_transformers(arch, model_dirs, references):
    """5 requests run as a padded batch of 8; then 3 remain (padded to 4) after the short ones end."""
    engine = fixed_decode_engine(model_dirs[arch], max_batch_size=8)
    records = capture_logits(engine)
    requests = [greedy_request(engine, text, 6 + 4 * (i % 3), f"r{i}") for i, text in enumerate(PROMPTS)]
    engine.generate(requests)
    assert engine.runner.graphs.replays > 0
    for request in requests:
        assert_matches_reference(references[arch], request, records)


@pytest.mark.parametrize("arch", ("llama", "mistral"))
def test_decode_rows_of_mixed_steps_match_transformers(arch, model_dirs, references):
    """Requests arrive while others decode: steps that mix prefill chunks and decodes run eagerly, their
    decode rows through the paged kernel (scattered back among the prefill rows)."""
    engine = fixed_decode_engine(model_dirs[arch])
    records = capture_logits(engine)
    steps = record_steps(engine)
    requests = [greedy_request(engine, text, 6 + 2 * i, f"r{i}") for i, text in enumerate(PROMPTS)]
    pending = list(requests)
    while pending or engine.scheduler.has_work:
        if pending and engine.num_steps % 2 == 0:
            engine.submit(pending.pop(0))
        engine.step()
    assert any(decodes and prefills for decodes, prefills in steps), "no step mixed decodes and prefill"
    for request in requests:
        assert_matches_reference(references[arch], request, records)


def record_steps(engine) -> list[tuple[int, int]]:
    """(decode rows, prefill rows) of every eager step."""
    steps: list[tuple[int, int]] = []
    prepare = engine.runner.prepare

    def recording_prepare(batch):
        decodes = sum(row.num_tokens == 1 for row in batch.rows)
        steps.append((decodes, len(batch.rows) - decodes))
        return prepare(batch)

    engine.runner.prepare = recording_prepare
    return steps


def test_scratch_block_is_never_handed_out(model_dirs):
    engine = make_engine(model_dirs["llama"])
    pool = engine.kv_cache.layers()[0][0]
    assert pool.shape[1] == engine.allocator.num_blocks + 1
    assert engine.scratch_block == engine.allocator.num_blocks
    taken = [engine.allocator._free.popleft() for _ in range(engine.allocator.num_free_blocks)]
    assert engine.scratch_block not in taken


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_engine_captures_graphs_and_replays_them(model_dirs, references):
    engine = make_engine(model_dirs["llama"])
    assert engine.info.cuda_graphs and engine.runner.graphs.graphs
    records = capture_logits(engine)
    requests = [greedy_request(engine, text, 10, f"r{i}") for i, text in enumerate(PROMPTS)]
    engine.generate(requests)
    assert engine.runner.graphs.replays > 0
    for request in requests:
        assert_matches_reference(references["llama"], request, records)
