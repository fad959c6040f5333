"""Stop conditions, seeds and lengths, through the whole engine."""

from loraplex.server.request import FinishReason, SamplingParams

from .test_engine_matches_transformers import PROMPTS, make_engine


def run(engine, text, **params):
    request = engine.make_request(engine.tokenizer(text).input_ids, SamplingParams(**params))
    engine.generate([request])
    return request


def test_seeded_sampling_alone_and_in_a_busy_batch(model_dirs):
    engine = make_engine(model_dirs["llama"])
    params = dict(
        max_new_tokens=20, do_sample=True, temperature=1.2, top_k=50, seed=1234, ignore_eos_token=True
    )
    alone = run(engine, PROMPTS[0], **params)
    target = engine.make_request(engine.tokenizer(PROMPTS[0]).input_ids, SamplingParams(**params))
    company = [
        engine.make_request(
            engine.tokenizer(text).input_ids,
            SamplingParams(max_new_tokens=30, do_sample=True, top_p=0.9, ignore_eos_token=True),
        )
        for text in PROMPTS[1:]
    ]
    engine.generate([company[0], company[1], target, *company[2:]])
    assert target.output_token_ids == alone.output_token_ids
    other_seed = run(engine, PROMPTS[0], **{**params, "seed": 99})
    assert other_seed.output_token_ids != alone.output_token_ids


def test_unseeded_requests_get_a_seed_that_reproduces_them(model_dirs):
    engine = make_engine(model_dirs["llama"])
    first = run(engine, PROMPTS[1], max_new_tokens=12, do_sample=True, ignore_eos_token=True)
    again = run(engine, PROMPTS[1], max_new_tokens=12, do_sample=True, seed=first.seed, ignore_eos_token=True)
    assert again.output_token_ids == first.output_token_ids


def test_max_new_tokens_finishes_with_length(model_dirs):
    engine = make_engine(model_dirs["qwen2"])
    request = run(engine, PROMPTS[2], max_new_tokens=5, ignore_eos_token=True)
    assert request.num_output_tokens == 5 and request.finish_reason is FinishReason.LENGTH


def test_stop_sequence_matched_on_decoded_text(model_dirs):
    engine = make_engine(model_dirs["mistral"])
    full = run(engine, PROMPTS[3], max_new_tokens=30, ignore_eos_token=True)
    text = full.detokenizer.text
    stop = text[10:13]
    assert len(stop) == 3
    outputs = []
    request = engine.make_request(
        engine.tokenizer(PROMPTS[3]).input_ids,
        SamplingParams(max_new_tokens=30, stop=(stop, "never-generated"), ignore_eos_token=True),
        sink=outputs.append,
    )
    engine.generate([request])
    assert request.finish_reason is FinishReason.STOP_SEQUENCE
    final = outputs[-1]
    assert final.finished and final.finish_reason is FinishReason.STOP_SEQUENCE
    assert stop in final.generated_text
    assert text.startswith(final.generated_text)
    assert final.generated_text.index(stop) + len(stop) > len(final.generated_text) - 6


def test_eos_token_finishes_unless_ignored(model_dirs):
    engine = make_engine(model_dirs["llama"])
    full = run(engine, PROMPTS[0], max_new_tokens=12, ignore_eos_token=True)
    eos = full.output_token_ids[4]
    first = full.output_token_ids.index(eos)
    engine.scheduler.eos_token_ids = frozenset({eos})
    stopped = run(engine, PROMPTS[0], max_new_tokens=12)
    assert stopped.finish_reason is FinishReason.EOS_TOKEN
    assert stopped.output_token_ids == full.output_token_ids[: first + 1]
    ignored = run(engine, PROMPTS[0], max_new_tokens=12, ignore_eos_token=True)
    assert ignored.output_token_ids == full.output_token_ids


def test_streamed_text_adds_up_to_the_generated_text(model_dirs):
    engine = make_engine(model_dirs["llama"])
    outputs = []
    request = engine.make_request(
        engine.tokenizer(PROMPTS[4]).input_ids,
        SamplingParams(max_new_tokens=25, ignore_eos_token=True),
        sink=outputs.append,
    )
    engine.generate([request])
    assert len(outputs) == 25 and outputs[-1].finished
    assert "".join(o.token.text for o in outputs) == outputs[-1].generated_text
    assert outputs[-1].generated_text == engine.tokenizer.decode(request.output_token_ids)


def test_a_request_that_can_never_fit_is_refused_not_hung(model_dirs):
    engine = make_engine(model_dirs["llama"], max_total_tokens=64, max_input_length=48)
    outputs = []
    request = engine.make_request(
        engine.tokenizer(PROMPTS[1]).input_ids, SamplingParams(max_new_tokens=60), sink=outputs.append
    )
    engine.generate([request])
    assert outputs[-1].error_type == "validation" and "max_new_tokens" in outputs[-1].error
    assert engine.allocator.num_free_blocks == engine.allocator.num_blocks


def test_prompt_logprobs_match_transformers_across_chunks(model_dirs, references):
    from .reference import reference_logits

    engine = make_engine(model_dirs["qwen2"], max_batch_prefill_tokens=5)
    outputs = []
    ids = engine.tokenizer(PROMPTS[1]).input_ids
    params = SamplingParams(max_new_tokens=3, prompt_logprobs=True, top_n_tokens=3, ignore_eos_token=True)
    request = engine.make_request(ids, params, sink=outputs.append)
    engine.generate([request])
    prompt = outputs[-1].prompt
    assert [t.id for t in prompt] == ids and prompt[0].logprob is None
    expected = reference_logits(references["qwen2"], ids).log_softmax(dim=1)
    for position, token in enumerate(prompt[1:], start=1):
        assert abs(token.logprob - expected[position - 1, ids[position]].item()) < 1e-4
        top_ids = expected[position - 1].topk(3).indices.tolist()
        assert [i for i, _ in token.top] == top_ids
    assert all(len(o.token.top) == 3 for o in outputs)
