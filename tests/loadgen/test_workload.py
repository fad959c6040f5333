"""The workload generator's distributions: power-law alpha, Gamma cv, Punica's regimes, lengths, seeds."""

import math

import numpy as np
import pytest

from loraplex.loadgen.arrivals import Arrivals, gamma_arrival_times, gamma_intervals
from loraplex.loadgen.lengths import LengthDist
from loraplex.loadgen.popularity import (
    assign_indices,
    power_law_probabilities,
    power_samples,
    zipf_probabilities,
)
from loraplex.loadgen.workload import WorkloadSpec, build_workload, distinct_adapters


@pytest.mark.parametrize("alpha", [0.1, 0.3, 1.0, 2.0])
def test_power_law_alpha_is_recovered_by_maximum_likelihood(alpha):
    x = power_samples(50_000, alpha, np.random.default_rng(1))
    alpha_hat = -len(x) / np.log(x).sum()  # MLE of the power-function distribution
    assert alpha_hat == pytest.approx(alpha, rel=0.03)


@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_power_law_adapter_frequencies_match_the_discrete_law(alpha):
    n = 60_000
    indices = assign_indices("powerlaw", n, 8, np.random.default_rng(2), alpha)
    observed = np.bincount(indices, minlength=8) / n
    expected = power_law_probabilities(8, alpha)
    assert expected.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(observed, expected, atol=0.01)


def test_power_law_alpha_one_is_uniform_and_smaller_alpha_favours_the_first_adapters():
    np.testing.assert_allclose(power_law_probabilities(4, 1.0), [0.25] * 4)
    skewed = power_law_probabilities(16, 0.3)
    assert skewed[0] > 0.4 and np.all(np.diff(skewed) < 0)


@pytest.mark.parametrize("cv", [0.5, 1.0, 2.0])
def test_gamma_intervals_have_the_asked_mean_and_coefficient_of_variation(cv):
    gaps = gamma_intervals(200_000, rate=20.0, cv=cv, rng=np.random.default_rng(3))
    assert gaps.mean() == pytest.approx(1 / 20.0, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)


def test_gamma_cv_zero_is_evenly_spaced_and_times_start_at_zero():
    times = gamma_arrival_times(5, rate=4.0, cv=0.0, rng=np.random.default_rng(0))
    assert times == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    poisson = gamma_arrival_times(100, rate=10.0, cv=1.0, rng=np.random.default_rng(0))
    assert poisson[0] == 0.0 and all(b >= a for a, b in zip(poisson, poisson[1:], strict=False))


def test_closed_loop_and_burst_send_everything_at_once():
    rng = np.random.default_rng(0)
    assert Arrivals(concurrency=4).times(3, rng) == [0.0, 0.0, 0.0]
    assert Arrivals().times(3, rng) == [0.0, 0.0, 0.0]
    assert Arrivals(concurrency=4).describe() == {"mode": "closed_loop", "concurrency": 4}
    with pytest.raises(ValueError):
        Arrivals(rate=0)
    with pytest.raises(ValueError):
        Arrivals(concurrency=0)


def test_punica_regimes_name_the_right_number_of_adapters():
    rng = np.random.default_rng(4)
    n = 100
    assert len(set(assign_indices("distinct", n, n, rng))) == n
    assert len(set(assign_indices("uniform", n, n, rng))) == math.ceil(math.sqrt(n))
    assert set(assign_indices("identical", n, 5, rng)) == {0}
    assert assign_indices("base", 3, 0, rng) == [None, None, None]
    assert assign_indices("roundrobin", 5, 2, rng) == [0, 1, 0, 1, 0]
    with pytest.raises(ValueError, match="needs 100 adapters"):
        assign_indices("distinct", n, 10, rng)


def test_skewed_regime_follows_zipf_1_5():
    n = 100_000
    counts = np.bincount(assign_indices("skewed", n, 32, np.random.default_rng(5)), minlength=32)
    expected = zipf_probabilities(32, 1.5)
    np.testing.assert_allclose(counts / n, expected, atol=0.01)
    assert counts[0] / counts[1] == pytest.approx(2**1.5, rel=0.05)
    assert counts[0] / counts[3] == pytest.approx(4**1.5, rel=0.08)


def test_lengths_parse_and_sample_within_bounds():
    rng = np.random.default_rng(6)
    assert LengthDist.parse("128").sample(3, rng) == [128, 128, 128]
    uniform = LengthDist.parse("4:7").sample(2000, rng)
    assert set(uniform) == {4, 5, 6, 7}
    lognormal = LengthDist.parse("lognormal:100:0.5:400")
    draws = lognormal.sample(20_000, rng)
    assert min(draws) >= 1 and max(draws) <= 400
    assert np.median(draws) == pytest.approx(100, rel=0.05)
    assert str(LengthDist.parse("4:7")) == "4:7"
    for bad in ("", "0", "9:3", "lognormal:3", "x"):
        with pytest.raises(ValueError):
            LengthDist.parse(bad)


def _spec(**changes):
    base = dict(
        num_requests=40,
        prompt_len=LengthDist.parse("3:9"),
        output_len=LengthDist.parse("2:6"),
        popularity="powerlaw",
        alpha=0.5,
        adapters=tuple(f"a{i}" for i in range(8)),
        arrivals=Arrivals(rate=5.0, cv=2.0),
        seed=7,
        vocab=(3, 500),
    )
    base.update(changes)
    return WorkloadSpec(**base)


def test_a_seed_fixes_the_workload_and_each_part_has_its_own_stream():
    first, again = build_workload(_spec()), build_workload(_spec())
    assert first == again
    other_seed = build_workload(_spec(seed=8))
    assert [r.prompt_ids for r in other_seed] != [r.prompt_ids for r in first]
    regime = build_workload(_spec(popularity="identical", arrivals=Arrivals(concurrency=3)))
    assert [(r.prompt, r.output_len) for r in regime] == [(r.prompt, r.output_len) for r in first]
    assert distinct_adapters(regime) == 1


def test_requests_carry_word_prompts_of_the_asked_length():
    requests = build_workload(_spec())
    for r in requests:
        assert 3 <= r.prompt_len <= 9 and 2 <= r.output_len <= 6
        assert r.prompt.split() == [f"w{t}" for t in r.prompt_ids]
        assert all(3 <= t < 500 for t in r.prompt_ids)
    assert [r.send_time for r in requests] == sorted(r.send_time for r in requests)
    assert _spec().describe()["arrivals"] == {"mode": "open_loop", "process": "gamma", "rate": 5.0, "cv": 2.0}
