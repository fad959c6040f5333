"""A workload: a fixed-seed set of requests, each with a prompt, an output length, an adapter and a send time.

Prompts are words "w<id>" with ids uniform over `vocab`: for the benchmark models' word-level
tokenizer each word is exactly one token (token id = the number), so a prompt of k words is k tokens.
Other tokenizers split them differently; the server reports the real count.

With a `dataset` (`loadgen.dataset`), its prompts are sent instead, in its order, with its output
lengths where it has them (the `output_len` distribution fills in the rest).

Every random part draws from its own stream of the seed, so changing the popularity or the arrivals
leaves the prompts and lengths as they were: runs at 1, 4, 16 or 64 adapters send the same prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .arrivals import Arrivals
from .dataset import Dataset
from .lengths import LengthDist
from .popularity import assign_indices

_PROMPTS, _OUTPUTS, _ADAPTERS, _ARRIVALS = range(4)


@dataclass(frozen=True)
class RequestSpec:
    """One request to send. `adapter_id` None is the base model."""

    index: int
    prompt: str
    prompt_ids: tuple[int, ...]
    output_len: int
    adapter_id: str | None
    send_time: float

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)


@dataclass(frozen=True)
class WorkloadSpec:
    """What to generate; `adapters` is the pool the popularity regime draws from."""

    num_requests: int
    prompt_len: LengthDist = field(default_factory=lambda: LengthDist("fixed", 128, 128))
    output_len: LengthDist = field(default_factory=lambda: LengthDist("fixed", 32, 32))
    popularity: str = "powerlaw"
    alpha: float = 1.0
    adapters: tuple[str, ...] = ()
    arrivals: Arrivals = field(default_factory=Arrivals)
    seed: int = 0
    vocab: tuple[int, int] = (3, 32000)
    word: str = "w{}"
    dataset: Dataset | None = None

    def describe(self) -> dict:
        """The JSON form recorded with every result."""
        prompt_len, output_len, vocab = str(self.prompt_len), str(self.output_len), list(self.vocab)
        if self.dataset is not None:
            prompt_len, vocab = "dataset", None
            if all(p.output_len is not None for p in self.dataset.prompts[: self.num_requests]):
                output_len = "dataset"
            else:
                output_len = f"dataset, else {self.output_len}"
        return {
            "num_requests": self.num_requests,
            "prompt_len": prompt_len,
            "output_len": output_len,
            "popularity": self.popularity,
            "alpha": self.alpha if self.popularity == "powerlaw" else None,
            "adapter_pool": len(self.adapters),
            "arrivals": self.arrivals.describe(),
            "seed": self.seed,
            "prompt_vocab": vocab,
            "ignore_eos_token": True,
            **({"dataset": self.dataset.describe()} if self.dataset is not None else {}),
        }


def _stream(seed: int, part: int) -> np.random.Generator:
    return np.random.default_rng([seed, part])


def build_workload(spec: WorkloadSpec) -> list[RequestSpec]:
    """The requests of `spec`, in send order (identical for identical specs)."""
    n = spec.num_requests
    output_lens = spec.output_len.sample(n, _stream(spec.seed, _OUTPUTS))
    if spec.dataset is None:
        prompt_rng = _stream(spec.seed, _PROMPTS)
        prompt_lens = spec.prompt_len.sample(n, prompt_rng)
        prompts = [tuple(int(t) for t in prompt_rng.integers(*spec.vocab, size=k)) for k in prompt_lens]
        texts = [" ".join(spec.word.format(t) for t in ids) for ids in prompts]
    else:
        chosen = spec.dataset.prompts[:n]
        if len(chosen) < n:
            raise ValueError(f"the dataset holds {len(chosen)} prompts, {n} requests asked for")
        prompts, texts = [p.prompt_ids for p in chosen], [p.prompt for p in chosen]
        output_lens = [p.output_len or drawn for p, drawn in zip(chosen, output_lens, strict=True)]
    indices = assign_indices(
        spec.popularity, n, len(spec.adapters), _stream(spec.seed, _ADAPTERS), spec.alpha
    )
    times = spec.arrivals.times(n, _stream(spec.seed, _ARRIVALS))
    return [
        RequestSpec(
            index=i,
            prompt=texts[i],
            prompt_ids=prompts[i],
            output_len=output_lens[i],
            adapter_id=None if indices[i] is None else spec.adapters[indices[i]],
            send_time=times[i],
        )
        for i in range(n)
    ]


def distinct_adapters(requests: list[RequestSpec]) -> int:
    """How many different adapters the requests name (the base model not counted)."""
    return len({r.adapter_id for r in requests if r.adapter_id is not None})
