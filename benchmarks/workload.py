"""Fixed-seed synthetic requests: prompt token ids and output lengths."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class SyntheticRequest:
    prompt_ids: list[int]
    output_len: int


def synthetic_requests(
    count: int,
    prompt_range: tuple[int, int],
    output_range: tuple[int, int],
    vocab_size: int,
    seed: int = 0,
    first_token_id: int = 3,
) -> list[SyntheticRequest]:
    """Prompt and output lengths uniform in their (inclusive) ranges, prompt tokens uniform over the vocab."""
    rng = random.Random(seed)
    requests = []
    for _ in range(count):
        prompt_len = rng.randint(*prompt_range)
        prompt = [rng.randrange(first_token_id, vocab_size) for _ in range(prompt_len)]
        requests.append(SyntheticRequest(prompt, rng.randint(*output_range)))
    return requests
