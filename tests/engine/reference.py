"""Helpers that compare the engine with transformers, step by step."""

from __future__ import annotations

import torch

from loraplex.server.cuda_graphs import DecodeGraphs
from loraplex.server.engine import Engine


def capture_logits(engine: Engine) -> dict[str, dict[int, torch.Tensor]]:
    """Record, for every request, the logits the engine sampled its k-th output token from (on CPU)."""
    records: dict[str, dict[int, torch.Tensor]] = {}
    execute = engine.runner.execute

    def recording_execute(batch):
        logits = execute(batch)
        for row, row_logits in zip(batch.sampling_rows, logits, strict=True):
            request = row.request
            records.setdefault(request.request_id, {})[request.num_output_tokens] = row_logits.float().cpu()
        return logits

    engine.runner.execute = recording_execute
    return records


@torch.no_grad()
def reference_logits(model, token_ids: list[int]) -> torch.Tensor:
    """transformers' next-token logits at every position of `token_ids` -> [len, V]."""
    return model(torch.tensor([token_ids])).logits[0].float()


@torch.no_grad()
def reference_greedy(model, prompt: list[int], max_new_tokens: int) -> list[int]:
    ids = list(prompt)
    for _ in range(max_new_tokens):
        ids.append(int(reference_logits(model, ids)[-1].argmax()))
    return ids[len(prompt) :]


def assert_matches_reference(model, request, records, atol: float = 1e-4) -> None:
    """Greedy tokens identical, and every step's logits within `atol` of transformers'."""
    prompt = request.prompt_token_ids
    full = request.token_ids
    expected = reference_logits(model, full)
    steps = records[request.request_id]
    assert sorted(steps) == list(range(request.num_output_tokens)), "a step's logits are missing"
    for k, logits in steps.items():
        reference = expected[len(prompt) + k - 1]
        diff = (logits - reference).abs().max().item()
        assert diff < atol, f"{request.request_id}: output {k} logits differ by {diff}"
    assert request.output_token_ids == reference_greedy(model, prompt, request.num_output_tokens)


def with_fixed_decode(engine: Engine) -> Engine:
    """Decode-only steps through the fixed buffers of a CUDA graph: captured graphs on CUDA (the
    engine's default); elsewhere the same buffers, padding and paged decode kernel (TRITON_INTERPRET)
    run eagerly. Mixed steps' decode rows go through the paged kernel as well."""
    if engine.runner.graphs is None:
        assert engine.device.type == "cpu", "a CUDA engine captures its graphs itself"
        engine.runner.graphs = DecodeGraphs.for_engine(engine, use_graphs=False)
        engine.runner.paged_decode = True
    return engine
