"""The peer a Python user would reach for: transformers + peft, mixed-adapter batches, static batching.

Every adapter is loaded into one PeftModel (`load_adapter`); each batch passes one adapter name per
row to `generate(..., adapter_names=[...])` ("__base__" for a request without adapter). Requests run in
arrival order, `batch_size` at a time, left-padded; a batch decodes min_new_tokens = max_new_tokens =
its longest request's length with EOS disabled, so every request gets at least its asked length and
only the asked tokens are counted.

Timestamps: a logits processor notes the time of every decoding step, so token k of every row of a
batch is timed when step k's logits are ready. A request starts when its batch starts (a closed loop
of `batch_size` clients) and ends when `generate` returns (that is when a user gets it).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from loraplex.loadgen.stats import RequestResult
from loraplex.loadgen.workload import RequestSpec

BASE = "__base__"


class StepClock:
    """A logits processor that records when each generation step's logits are ready."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter())
        return scores


def load_peer(
    model_dir: Path,
    adapter_root: Path | None,
    adapter_ids: Sequence[str],
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
):
    """(model, tokenizer): the base model, wrapped in a PeftModel holding every adapter when any are given."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device.startswith("cuda"):  # straight to the GPU, not through host memory
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, device_map=device).eval()
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if adapter_ids:
        from peft import PeftModel

        first, *rest = adapter_ids
        model = PeftModel.from_pretrained(
            model, adapter_root / first, adapter_name=first, low_cpu_mem_usage=True
        )
        for adapter_id in rest:
            model.load_adapter(adapter_root / adapter_id, adapter_name=adapter_id, low_cpu_mem_usage=True)
        model.eval()
    return model, tokenizer


def generate_batch(
    model, tokenizer, batch: Sequence[RequestSpec], device: torch.device, use_adapters: bool
) -> list[RequestResult]:
    """Run one static batch and return a timed result per request."""
    from transformers import LogitsProcessorList

    prompts = [tokenizer(r.prompt).input_ids for r in batch]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    new_tokens = max(r.output_len for r in batch)
    clock = StepClock(device)
    kwargs = {}
    if use_adapters:
        kwargs["adapter_names"] = [r.adapter_id or BASE for r in batch]
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            logits_processor=LogitsProcessorList([clock]),
            **kwargs,
        )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    ended = time.perf_counter()
    if out.shape[1] != width + new_tokens or len(clock.times) != new_tokens:
        raise RuntimeError(f"peft peer generated {out.shape[1] - width} tokens, expected {new_tokens}")
    return [
        RequestResult(
            index=r.index,
            adapter_id=r.adapter_id,
            prompt_len=r.prompt_len,
            output_len=r.output_len,
            start=started,
            token_times=clock.times[: r.output_len],
            end=ended,
            prompt_tokens=len(p),
            generated_tokens=r.output_len,
            finish_reason="length",
        )
        for r, p in zip(batch, prompts, strict=True)
    ]


def run_peer(
    model,
    tokenizer,
    requests: Sequence[RequestSpec],
    batch_size: int,
    device: str = "cpu",
    deadline: float | None = None,
) -> tuple[list[RequestResult], float]:
    """All requests in arrival order, `batch_size` at a time -> (results, wall seconds).

    With a `deadline` (time.perf_counter value), no batch starts once it is passed; the results then
    cover the batches that ran.
    """
    target = torch.device(device)
    use_adapters = any(r.adapter_id for r in requests)
    warm = dataclasses.replace(requests[0], output_len=2)
    generate_batch(model, tokenizer, [warm], target, use_adapters)
    results: list[RequestResult] = []
    started = time.perf_counter()
    for i in range(0, len(requests), batch_size):
        if deadline is not None and results and time.perf_counter() > deadline:
            break
        results.extend(generate_batch(model, tokenizer, requests[i : i + batch_size], target, use_adapters))
    return results, time.perf_counter() - started
