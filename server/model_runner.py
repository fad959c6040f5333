"""Runs one scheduled batch: builds the flattened device inputs, runs the model, samples.

Inputs of a step with B sequences and T tokens (prefill chunks and decodes mixed, ordered by adapter):
input_ids/positions/slot_mapping [T], block_tables [B, max_blocks] (only when a prefill chunk follows
cached context), and `logits_indices` [N], the last token of every sequence that samples this step.
Adapter segments come from the same row order.
On CUDA, decode rows attend through the paged Triton kernel, and a step of decodes only replays a
captured CUDA graph (`cuda_graphs`) when the engine made them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .adapters.lora_batch import LoraBatch, extend_segments
from .adapters.lora_stack import LoraStack
from .adapters.slots import AdapterSlots
from .batch import ScheduledBatch, StepOutput
from .cuda_graphs import DecodeGraphs, supports_paged_decode
from .models.attention import (
    AttentionMetadata,
    DecodeBucket,
    PagedDecode,
    PrefillGroup,
    bucket_by_length,
    group_by_length,
)
from .models.context import ForwardContext, forward_context
from .models.llama import CausalLM
from .request import PromptToken
from .sampler import SamplingBatch, sample


@dataclass
class StepInputs:
    input_ids: torch.Tensor
    attention: AttentionMetadata
    logits_indices: torch.Tensor
    seg_starts: list[int]
    seg_slots: list[int]


def _padded(blocks: list[int], width: int) -> list[int]:
    """A sequence's block ids cut or padded with 0 to `width`."""
    return blocks[:width] + [0] * (width - len(blocks))


class ModelRunner:
    def __init__(
        self,
        model: CausalLM,
        block_size: int,
        device: torch.device,
        slots: AdapterSlots,
        graphs: DecodeGraphs | None = None,
    ):
        self.model = model
        self.block_size = block_size
        self.device = device
        self.slots = slots
        self.lora_stack = LoraStack(slots) if slots.prepared is not None else None
        self.paged_decode = device.type == "cuda" and supports_paged_decode(model.shape.head_dim, block_size)
        # On CUDA one attention call per sequence per layer costs more host time than GPU time.
        self.batch_prefill = device.type == "cuda"
        self.graphs = graphs
        # Called once a step's forward is queued (on CUDA the host returns before the GPU is done), so
        # host work done there overlaps the step's GPU time.
        self.after_launch: Callable[[], None] | None = None

    def _tensor(self, values: list[int]) -> torch.Tensor:
        host = torch.tensor(values, dtype=torch.int64)
        if self.device.type == "cuda":
            return host.pin_memory().to(self.device, non_blocking=True)
        return host

    def prepare(self, batch: ScheduledBatch) -> StepInputs:
        block_size = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slot_mapping: list[int] = []
        query_starts, query_lens, context_lens = [], [], []
        logits_indices: list[int] = []
        decode_rows, decode_tokens, prefill_rows = [], [], []
        seg_starts, seg_slots = [0], []
        block_ids = [row.request.block_ids for row in batch.rows]
        for index, row in enumerate(batch.rows):
            request = row.request
            start, end = row.start, row.start + row.num_tokens
            query_starts.append(len(input_ids))
            query_lens.append(row.num_tokens)
            context_lens.append(end)
            blocks = block_ids[index]
            input_ids.extend(request.token_ids[start:end])
            positions.extend(range(start, end))
            slot_mapping.extend(
                blocks[p // block_size] * block_size + p % block_size for p in range(start, end)
            )
            if row.num_tokens == 1:
                decode_rows.append(index)
                decode_tokens.append(len(input_ids) - 1)
            else:
                prefill_rows.append(index)
            if row.samples:
                logits_indices.append(len(input_ids) - 1)
            extend_segments(seg_starts, seg_slots, request.adapter_slot, len(input_ids))
        buckets, paged = [], None
        if self.paged_decode and decode_rows:
            width = max(len(block_ids[r]) for r in decode_rows)
            paged = PagedDecode(
                token_index=self._tensor(decode_tokens),
                block_tables=self._tensor([_padded(block_ids[r], width) for r in decode_rows]),
                context_lens=self._tensor([context_lens[r] for r in decode_rows]),
            )
            decode_rows = []
        for group in bucket_by_length([context_lens[i] for i in decode_rows]):
            rows = [decode_rows[g] for g in group]
            lens = [context_lens[r] for r in rows]
            num_blocks = -(-max(lens) // block_size)
            buckets.append(
                DecodeBucket(
                    token_index=self._tensor([decode_tokens[g] for g in group]),
                    context_lens=self._tensor(lens),
                    blocks=self._tensor([_padded(block_ids[r], num_blocks) for r in rows]),
                )
            )
        groups = []
        if self.batch_prefill:
            prefill_rows, groups = self._prefill_groups(prefill_rows, batch, query_starts, query_lens)
        # Only a prefill chunk after cached context reads the block table (decodes have their own).
        block_tables = None
        if any(context_lens[r] > query_lens[r] for r in prefill_rows):
            width = max(map(len, block_ids))
            block_tables = self._tensor([_padded(blocks, width) for blocks in block_ids])
        attention = AttentionMetadata(
            slot_mapping=self._tensor(slot_mapping),
            positions=self._tensor(positions),
            query_lens=query_lens,
            context_lens=context_lens,
            query_starts=query_starts,
            block_tables=block_tables,
            decode_buckets=buckets,
            prefill_rows=prefill_rows,
            paged_decode=paged,
            prefill_groups=groups,
        )
        return StepInputs(
            self._tensor(input_ids), attention, self._tensor(logits_indices), seg_starts, seg_slots
        )

    def _prefill_groups(
        self, prefill_rows: list[int], batch: ScheduledBatch, query_starts: list[int], query_lens: list[int]
    ) -> tuple[list[int], list[PrefillGroup]]:
        """Batch the whole-prompt chunks (those that start at position 0) in groups of similar length;
        returns the rows left to attend one at a time, and the groups."""
        whole = [r for r in prefill_rows if batch.rows[r].start == 0]
        groups: list[PrefillGroup] = []
        batched: set[int] = set()
        for members in group_by_length([query_lens[r] for r in whole]):
            if len(members) < 2:
                continue
            rows = [whole[m] for m in members]
            length = max(query_lens[r] for r in rows)
            gather, valid, tokens = [], [], []
            for b, row in enumerate(rows):
                start, count = query_starts[row], query_lens[row]
                gather.extend(range(start, start + count))
                gather.extend([start] * (length - count))
                valid.extend(range(b * length, b * length + count))
                tokens.extend(range(start, start + count))
            groups.append(
                PrefillGroup(
                    self._tensor(gather), self._tensor(valid), self._tensor(tokens), len(rows), length, rows
                )
            )
            batched.update(rows)
        return [r for r in prefill_rows if r not in batched], groups

    def lora_context(self, inputs: StepInputs) -> LoraBatch | None:
        """The adapter segments of this step for the LoRA layers; None when no row uses an adapter."""
        if all(slot < 0 for slot in inputs.seg_slots):
            return None
        return LoraBatch(self.slots, inputs.seg_starts, inputs.seg_slots, self.device, self.lora_stack)

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> torch.Tensor:
        """Runs the model over the batch -> logits [N, V] float32 of the rows that sample.

        Prompt log-probabilities, for requests that asked, are computed here too (they need the hidden
        states of every prompt position, not only the last).
        """
        if self.graphs is not None and self.graphs.accepts(batch):
            return self.graphs.run(batch)
        inputs = self.prepare(batch)
        context = ForwardContext(attention=inputs.attention, lora=self.lora_context(inputs))
        with forward_context(context):
            hidden = self.model(inputs.input_ids)
        if any(row.request.params.prompt_logprobs for row in batch.rows):
            self._prompt_logprobs(batch, inputs, hidden)
        return self.model.compute_logits(hidden[inputs.logits_indices])

    def _prompt_logprobs(self, batch: ScheduledBatch, inputs: StepInputs, hidden: torch.Tensor) -> None:
        """Append log p(prompt[p + 1] | prompt[:p + 1]) for the prompt positions p this step computed."""
        for row, first in zip(batch.rows, inputs.attention.query_starts, strict=True):
            request = row.request
            if not request.params.prompt_logprobs:
                continue
            prompt = request.prompt_token_ids
            if not request.prompt_logprobs:
                request.prompt_logprobs.append(PromptToken(prompt[0], None))
            begin = max(row.start, len(request.prompt_logprobs) - 1)
            end = min(row.start + row.num_tokens, len(prompt) - 1)
            if begin >= end:
                continue
            positions = torch.arange(first + begin - row.start, first + end - row.start, device=hidden.device)
            logprobs = self.model.compute_logits(hidden[positions]).log_softmax(dim=1)
            targets = torch.tensor(prompt[begin + 1 : end + 1], device=hidden.device)
            chosen = logprobs.gather(1, targets.unsqueeze(1)).squeeze(1).tolist()
            top = None
            if request.params.top_n_tokens:
                values, ids = logprobs.topk(request.params.top_n_tokens, dim=1)
                top = [
                    list(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)
                ]
            for k, token in enumerate(prompt[begin + 1 : end + 1]):
                request.prompt_logprobs.append(PromptToken(token, chosen[k], top[k] if top else None))

    def recover(self) -> None:
        """After a step that raised: drop what it may have left half updated (the CPU LoRA stack's
        placements), so the next step starts clean."""
        if self.lora_stack is not None:
            self.lora_stack.forget()

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> StepOutput:
        """One step: forward and sample -> the token, logprob and alternatives of each sampling row."""
        logits = self.execute(batch)
        if self.after_launch is not None:
            self.after_launch()
        requests = [row.request for row in batch.sampling_rows]
        if not requests:
            return StepOutput([], [], [])
        sampling = SamplingBatch.build(requests, logits.shape[1], self.device)
        result = sample(logits, sampling)
        top: list[list[tuple[int, float]] | None] = [None] * len(requests)
        if result.top_ids is not None:
            ids, values = result.top_ids.tolist(), result.top_logprobs.tolist()
            for i, request in enumerate(requests):
                n = request.params.top_n_tokens
                if n:
                    top[i] = list(zip(ids[i][:n], values[i][:n], strict=True))
        return StepOutput(result.tokens.tolist(), result.logprobs.tolist(), top)
