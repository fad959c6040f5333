"""Runs one scheduled batch: builds the flattened device inputs, runs the model, samples.

Inputs of a step with B sequences and T tokens (prefill chunks and decodes mixed, ordered by adapter):
input_ids/positions/slot_mapping [T], block_tables [B, max_blocks], and `logits_indices` [N], the last
token of every sequence that samples this step. Adapter segments come from the same row order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .adapters.lora_batch import LoraBatch
from .adapters.slots import AdapterSlots
from .models.attention import AttentionMetadata
from .models.context import ForwardContext, forward_context
from .models.llama import CausalLM
from .sampler import SamplingBatch, sample
from .scheduler import ScheduledBatch


@dataclass
class StepInputs:
    input_ids: torch.Tensor
    attention: AttentionMetadata
    logits_indices: torch.Tensor
    seg_starts: list[int]
    seg_slots: list[int]


class ModelRunner:
    def __init__(self, model: CausalLM, block_size: int, device: torch.device, slots: AdapterSlots):
        self.model = model
        self.block_size = block_size
        self.device = device
        self.slots = slots

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
        max_blocks = max(len(row.request.block_ids) for row in batch.rows)
        block_tables = []
        for index, row in enumerate(batch.rows):
            request = row.request
            start, end = row.start, row.start + row.num_tokens
            query_starts.append(len(input_ids))
            query_lens.append(row.num_tokens)
            context_lens.append(end)
            blocks = request.block_ids
            input_ids.extend(request.token_ids[start:end])
            positions.extend(range(start, end))
            slot_mapping.extend(
                blocks[p // block_size] * block_size + p % block_size for p in range(start, end)
            )
            block_tables.append(blocks + [0] * (max_blocks - len(blocks)))
            if row.num_tokens == 1:
                decode_rows.append(index)
                decode_tokens.append(len(input_ids) - 1)
            else:
                prefill_rows.append(index)
            if row.samples:
                logits_indices.append(len(input_ids) - 1)
            slot = request.adapter_slot
            if seg_slots and seg_slots[-1] == slot:
                seg_starts[-1] = len(input_ids)
            else:
                seg_slots.append(slot)
                seg_starts.append(len(input_ids))
        decode_context = [context_lens[i] for i in decode_rows]
        attention = AttentionMetadata(
            slot_mapping=self._tensor(slot_mapping),
            positions=self._tensor(positions),
            query_lens=query_lens,
            context_lens=context_lens,
            query_starts=query_starts,
            block_tables=self._tensor(block_tables),
            decode_rows=self._tensor(decode_rows),
            decode_token_index=self._tensor(decode_tokens),
            decode_context_lens=self._tensor(decode_context),
            decode_max_context=max(decode_context, default=0),
            prefill_rows=prefill_rows,
        )
        return StepInputs(
            self._tensor(input_ids), attention, self._tensor(logits_indices), seg_starts, seg_slots
        )

    def lora_context(self, inputs: StepInputs) -> LoraBatch | None:
        """The adapter segments of this step for the LoRA layers; None when no row uses an adapter."""
        if all(slot < 0 for slot in inputs.seg_slots):
            return None
        return LoraBatch(self.slots, inputs.seg_starts, inputs.seg_slots, self.device)

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> torch.Tensor:
        """Runs the model over the batch -> logits [N, V] float32 of the rows that sample."""
        inputs = self.prepare(batch)
        context = ForwardContext(attention=inputs.attention, lora=self.lora_context(inputs))
        with forward_context(context):
            hidden = self.model(inputs.input_ids)
        return self.model.compute_logits(hidden[inputs.logits_indices])

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> tuple[list[int], list[float]]:
        """One step: forward and sample -> (token id, logprob) per sampling row, in row order."""
        logits = self.execute(batch)
        requests = [row.request for row in batch.sampling_rows]
        if not requests:
            return [], []
        sampling = SamplingBatch.build(requests, logits.shape[1], self.device)
        tokens, logprobs = sample(logits, sampling)
        return tokens.tolist(), logprobs.tolist()
