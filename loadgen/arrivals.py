"""When each request is sent: a Gamma renewal process (open loop) or N concurrent clients (closed loop).

Gamma inter-arrival times with mean 1/rate and coefficient of variation cv: shape k = 1/cv^2 and
scale theta = cv^2/rate, so the mean is k*theta = 1/rate and the standard deviation is sqrt(k)*theta
= cv/rate. cv = 1 is a Poisson process, cv > 1 is burstier, cv = 0 is evenly spaced. An infinite rate
sends everything at t = 0. (The same construction as S-LoRA's and vLLM's benchmarks.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Arrivals:
    """Open loop at `rate` requests/s with variation `cv`, or closed loop with `concurrency` clients.

    Closed loop: each client sends its next request when its previous one ends; arrival times are then
    decided by the server and `times` are all zero.
    """

    rate: float = math.inf
    cv: float = 1.0
    concurrency: int | None = None

    def __post_init__(self) -> None:
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.rate <= 0:
            raise ValueError(f"rate must be positive, got {self.rate}")
        if self.cv < 0:
            raise ValueError(f"cv must be >= 0, got {self.cv}")

    @property
    def closed_loop(self) -> bool:
        return self.concurrency is not None

    def times(self, count: int, rng: np.random.Generator) -> list[float]:
        """Send times in seconds from the start, non-decreasing (all 0 in closed loop or at rate inf)."""
        if self.closed_loop or math.isinf(self.rate):
            return [0.0] * count
        return gamma_arrival_times(count, self.rate, self.cv, rng)

    def describe(self) -> dict:
        if self.closed_loop:
            return {"mode": "closed_loop", "concurrency": self.concurrency}
        if math.isinf(self.rate):
            return {"mode": "burst", "rate": "inf"}
        return {"mode": "open_loop", "process": "gamma", "rate": self.rate, "cv": self.cv}


def gamma_intervals(count: int, rate: float, cv: float, rng: np.random.Generator) -> np.ndarray:
    """`count` inter-arrival gaps: Gamma(shape=1/cv^2, scale=cv^2/rate); constant 1/rate when cv = 0."""
    if cv == 0:
        return np.full(count, 1.0 / rate)
    shape = 1.0 / (cv * cv)
    return rng.gamma(shape, cv * cv / rate, count)


def gamma_arrival_times(count: int, rate: float, cv: float, rng: np.random.Generator) -> list[float]:
    """Arrival times: the first request at t = 0, then cumulative Gamma gaps."""
    gaps = gamma_intervals(count, rate, cv, rng)
    times = np.concatenate(([0.0], np.cumsum(gaps[: max(count - 1, 0)])))
    return [float(t) for t in times[:count]]
