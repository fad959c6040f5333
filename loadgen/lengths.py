"""Prompt and output lengths drawn from a distribution written as a short string.

"128"                      every request 128 tokens
"32:256"                   uniform over 32..256, both ends included
"lognormal:128:0.6"        lognormal with median 128 and sigma 0.6 (of the log), rounded,
"lognormal:128:0.6:1024"   ... clipped to [1, 1024] (default clip: 8 x the median)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LengthDist:
    """kind "fixed" (low), "uniform" (low..high) or "lognormal" (median, sigma, clipped to [1, high])."""

    kind: str
    low: int
    high: int
    sigma: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("fixed", "uniform", "lognormal"):
            raise ValueError(f"unknown length distribution {self.kind!r}")
        if self.low < 1 or self.high < self.low:
            raise ValueError(f"lengths must satisfy 1 <= low <= high, got {self.low}, {self.high}")

    @classmethod
    def parse(cls, text: str | int) -> LengthDist:
        """Read "128", "32:256" or "lognormal:MEDIAN:SIGMA[:MAX]"."""
        if isinstance(text, int):
            return cls("fixed", text, text)
        parts = str(text).strip().split(":")
        try:
            if parts[0] == "lognormal":
                if len(parts) not in (3, 4):
                    raise ValueError
                median, sigma = int(parts[1]), float(parts[2])
                high = int(parts[3]) if len(parts) == 4 else 8 * median
                return cls("lognormal", median, high, sigma)
            if len(parts) == 1:
                return cls("fixed", int(parts[0]), int(parts[0]))
            if len(parts) == 2:
                return cls("uniform", int(parts[0]), int(parts[1]))
        except ValueError:
            pass
        raise ValueError(f"length {text!r}: expected N, LOW:HIGH or lognormal:MEDIAN:SIGMA[:MAX]")

    def sample(self, count: int, rng: np.random.Generator) -> list[int]:
        """`count` lengths (the rng is not touched for a fixed length)."""
        if self.kind == "fixed":
            return [self.low] * count
        if self.kind == "uniform":
            return [int(n) for n in rng.integers(self.low, self.high + 1, count)]
        draws = np.rint(self.low * np.exp(self.sigma * rng.standard_normal(count)))
        return [int(n) for n in np.clip(draws, 1, self.high)]

    @property
    def maximum(self) -> int:
        return self.high

    def __str__(self) -> str:
        if self.kind == "fixed":
            return str(self.low)
        if self.kind == "uniform":
            return f"{self.low}:{self.high}"
        return f"lognormal:{self.low}:{self.sigma}:{self.high}"
