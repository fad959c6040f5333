"""The engine's logits and greedy tokens against transformers, however requests are batched."""

import pytest

from loraplex.server.config import EngineConfig
from loraplex.server.engine import Engine
from loraplex.server.request import SamplingParams

from .conftest import ARCHITECTURES
from .reference import assert_matches_reference, capture_logits

PROMPTS = [
    "Hello world! How are you",
    "The quick brown fox jumps over the lazy dog, and then the dog wakes up and chases the fox",
    "Paged",
    "Adapters let one base model serve many tasks at once. Continuous batching lets requests join",
    "0123456789 + - * / =",
]


def make_engine(model_dir, **overrides) -> Engine:
    settings = dict(model_id=str(model_dir), max_batch_total_tokens=4096, dtype="float32")
    settings.update(overrides)
    return Engine(EngineConfig(**settings))


def greedy_request(engine: Engine, text: str, max_new_tokens: int, request_id: str):
    ids = engine.tokenizer(text).input_ids
    params = SamplingParams(max_new_tokens=max_new_tokens, ignore_eos_token=True)
    return engine.make_request(ids, params, request_id=request_id)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_requests_submitted_together(arch, model_dirs, references):
    engine = make_engine(model_dirs[arch])
    records = capture_logits(engine)
    requests = [greedy_request(engine, text, 24, f"r{i}") for i, text in enumerate(PROMPTS)]
    engine.generate(requests)
    for request in requests:
        assert request.num_output_tokens == 24
        assert_matches_reference(references[arch], request, records)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_requests_arriving_while_others_decode(arch, model_dirs, references):
    engine = make_engine(model_dirs[arch])
    records = capture_logits(engine)
    requests = [greedy_request(engine, text, 12 + 4 * i, f"r{i}") for i, text in enumerate(PROMPTS)]
    pending = list(requests)
    engine.submit(pending.pop(0))
    steps = 0
    while pending or engine.scheduler.has_work or steps == 0:
        if pending and steps % 3 == 2:
            engine.submit(pending.pop(0))
        engine.step()
        steps += 1
    assert all(r.is_finished for r in requests)
    for request in requests:
        assert_matches_reference(references[arch], request, records)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_chunked_prefill(arch, model_dirs, references):
    engine = make_engine(model_dirs[arch], max_batch_prefill_tokens=7)
    records = capture_logits(engine)
    chunk_sizes = []
    run = engine.runner.run

    def recording_run(batch):
        chunk_sizes.extend(row.num_tokens for row in batch.rows if row.num_tokens > 1)
        return run(batch)

    engine.runner.run = recording_run
    requests = [greedy_request(engine, text, 10, f"r{i}") for i, text in enumerate(PROMPTS)]
    engine.generate(requests)
    assert chunk_sizes and max(chunk_sizes) <= 7
    for request in requests:
        assert_matches_reference(references[arch], request, records)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_preemption_when_the_kv_pool_runs_out(arch, model_dirs, references):
    engine = make_engine(
        model_dirs[arch], block_size=4, max_batch_total_tokens=80, max_total_tokens=72, max_input_length=48
    )
    records = capture_logits(engine)
    requests = [greedy_request(engine, text, 24, f"r{i}") for i, text in enumerate(PROMPTS)]
    engine.generate(requests)
    assert engine.scheduler.num_preemptions > 0
    assert engine.allocator.num_free_blocks == engine.allocator.num_blocks
    for request in requests:
        assert request.num_output_tokens == 24
        assert_matches_reference(references[arch], request, records)
