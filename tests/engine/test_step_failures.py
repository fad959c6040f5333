"""A step that raises: one bad request fails alone, a passing fault fails no one, a broken engine stops."""

import pytest

from loraplex.server.request import SamplingParams

from .test_engine_matches_transformers import PROMPTS, make_engine


class InjectedFault(RuntimeError):
    pass


def requests_for(engine, sinks, ids=("a", "b", "poison", "c")):
    made = []
    for i, request_id in enumerate(ids):
        outputs = sinks.setdefault(request_id, [])
        params = SamplingParams(max_new_tokens=8 + i, ignore_eos_token=True)
        ids_ = engine.tokenizer(PROMPTS[i]).input_ids
        made.append(engine.make_request(ids_, params, request_id=request_id, sink=outputs.append))
    return made


def inject(engine, monkeypatch, fails):
    """runner.run raises InjectedFault whenever fails(batch, call number) says so."""
    run, calls = engine.runner.run, {"n": 0}

    def faulty(batch):
        calls["n"] += 1
        if fails(batch, calls["n"]):
            raise InjectedFault(f"fault in call {calls['n']}")
        return run(batch)

    monkeypatch.setattr(engine.runner, "run", faulty)
    return calls


def holds(batch, request_id):
    return any(row.request.request_id == request_id for row in batch.rows)


@pytest.fixture(params=[False, True], ids=["immediate", "deferred"])
def engine(model_dirs, request):
    """The CPU engine, handing outputs over at once or, as on CUDA, after the next step is queued."""
    made = make_engine(model_dirs["llama"])
    made.defer_delivery = request.param
    return made


@pytest.fixture
def clean(engine):
    """The requests' greedy tokens when nothing fails."""
    made = requests_for(engine, {})
    engine.generate(made)
    return {r.request_id: r.output_token_ids for r in made}


def test_a_request_that_breaks_the_step_fails_alone(engine, clean, monkeypatch):
    """It breaks the step once it has two tokens (mid-decode); everyone else finishes as if it were
    not there, and every KV block comes back."""
    inject(engine, monkeypatch, lambda batch, n: any(
        row.request.request_id == "poison" and row.request.num_output_tokens >= 2 for row in batch.rows
    ))  # fmt: skip
    sinks = {}
    made = requests_for(engine, sinks)
    engine.generate(made)
    for request in made:
        if request.request_id != "poison":
            assert request.output_token_ids == clean[request.request_id]
            assert sinks[request.request_id][-1].error is None
    last = sinks["poison"][-1]
    assert last.finished and last.error_type == "generation" and "InjectedFault" in last.error
    assert len([o for o in sinks["poison"] if o.token is not None]) == 2
    assert engine.fatal_error is None and engine._consecutive_failures == 0
    assert engine.allocator.num_free_blocks == engine.allocator.num_blocks
    assert not engine.scheduler.has_work


def test_a_fault_that_passes_fails_no_request(engine, clean, monkeypatch):
    """The whole step fails once; each request run alone then succeeds, with the same tokens."""
    inject(engine, monkeypatch, lambda batch, n: n == 3)
    made = requests_for(engine, sinks := {})
    engine.generate(made)
    assert {r.request_id: r.output_token_ids for r in made} == clean
    assert all(outputs[-1].error is None for outputs in sinks.values())
    assert engine.fatal_error is None


def test_an_engine_that_always_fails_stops_after_three_steps(engine, monkeypatch):
    """Every request fails alone too, so each step counts; the third in a row marks the engine fatal."""
    calls = inject(engine, monkeypatch, lambda batch, n: True)
    sinks = {}
    for wave in range(3):
        assert engine.fatal_error is None
        engine.generate(requests_for(engine, sinks, ids=(f"{wave}a", f"{wave}b")))
    assert engine.fatal_error is not None and "InjectedFault" in engine.fatal_error
    assert all(outputs[-1].error_type == "generation" for outputs in sinks.values())
    assert calls["n"] == 3 * (1 + 2)  # each step, then each of its two requests alone
    assert engine.allocator.num_free_blocks == engine.allocator.num_blocks


def test_a_single_request_step_is_not_retried(engine, monkeypatch):
    calls = inject(engine, monkeypatch, lambda batch, n: n == 1)
    made = requests_for(engine, sinks := {}, ids=("only",))
    engine.generate(made)
    assert calls["n"] == 1
    assert sinks["only"][-1].error_type == "generation"
    assert engine.fatal_error is None


def test_steps_that_fail_only_whole_stop_the_engine_after_three(engine, monkeypatch):
    """Every step of several requests fails, every request alone passes (as when a whole batch runs out
    of memory): no request is to blame, and after three such steps in a row the engine stops rather than
    run every later step one request at a time."""
    calls = inject(engine, monkeypatch, lambda batch, n: len({r.request.request_id for r in batch.rows}) > 1)
    made = requests_for(engine, sinks := {})
    engine.generate(made)
    assert engine.fatal_error is not None and "InjectedFault" in engine.fatal_error
    assert calls["n"] == 3 * (1 + len(made))
    assert all(outputs[-1].error_type == "generation" for outputs in sinks.values())
    assert all(len([o for o in outputs if o.token is not None]) == 3 for outputs in sinks.values())
    assert engine.allocator.num_free_blocks == engine.allocator.num_blocks
