"""Which adapter each request names: the popularity models of the multi-LoRA literature.

Punica's regimes, for n requests (the number of adapters follows from n):

- ``distinct``: every request its own adapter (n adapters);
- ``uniform``: ceil(sqrt(n)) adapters, each equally likely;
- ``skewed``: Zipf with exponent 1.5 over the pool, P(rank k) ~ k^-1.5 (k = 1, 2, ...);
- ``identical``: one adapter for all.

S-LoRA's ``powerlaw`` over a pool of N adapters: X ~ power-function distribution on [0, 1) with
exponent alpha, P(X <= x) = x^alpha (numpy's ``Generator.power``), and the adapter index is floor(N X).
alpha = 1 is uniform over the pool; a smaller alpha piles the requests onto the first adapters.

``roundrobin`` cycles through the pool (the most distinct adapters per batch), ``base`` names none.
"""

from __future__ import annotations

import math

import numpy as np

REGIMES = ("distinct", "uniform", "skewed", "identical", "powerlaw", "roundrobin", "base")
SKEWED_EXPONENT = 1.5


def power_samples(count: int, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """`count` draws of X in [0, 1) with P(X <= x) = x^alpha (inverse CDF: U^(1/alpha))."""
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    return rng.random(count) ** (1.0 / alpha)


def power_law_probabilities(num_adapters: int, alpha: float) -> np.ndarray:
    """P(index = i) = ((i+1)/N)^alpha - (i/N)^alpha for the S-LoRA power law over N adapters."""
    edges = (np.arange(num_adapters + 1) / num_adapters) ** alpha
    return np.diff(edges)


def zipf_probabilities(num_adapters: int, exponent: float = SKEWED_EXPONENT) -> np.ndarray:
    """P(index = i) proportional to (i+1)^-exponent, i = 0 .. N-1."""
    weights = np.arange(1, num_adapters + 1, dtype=np.float64) ** -exponent
    return weights / weights.sum()


def adapters_needed(regime: str, num_requests: int, pool_size: int) -> int:
    """How many adapters of the pool a regime can name for `num_requests` requests."""
    if regime == "base":
        return 0
    if regime == "identical":
        return 1
    if regime == "distinct":
        return num_requests
    if regime == "uniform":
        return math.ceil(math.sqrt(num_requests))
    if regime in ("skewed", "powerlaw", "roundrobin"):
        return pool_size
    raise ValueError(f"unknown popularity regime {regime!r}; expected one of {', '.join(REGIMES)}")


def assign_indices(
    regime: str,
    num_requests: int,
    pool_size: int,
    rng: np.random.Generator,
    alpha: float = 1.0,
) -> list[int | None]:
    """The adapter index (into a pool of `pool_size`) of each request; None means the base model.

    Raises ValueError when the pool is too small for the regime (``distinct`` needs one adapter per
    request, ``uniform`` ceil(sqrt(n))).
    """
    needed = adapters_needed(regime, num_requests, pool_size)
    if regime == "base":
        return [None] * num_requests
    if needed > pool_size or pool_size < 1:
        raise ValueError(
            f"popularity {regime!r} with {num_requests} requests needs {needed} adapters, "
            f"the pool has {pool_size}"
        )
    if regime == "identical":
        return [0] * num_requests
    if regime in ("distinct", "roundrobin"):
        return [i % pool_size for i in range(num_requests)]
    if regime == "uniform":
        return [int(i) for i in rng.integers(0, needed, num_requests)]
    if regime == "skewed":
        probabilities = zipf_probabilities(pool_size)
        return [int(i) for i in rng.choice(pool_size, size=num_requests, p=probabilities)]
    indices = np.floor(power_samples(num_requests, alpha, rng) * pool_size).astype(int)
    return [int(i) for i in np.minimum(indices, pool_size - 1)]
