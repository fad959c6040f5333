"""Outputs held back until the next step's forward is queued (what the engine does on CUDA): the same
tokens, in order, each delivered while the next forward runs, nothing left behind when work ends."""

import threading
from contextlib import contextmanager

import pytest

from loraplex.server.request import SamplingParams

from .test_engine_matches_transformers import PROMPTS, make_engine

LENGTHS = {"a": 3, "b": 6, "c": 9}


@pytest.fixture(scope="module")
def engine(model_dirs):
    return make_engine(model_dirs["llama"])


@contextmanager
def counting(runner, method: str):
    """Counts the calls of `runner.<method>` while the block runs -> {"n": calls so far}."""
    calls = {"n": 0}
    original = getattr(runner, method)

    def counted(batch):
        calls["n"] += 1
        return original(batch)

    setattr(runner, method, counted)
    try:
        yield calls
    finally:
        delattr(runner, method)


def run(engine, defer: bool, stagger: bool = False):
    """Generate three requests -> {id: [(forwards launched at delivery, output)]}, the forward count.

    With `stagger`, request "c" is submitted only after two steps, so it joins a running batch."""
    engine.defer_delivery = defer
    with counting(engine.runner, "execute") as forwards:
        return _generate_three(engine, defer, stagger, forwards)


def _generate_three(engine, defer: bool, stagger: bool, forwards: dict):
    seen: dict[str, list] = {}
    requests = []
    for i, (request_id, length) in enumerate(LENGTHS.items()):
        params = SamplingParams(max_new_tokens=length, ignore_eos_token=True)
        record = seen.setdefault(request_id, [])

        def sink(output, record=record):
            record.append((forwards["n"], output))

        ids = engine.tokenizer(PROMPTS[i]).input_ids
        requests.append(engine.make_request(ids, params, request_id=f"{request_id}-{defer}", sink=sink))
    if stagger:
        for request in requests[:2]:
            engine.submit(request)
        engine._apply_commands(block=False)
        engine.step()
        engine.step()
        engine.generate(requests[2:])
    else:
        engine.generate(requests)
    return seen, forwards["n"]


@pytest.mark.parametrize("stagger", [False, True], ids=["together", "joining"])
def test_deferred_outputs_match_and_arrive_while_the_next_forward_runs(engine, stagger):
    immediate, _ = run(engine, defer=False, stagger=stagger)
    deferred, total = run(engine, defer=True, stagger=stagger)
    for request_id, length in LENGTHS.items():
        now = [output for _, output in immediate[request_id]]
        later = [output for _, output in deferred[request_id]]
        assert [o.token for o in later] == [o.token for o in now]
        assert later[-1].generated_text == now[-1].generated_text
        assert [o.finished for o in later] == [False] * (length - 1) + [True]
        assert later[-1].finish_reason == "length"
    # Without deferral an output arrives right after the forward that made it; with it, after the next
    # forward is queued, except the step that ends the work, which is handed over before step() returns.
    produced = {request_id: [n for n, _ in immediate[request_id]] for request_id in LENGTHS}
    arrived = {request_id: [n for n, _ in deferred[request_id]] for request_id in LENGTHS}
    for request_id in LENGTHS:
        for made, got in zip(produced[request_id], arrived[request_id], strict=True):
            assert got == (made + 1 if made < total else made)
    assert engine._requests == {} and engine._pending == []
    assert engine.allocator.num_free_blocks == engine.allocator.num_blocks


def test_an_abort_drops_the_outputs_held_back_for_that_request(engine):
    engine.defer_delivery = True
    seen: list = []
    params = SamplingParams(max_new_tokens=20, ignore_eos_token=True)
    ids = engine.tokenizer(PROMPTS[0]).input_ids
    request = engine.make_request(ids, params, request_id="dropped", sink=seen.append)
    engine.submit(request)
    engine._apply_commands(block=False)
    engine.step()  # prefill: its first token is held back
    assert seen == [] and len(engine._pending) == 1
    engine.abort("dropped")
    engine._apply_commands(block=False)
    engine.step()  # nothing to run: what is held back is handed over, and the aborted request gets none
    assert seen == [] and engine._pending == [] and engine._requests == {}
    assert engine.allocator.num_free_blocks == engine.allocator.num_blocks


def test_a_held_back_final_output_goes_out_when_an_abort_empties_the_batch(model_dirs):
    """The engine thread's own loop: B finishes in the step during which A is aborted, so no step
    follows to hand B's last output over; the loop must, before it waits for work."""
    engine = make_engine(model_dirs["llama"])
    engine.defer_delivery = True
    seen, done = [], threading.Event()
    ids = engine.tokenizer(PROMPTS[0]).input_ids

    def short_sink(output):
        seen.append(output)
        if len(seen) == 2:
            engine.abort("long")  # on the engine thread, while the step that finishes B runs
        if output.finished:
            done.set()

    long = engine.make_request(
        ids, SamplingParams(max_new_tokens=50, ignore_eos_token=True), request_id="long"
    )
    short = engine.make_request(
        ids, SamplingParams(max_new_tokens=3, ignore_eos_token=True), request_id="short", sink=short_sink
    )
    engine.submit(long)
    engine.submit(short)
    engine.start()
    try:
        assert done.wait(10), f"B's final output never came: {len(seen)} outputs"
        assert [o.finished for o in seen] == [False, False, True]
    finally:
        engine.shutdown()
    assert engine._pending == [] and engine._requests == {}


@pytest.mark.parametrize("defer", [False, True], ids=["immediate", "deferred"])
def test_a_sink_that_raises_costs_only_its_own_output(engine, defer):
    """Not a failed step (nothing is run again) and not the other requests' outputs."""
    engine.defer_delivery = defer
    outputs: dict[str, list] = {"a": [], "b": []}

    def failing_once(output):
        if not outputs["a"] and not getattr(failing_once, "failed", False):
            failing_once.failed = True
            raise RuntimeError("the event loop is gone")
        outputs["a"].append(output)

    params = SamplingParams(max_new_tokens=4, ignore_eos_token=True)
    ids = engine.tokenizer(PROMPTS[0]).input_ids
    a = engine.make_request(ids, params, request_id=f"a-{defer}", sink=failing_once)
    b = engine.make_request(ids, params, request_id=f"b-{defer}", sink=outputs["b"].append)
    steps = engine.num_steps
    with counting(engine.runner, "run") as runs:
        engine.generate([a, b])
    assert runs["n"] == engine.num_steps - steps == 4  # no step was re-run one request at a time
    assert len(outputs["b"]) == 4 and outputs["b"][-1].finished
    assert len(outputs["a"]) == 3 and outputs["a"][-1].finished
    assert engine._pending == [] and engine._requests == {}
