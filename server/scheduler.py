"""Continuous batching: which requests run this step, with how many tokens, and what happens after.

Each step, running requests come first in arrival order (a decode is one token, a prefill chunk takes
what is left of the step's prefill budget), then waiting requests are admitted first-come first-served
while the budget, the batch size and the KV pool allow. When the pool cannot hold a running request's
next tokens, the newest running request is preempted: its blocks are freed and it waits at the head
of the queue to be recomputed. The batch goes out ordered by adapter slot, so each adapter's rows are
one contiguous segment.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from .adapters.manager import Readiness
from .batch import ScheduledBatch, ScheduledRow, StepOutput
from .kv_cache import BlockAllocator
from .request import FinishReason, Request, RequestOutput, RequestStatus, TokenOutput


class Scheduler:
    def __init__(
        self,
        allocator: BlockAllocator,
        max_batch_prefill_tokens: int,
        max_batch_size: int,
        eos_token_ids: frozenset[int],
        adapters: Any = None,
    ):
        self.allocator = allocator
        self.max_batch_prefill_tokens = max_batch_prefill_tokens
        self.max_batch_size = max_batch_size
        self.eos_token_ids = eos_token_ids
        self.adapters = adapters
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, request: Request) -> None:
        request.status = RequestStatus.WAITING
        self.waiting.append(request)

    def abort(self, request_id: str) -> Request | None:
        """Remove a request wherever it is and free its blocks; returns it, or None if unknown."""
        for request in self.running:
            if request.request_id == request_id:
                self.running.remove(request)
                self._finish(request, None)
                return request
        for request in self.waiting:
            if request.request_id == request_id:
                self.waiting.remove(request)
                self._finish(request, None)
                return request
        return None

    def schedule(self) -> ScheduledBatch:
        rows: list[ScheduledRow] = []
        prefill_budget = self.max_batch_prefill_tokens
        preempted = False
        index = 0
        while index < len(self.running):
            request = self.running[index]
            num_tokens = self._tokens_this_step(request, prefill_budget)
            if num_tokens == 0:
                index += 1
                continue
            target = request.num_computed_tokens + num_tokens
            while not self.allocator.can_allocate(request, target):
                victim = self.running[-1]
                self._preempt(victim)
                preempted = True
                if victim is request:
                    break
            if request.status is not RequestStatus.RUNNING:
                break
            self.allocator.allocate(request, target)
            rows.append(self._row(request, num_tokens))
            if self._is_prefill(request):
                prefill_budget -= num_tokens
            index += 1

        failed: list[tuple[Request, Exception]] = []
        if not preempted:
            self._admit(rows, prefill_budget, failed)
        rows.sort(key=lambda row: row.request.adapter_slot)
        return ScheduledBatch(rows, failed)

    def _admit(self, rows: list[ScheduledRow], prefill_budget: int, failed: list) -> None:
        """Admit waiting requests first-come first-served while budget, batch size and KV blocks allow.

        A request whose adapter is still loading is passed over (it doesn't hold up the others). When the
        oldest request waits for a GPU slot and every slot is pinned, later adapter requests are held
        back so that the pinned slots drain and it gets one: no request starves.
        """
        held_for_slot = False
        if self.adapters is not None:
            self.adapters.begin_admission()
        for request in list(self.waiting):
            if prefill_budget <= 0 or len(self.running) >= self.max_batch_size:
                break
            if request.adapter is not None:
                if held_for_slot:
                    continue
                readiness, slot, error = self.adapters.acquire(
                    request.adapter, first=not request.adapter_asked
                )
                request.adapter_asked = True
                if readiness is Readiness.FAILED:
                    self.waiting.remove(request)
                    failed.append((request, error))
                    continue
                if readiness is Readiness.NEEDS_SLOT:
                    held_for_slot = True
                    continue
                if readiness is not Readiness.READY:
                    continue
                request.adapter_slot = slot
            num_tokens = min(request.num_uncomputed_tokens, prefill_budget)
            if not self.allocator.can_allocate(request, request.num_computed_tokens + num_tokens):
                self._release_adapter(request)
                break
            self.waiting.remove(request)
            self.allocator.allocate(request, request.num_computed_tokens + num_tokens)
            if request.times.scheduled is None:  # queue time ends here, before its first step runs
                request.times.scheduled = time.monotonic()
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            rows.append(self._row(request, num_tokens))
            prefill_budget -= num_tokens
        if failed:
            self.adapters.forget_failures()

    def _release_adapter(self, request: Request) -> None:
        if request.adapter is not None and request.adapter_slot >= 0:
            self.adapters.release(request.adapter)
        request.adapter_slot = -1

    @staticmethod
    def _is_prefill(request: Request) -> bool:
        return request.num_computed_tokens == 0 or request.num_uncomputed_tokens > 1

    def _tokens_this_step(self, request: Request, prefill_budget: int) -> int:
        if self._is_prefill(request):
            return min(request.num_uncomputed_tokens, prefill_budget)
        return request.num_uncomputed_tokens

    def _row(self, request: Request, num_tokens: int) -> ScheduledRow:
        start = request.num_computed_tokens
        return ScheduledRow(request, start, num_tokens, start + num_tokens == len(request.token_ids))

    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self.allocator.free(request)
        self._release_adapter(request)
        request.num_computed_tokens = 0
        request.status = RequestStatus.WAITING
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)

    def _finish(self, request: Request, reason: FinishReason | None) -> None:
        self.allocator.free(request)
        self._release_adapter(request)
        request.status = RequestStatus.FINISHED
        request.finish_reason = reason

    def postprocess(self, batch: ScheduledBatch, step: StepOutput) -> list[RequestOutput]:
        """Advance every row by the tokens it computed; append sampled tokens; finish what is done."""
        outputs = []
        sampled = iter(zip(step.token_ids, step.logprobs, step.top, strict=True))
        now = time.monotonic()
        for row in batch.rows:
            request = row.request
            request.num_computed_tokens += row.num_tokens
            if row.samples:
                token_id, logprob, top = next(sampled)
                outputs.append(self._append_token(request, token_id, logprob, top, now))
        return outputs

    def _append_token(
        self, request: Request, token_id: int, logprob: float, top: list | None, now: float
    ) -> RequestOutput:
        request.token_ids.append(token_id)
        request.output_logprobs.append(logprob)
        detokenizer = request.detokenizer
        text = detokenizer.add(token_id)
        special = detokenizer.is_special(token_id)
        params = request.params
        at_length = request.num_output_tokens >= params.max_new_tokens
        reason = FinishReason.LENGTH if at_length and not params.stop_over_length else None
        if reason is None:
            if token_id in self.eos_token_ids and not params.ignore_eos_token:
                reason = FinishReason.EOS_TOKEN
            elif detokenizer.stop_matched(text):
                reason = FinishReason.STOP_SEQUENCE
            elif at_length:
                reason = FinishReason.LENGTH
        if request.times.first_token is None:
            request.times.first_token = now
        output = RequestOutput(
            request_id=request.request_id,
            token=TokenOutput(token_id, text, logprob, special, top),
            prompt_tokens=request.num_prompt_tokens,
            generated_tokens=request.num_output_tokens,
            seed=request.seed,
        )
        if reason is not None:
            output.token.text += detokenizer.flush()
            self.running.remove(request)
            self._finish(request, reason)
            output.finished = True
            output.finish_reason = reason
            output.generated_text = detokenizer.final_text(request.output_token_ids)
            output.prompt = request.prompt_logprobs or None
            request.times.finished = now
            output.times = request.times
        return output
