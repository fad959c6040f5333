"""Metric arithmetic against hand-computed cases."""

import math

import numpy as np
import pytest

from loraplex.loadgen.stats import RequestResult, Slo, distribution, percentile, slo_attainment, summarize


def test_percentiles_interpolate_linearly():
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 90) == pytest.approx(3.7)  # rank 0.9 * 3 = 2.7 -> 3 + 0.7
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile(values, 100) == 4.0
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))
    rng = np.random.default_rng(0)
    sample = list(rng.random(101))
    for q in (1, 37.5, 50, 90, 99):
        assert percentile(sample, q) == pytest.approx(np.percentile(sample, q))


def _result(index, start, tokens, end, **kw):
    return RequestResult(index, None, 4, len(tokens), start, list(tokens), end, **kw)


def test_ttft_itl_e2e_and_tpot_from_token_timestamps():
    r = _result(0, 10.0, [10.5, 10.7, 11.0, 11.6], 11.7)
    assert r.ttft == pytest.approx(0.5)
    assert r.itls == pytest.approx([0.2, 0.3, 0.6])
    assert r.e2e == pytest.approx(1.7)
    assert r.tpot == pytest.approx((1.7 - 0.5) / 3)
    assert _result(1, 0.0, [0.1], 0.2).tpot is None


def test_summary_throughput_latency_and_slo():
    results = [
        _result(0, 0.0, [1.0, 2.0, 3.0], 3.0, prompt_tokens=10, generated_tokens=3),
        _result(1, 1.0, [1.5, 2.0], 5.0, prompt_tokens=6),
        RequestResult(2, None, 4, 2, 2.0, [], None, error="HTTP 429: busy"),
    ]
    s = summarize(results, slo=0.75)
    assert (s["requests"], s["completed"], s["failed"]) == (3, 2, 1)
    assert s["duration_s"] == 5.0  # first send 0.0 .. last response 5.0
    assert s["generated_tokens"] == 5 and s["prompt_tokens"] == 16
    assert s["output_tokens_per_s"] == pytest.approx(1.0)
    assert s["requests_per_s"] == pytest.approx(0.4)
    assert s["total_tokens_per_s"] == pytest.approx(21 / 5)
    assert s["ttft_s"]["p50"] == pytest.approx(0.75)  # TTFTs 1.0 and 0.5
    assert s["ttft_s"]["mean"] == pytest.approx(0.75)
    assert s["itl_s"]["max"] == pytest.approx(1.0)  # gaps 1.0, 1.0, 0.5
    assert s["itl_s"]["p50"] == pytest.approx(1.0)
    assert s["e2e_s"]["p99"] == pytest.approx(3.0 + 0.99 * 1.0)  # e2e 3.0 and 4.0
    assert s["slo"] == {  # the failure misses; 1 of 3 requests met in a 5 s run
        "ttft_bound_s": 0.75, "attainment": pytest.approx(1 / 3), "goodput_requests_per_s": pytest.approx(0.2)
    }  # fmt: skip
    assert s["length_mismatches"] == 0
    assert s["errors"] == ["HTTP 429: busy"]
    assert slo_attainment(results, 1.0) == pytest.approx(2 / 3)


def test_summary_of_an_explicit_duration_and_of_nothing():
    results = [_result(0, 0.0, [0.5, 1.0], 1.0)]
    assert summarize(results, duration=4.0)["output_tokens_per_s"] == pytest.approx(0.5)
    empty = distribution([])
    assert math.isnan(empty["p50"]) and math.isnan(empty["mean"])


def test_slo_with_ttft_tpot_and_e2e_bounds():
    # TTFT 0.25, TPOT (1.75 - 0.25) / 3 = 0.5, e2e 1.75 (binary fractions: bounds compare exactly)
    steady = _result(0, 0.0, [0.25, 0.75, 1.25, 1.75], 1.75)
    # TTFT 0.1, TPOT (3.0 - 0.1) / 1 = 2.9, e2e 3.0: fast first token, slow afterwards
    stalled = _result(1, 0.0, [0.1, 3.0], 3.0)
    single = _result(2, 0.0, [0.3], 0.4)  # one token: no TPOT, meets any TPOT bound
    results = [steady, stalled, single]
    assert slo_attainment(results, Slo(ttft_s=0.25)) == pytest.approx(2 / 3)
    assert slo_attainment(results, Slo(ttft_s=0.25, tpot_s=0.5)) == pytest.approx(1 / 3)
    assert slo_attainment(results, Slo(tpot_s=0.5)) == pytest.approx(2 / 3)  # the bound is inclusive
    assert slo_attainment(results, Slo(tpot_s=0.49)) == pytest.approx(1 / 3)
    assert slo_attainment(results, Slo(e2e_s=1.75)) == pytest.approx(2 / 3)
    assert slo_attainment(results, Slo()) == pytest.approx(1.0)
    s = summarize(results, Slo(ttft_s=0.25, tpot_s=0.5, e2e_s=2.5))  # only `steady` meets all three
    assert s["slo"] == {
        "ttft_bound_s": 0.25, "tpot_bound_s": 0.5, "e2e_bound_s": 2.5,
        "attainment": pytest.approx(1 / 3), "goodput_requests_per_s": pytest.approx(1 / 3.0),
    }  # fmt: skip
