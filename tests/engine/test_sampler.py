"""The sampler against transformers' logits processors, and seeded draws that ignore batch company."""

import math

import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from loraplex.server.request import Request, SamplingParams
from loraplex.server.sampler import (
    SamplingBatch,
    apply_penalties,
    apply_warpers,
    row_argmax,
    sample,
    uniform_for,
)

VOCAB = 50


def make_request(params: SamplingParams, tokens=(1, 5, 5, 9), outputs=(9, 3), seed=7) -> Request:
    request = Request(request_id="r", prompt_token_ids=list(tokens), params=params, seed=seed)
    request.token_ids.extend(outputs)
    return request


ROW_PARAMS = [
    SamplingParams(),
    SamplingParams(do_sample=True, temperature=0.7),
    SamplingParams(do_sample=True, top_k=5),
    SamplingParams(do_sample=True, top_p=0.8),
    SamplingParams(do_sample=True, typical_p=0.6),
    SamplingParams(do_sample=True, temperature=1.3, top_k=10, top_p=0.9, typical_p=0.95),
    SamplingParams(repetition_penalty=1.5),
    SamplingParams(do_sample=True, repetition_penalty=0.8, temperature=0.5),
]


def hf_reference(logits_row: torch.Tensor, request: Request) -> torch.Tensor:
    params = request.params
    ids = torch.tensor([request.token_ids])
    scores = logits_row.unsqueeze(0).clone()
    if params.repetition_penalty != 1.0:
        scores = RepetitionPenaltyLogitsProcessor(params.repetition_penalty)(ids, scores)
    if params.sampling:
        scores = TemperatureLogitsWarper(params.temperature)(ids, scores)
        if params.top_k:
            scores = TopKLogitsWarper(params.top_k)(ids, scores)
        if params.top_p < 1.0:
            scores = TopPLogitsWarper(params.top_p)(ids, scores)
        if params.typical_p < 1.0:
            scores = TypicalLogitsWarper(params.typical_p)(ids, scores)
    return scores[0]


def test_penalties_and_warpers_match_transformers_row_by_row():
    torch.manual_seed(0)
    logits = torch.randn(len(ROW_PARAMS), VOCAB) * 3
    requests = [make_request(p) for p in ROW_PARAMS]
    batch = SamplingBatch.build(requests, VOCAB, torch.device("cpu"))
    ours = apply_penalties(logits, batch)
    warped = apply_warpers(ours, batch)
    for i, request in enumerate(requests):
        row = warped[i] if request.params.sampling else ours[i]
        expected = hf_reference(logits[i], request)
        assert torch.equal(torch.isinf(row), torch.isinf(expected)), f"row {i}: kept tokens differ"
        finite = ~torch.isinf(expected)
        torch.testing.assert_close(row[finite], expected[finite], rtol=1e-5, atol=1e-5)


def test_frequency_and_presence_penalties_follow_openai():
    logits = torch.zeros(1, VOCAB)
    params = SamplingParams(frequency_penalty=0.5, presence_penalty=0.25)
    request = make_request(params, tokens=(4, 4, 4), outputs=(7, 7, 8))
    out = apply_penalties(logits, SamplingBatch.build([request], VOCAB, torch.device("cpu")))[0]
    assert out[7].item() == pytest.approx(-(2 * 0.5 + 0.25))
    assert out[8].item() == pytest.approx(-(0.5 + 0.25))
    assert out[4].item() == 0.0  # prompt tokens are not penalized


def test_greedy_rows_take_the_argmax_and_report_its_logprob():
    logits = torch.randn(3, VOCAB)
    requests = [make_request(SamplingParams()) for _ in range(3)]
    result = sample(logits, SamplingBatch.build(requests, VOCAB, torch.device("cpu")))
    assert torch.equal(result.tokens, logits.argmax(dim=1))
    torch.testing.assert_close(result.logprobs, logits.log_softmax(dim=1).max(dim=1).values)
    assert result.top_ids is None


def built(batch: SamplingBatch) -> set[str]:
    return {name for name, value in vars(batch).items() if isinstance(value, torch.Tensor)}


def test_a_batch_builds_only_the_tensors_its_rows_use():
    device = torch.device("cpu")
    greedy = [make_request(SamplingParams(top_n_tokens=2)) for _ in range(3)]
    assert built(SamplingBatch.build(greedy, VOCAB, device)) == set()  # nothing to copy to the device
    repeating = [*greedy, make_request(SamplingParams(repetition_penalty=1.3))]
    assert built(SamplingBatch.build(repeating, VOCAB, device)) == {"repetition_penalty", "all_tokens"}
    present = [*greedy, make_request(SamplingParams(presence_penalty=0.5))]
    assert built(SamplingBatch.build(present, VOCAB, device)) == {
        "frequency_penalty",
        "presence_penalty",
        "output_tokens",
    }
    drawing = [*greedy, make_request(SamplingParams(do_sample=True, temperature=0.7))]
    batch = SamplingBatch.build(drawing, VOCAB, device)
    assert built(batch) == {"temperature", "top_k", "top_p", "typical_p", "sampling", "uniforms"}
    assert batch.sampling.tolist() == [False, False, False, True]
    # The greedy rows of a drawing batch still take the argmax.
    logits = torch.randn(4, VOCAB)
    assert torch.equal(sample(logits, batch).tokens[:3], logits[:3].argmax(dim=1))


def test_top_n_alternatives_are_the_most_likely_tokens():
    logits = torch.randn(3, VOCAB)
    requests = [make_request(SamplingParams(top_n_tokens=n)) for n in (0, 2, 5)]
    result = sample(logits, SamplingBatch.build(requests, VOCAB, torch.device("cpu")))
    expected = logits.log_softmax(dim=1).topk(5, dim=1)
    assert torch.equal(result.top_ids, expected.indices)
    torch.testing.assert_close(result.top_logprobs, expected.values)


def test_draws_follow_the_distribution():
    torch.manual_seed(1)
    logits = torch.randn(1, 8)
    probs = logits.softmax(dim=1)[0]
    draws = 4000
    requests = [make_request(SamplingParams(do_sample=True), seed=s) for s in range(draws)]
    batch = SamplingBatch.build(requests, 8, torch.device("cpu"))
    tokens = sample(logits.expand(draws, -1).clone(), batch).tokens
    counts = torch.bincount(tokens, minlength=8).float()
    expected = probs * draws
    chi2 = (((counts - expected) ** 2) / expected).sum().item()
    assert chi2 < 30, f"chi-square {chi2} with 7 degrees of freedom"


def test_uniforms_depend_only_on_seed_and_step():
    assert uniform_for(42, 3) == uniform_for(42, 3)
    values = {uniform_for(42, step) for step in range(100)}
    assert len(values) == 100 and all(0 <= v < 1 for v in values)
    assert abs(sum(values) / 100 - 0.5) < 0.1
    assert not math.isclose(uniform_for(1, 0), uniform_for(2, 0))


def test_seeded_row_draws_the_same_token_whatever_the_batch():
    torch.manual_seed(2)
    logits = torch.randn(6, VOCAB)
    target = make_request(SamplingParams(do_sample=True, temperature=1.5, top_p=0.95), seed=123)
    alone = sample(logits[:1].clone(), SamplingBatch.build([target], VOCAB, torch.device("cpu"))).tokens
    company = [make_request(p, seed=i) for i, p in enumerate(ROW_PARAMS[:5])]
    busy_logits = torch.cat([logits[1:], logits[:1]])
    busy = sample(busy_logits, SamplingBatch.build([*company, target], VOCAB, torch.device("cpu"))).tokens
    assert busy[-1] == alone[0]


@pytest.mark.parametrize("vocab", [5, 255, 256, 300, 32000, 32001])
def test_row_argmax_is_torch_argmax_with_ties_nan_and_infinities(vocab):
    generator = torch.Generator().manual_seed(vocab)
    # Values from a small set, so rows hold many ties, some across block borders.
    logits = torch.randint(-3, 3, (12, vocab), generator=generator).float()
    logits[1] = -math.inf  # nothing but -inf: index 0
    logits[2, vocab // 2 :] = 7.0  # the maximum first reached mid-row, then repeated
    logits[3, -1] = 9.0  # the maximum in the last column (the tail when V % 128 != 0)
    logits[4, -1] = math.nan  # NaN counts as the largest...
    logits[5, vocab // 3] = math.nan  # ...and the first NaN wins
    logits[5, -1] = math.nan
    logits[6, 0] = math.inf
    logits[6, -1] = math.inf  # ties at +inf: the first
    logits[7] = 1.5  # one long tie: index 0
    got = row_argmax(logits)
    assert got.dtype == torch.int64
    assert torch.equal(got, logits.argmax(dim=1))
    # Views (not contiguous) give the same answer.
    wide = torch.cat([logits, logits], 1)[:, :vocab]
    assert torch.equal(row_argmax(wide), logits.argmax(dim=1))
