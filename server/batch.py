"""What the scheduler hands the runner each step, and what the runner hands back."""

from __future__ import annotations

from dataclasses import dataclass, field

from .request import Request


@dataclass
class ScheduledRow:
    """`num_tokens` tokens of `request` starting at position `start`; `samples` if they end its sequence."""

    request: Request
    start: int
    num_tokens: int
    samples: bool


@dataclass
class ScheduledBatch:
    rows: list[ScheduledRow]
    failed: list[tuple[Request, Exception]] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(row.num_tokens for row in self.rows)

    @property
    def sampling_rows(self) -> list[ScheduledRow]:
        return [row for row in self.rows if row.samples]


@dataclass
class StepOutput:
    """Per sampling row, in row order: the sampled token, its logprob, and its top alternatives."""

    token_ids: list[int]
    logprobs: list[float]
    top: list[list[tuple[int, float]] | None]
