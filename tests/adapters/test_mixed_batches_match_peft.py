"""Requests for the base model and many adapters share steps; each matches PEFT generating it alone."""

import logging

import pytest
import torch
from adapter_factory import ADAPTER_SPECS, build_adapter, edit_config, load_peft_reference
from engine.reference import assert_matches_reference, capture_logits, with_fixed_decode

from loraplex.server.config import EngineConfig
from loraplex.server.engine import Engine
from loraplex.server.request import SamplingParams

ADAPTERS = [f"acme/{name}" for name in ADAPTER_SPECS]
PROMPTS = [
    "Hello world! How are you",
    "The quick brown fox jumps over the lazy dog",
    "Paged attention stores keys",
    "Adapters let one base model serve",
    "0123456789 + - * /",
    "Continuous batching lets requests join and leave",
    "How are you today?",
]


def make_engine(base_dir, adapter_root, **overrides) -> Engine:
    settings = dict(
        model_id=str(base_dir),
        max_batch_total_tokens=4096,
        adapter_dirs=(str(adapter_root),),
        dtype="float32",
    )
    settings.update(overrides)
    return Engine(EngineConfig(**settings))


def make_request(engine, adapter_id, prompt, max_new_tokens, request_id):
    location = engine.adapters.locate(adapter_id, None) if adapter_id else None
    ids = engine.tokenizer(prompt).input_ids
    params = SamplingParams(max_new_tokens=max_new_tokens, ignore_eos_token=True)
    return engine.make_request(ids, params, request_id=request_id, adapter=location)


def record_slots_per_step(engine) -> list[set[int]]:
    steps: list[set[int]] = []
    run = engine.runner.run

    def recording_run(batch):
        steps.append({row.request.adapter_slot for row in batch.rows})
        return run(batch)

    engine.runner.run = recording_run
    return steps


def test_one_batch_mixes_base_and_six_adapters(base_dir, adapter_root, peft_references):
    engine = make_engine(base_dir, adapter_root, preload_adapters=tuple(ADAPTERS))
    records = capture_logits(engine)
    steps = record_slots_per_step(engine)
    owners = [None, *ADAPTERS]
    requests = [make_request(engine, a, PROMPTS[i], 16, f"r{i}") for i, a in enumerate(owners)]
    engine.generate(requests)
    assert max(len(s) for s in steps) == len(owners), "base and every adapter should share a step"
    for adapter_id, request in zip(owners, requests, strict=True):
        assert request.num_output_tokens == 16
        assert_matches_reference(peft_references[adapter_id], request, records)


def test_padded_decode_steps_of_mixed_adapters(base_dir, adapter_root, peft_references):
    """Base and six adapters decode through the fixed buffers of a CUDA graph (7 rows padded to 8)."""
    engine = with_fixed_decode(
        make_engine(base_dir, adapter_root, preload_adapters=tuple(ADAPTERS), max_batch_size=8)
    )
    records = capture_logits(engine)
    owners = [ADAPTERS[2], None, *ADAPTERS[:2], *ADAPTERS[3:]]
    requests = [make_request(engine, a, PROMPTS[i], 8, f"r{i}") for i, a in enumerate(owners)]
    engine.generate(requests)
    assert engine.runner.graphs.replays > 0
    for adapter_id, request in zip(owners, requests, strict=True):
        assert_matches_reference(peft_references[adapter_id], request, records)


def test_staggered_arrivals_with_cold_loads(base_dir, adapter_root, peft_references):
    engine = make_engine(base_dir, adapter_root)
    records = capture_logits(engine)
    owners = [ADAPTERS[3], None, ADAPTERS[0], ADAPTERS[4], ADAPTERS[1], ADAPTERS[5], ADAPTERS[2], ADAPTERS[3]]
    requests = [
        make_request(engine, a, PROMPTS[i % len(PROMPTS)], 10 + i, f"r{i}") for i, a in enumerate(owners)
    ]
    pending = list(requests)
    engine.submit(pending.pop(0))
    steps = 0
    while pending or engine.scheduler.has_work:
        if pending and steps % 2 == 1:
            engine.submit(pending.pop(0))
        engine.step()
        if not engine.last_step_ran:
            engine._apply_commands(block=True)
        steps += 1
    for adapter_id, request in zip(owners, requests, strict=True):
        assert request.is_finished and request.num_output_tokens == request.params.max_new_tokens
        assert_matches_reference(peft_references[adapter_id], request, records)


def test_a_thinning_batch_moves_adapters_down_the_stack_and_still_matches_peft(
    base_dir, adapter_root, peft_references
):
    """Requests end one after another, so the CPU LoRA stack moves later adapters into their places.

    On GPU there is no stack (the segmented kernels read the slots); the outputs are checked all the same.
    """
    engine = make_engine(base_dir, adapter_root, preload_adapters=tuple(ADAPTERS))
    records = capture_logits(engine)
    moves = []
    stack = engine.runner.lora_stack
    if stack is not None:
        move = stack._move
        stack._move = lambda source, target: (moves.append((source, target)), move(source, target))
    requests = [make_request(engine, a, PROMPTS[i], 3 + 3 * i, f"r{i}") for i, a in enumerate(ADAPTERS)]
    engine.generate(requests)
    if stack is not None:
        assert moves, "the batch should have thinned out from its low positions"
    for adapter_id, request in zip(ADAPTERS, requests, strict=True):
        assert request.num_output_tokens == request.params.max_new_tokens
        assert_matches_reference(peft_references[adapter_id], request, records)


@pytest.mark.parametrize("mode", ["together", "staggered"])
def test_eviction_with_two_slots_and_six_adapters(base_dir, adapter_root, peft_references, mode):
    engine = make_engine(base_dir, adapter_root, max_active_adapters=2)
    records = capture_logits(engine)
    steps = record_slots_per_step(engine)
    requests = [make_request(engine, a, PROMPTS[i], 12, f"r{i}") for i, a in enumerate(ADAPTERS)]
    if mode == "together":
        engine.generate(requests)
    else:
        for request in requests:
            engine.submit(request)
            engine.step()
        engine.generate([])
    assert engine.adapters.stats.evictions >= 4
    assert max(len(s - {-1}) for s in steps) <= 2
    for adapter_id, request in zip(ADAPTERS, requests, strict=True):
        assert request.num_output_tokens == 12
        assert_matches_reference(peft_references[adapter_id], request, records)
    assert engine.allocator.num_free_blocks == engine.allocator.num_blocks
    assert all(entry.pins == 0 for entry in engine.adapters.entries())


def test_fan_in_fan_out_on_linear_layers_is_ignored_as_peft_does(base_dir, tmp_path):
    adapter = tmp_path / "root" / "fifo"
    build_adapter(base_dir, adapter, seed=11, r=4, lora_alpha=4, target_modules=["q_proj", "down_proj"])
    edit_config(adapter, fan_in_fan_out=True)
    reference = load_peft_reference(base_dir, adapter)
    engine = make_engine(base_dir, tmp_path / "root")
    records = capture_logits(engine)
    request = make_request(engine, "fifo", PROMPTS[0], 8, "fifo")
    engine.generate([request])
    assert_matches_reference(reference, request, records)


def test_every_adapter_changes_the_logits(base_dir, peft_references):
    """Guards the tests above: an engine that ignored adapters would fail them."""
    ids = torch.tensor([list(range(5, 25))])
    base = peft_references[None](ids).logits
    for adapter_id in ADAPTERS:
        delta = (peft_references[adapter_id](ids).logits - base).abs().max().item()
        assert delta > 0.05, f"{adapter_id} barely changes the logits ({delta})"


def test_a_step_that_breaks_inside_the_lora_stack_leaves_it_sound(
    base_dir, adapter_root, peft_references, caplog
):
    """Four adapters fill the CPU LoRA stack; then a copy that would replace one of them raises, half way
    through a step of two new ones. That step is re-run request by request, the stack forgets its
    placements, and every later step runs whole again, with PEFT's outputs (a half-made placement
    failed every later step, and the engine stopped)."""
    engine = make_engine(base_dir, adapter_root, preload_adapters=tuple(ADAPTERS))
    stack = engine.runner.lora_stack
    if stack is None:
        pytest.skip("the LoRA stack is the CPU float32 path")
    records = capture_logits(engine)
    first = [make_request(engine, a, PROMPTS[i], 4, f"first{i}") for i, a in enumerate(ADAPTERS[:4])]
    engine.generate(first)
    copy_in, calls = stack._copy_in, {"n": 0}

    def failing_once(slot, position):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected failure in the stack")
        return copy_in(slot, position)

    stack._copy_in = failing_once
    caplog.set_level(logging.WARNING, logger="loraplex")
    second = [make_request(engine, a, PROMPTS[i], 10, f"second{i}") for i, a in enumerate(ADAPTERS[4:])]
    engine.generate(second)
    isolated = [r for r in caplog.records if "running each alone" in r.getMessage()]
    assert calls["n"] > 1 and len(isolated) == 1 and engine.fatal_error is None
    for adapter_id, request in zip(ADAPTERS[4:], second, strict=True):
        assert request.num_output_tokens == 10
        assert_matches_reference(peft_references[adapter_id], request, records)
