"""CUDA graphs for decode-only steps: one replay instead of thousands of kernel launches.

A decode step of a large model on a fast GPU is bound by the host: an eager forward of Llama-3-8B
launches about 90 kernels per layer, and the GPU idles between them. At start-up the engine captures
the model forward (embeddings to final norm) once per padded batch size in `capture_sizes`, with and
without LoRA, reading every input from fixed device buffers. A step whose rows are all single-token
decodes (and that asks for no prompt log-probabilities) writes its inputs into those buffers, replays
the graph of the smallest size that holds it, and projects the real rows' hidden states to logits
eagerly. Every other step (prefill chunks, mixed steps) runs eagerly.

Fixed buffers, for B rows of which the first n are real: input_ids, positions, slot_mapping [B],
context_lens [B], block_tables [B, max_blocks] (max_blocks covers max_total_tokens, which the engine
holds every request to), seg_starts [B+1], seg_slots [B]. Padding rows read
token 0 at position 0, write their key and value to a scratch cache block no request owns, attend to
that one slot, and belong to no adapter segment, so they disturb nothing. What a graph reads from the
adapter slots (weights, ranks, scalings) lives in buffers allocated once, so adapters loaded after the
capture are seen by the next replay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .adapters.lora_batch import FixedLoraBatch, extend_segments
from .adapters.slots import AdapterSlots
from .batch import ScheduledBatch
from .models.attention import AttentionMetadata, PagedDecode
from .models.context import ForwardContext, forward_context
from .models.llama import CausalLM

if TYPE_CHECKING:
    from .engine import Engine


def supports_paged_decode(head_dim: int, block_size: int) -> bool:
    """Whether the paged Triton decode kernel (and so a captured decode step) handles these sizes."""
    try:
        from loraplex.kernels.paged_attention_triton import supports
    except ImportError:  # no Triton
        return False
    return supports(head_dim, block_size)


def capture_sizes(max_batch_size: int) -> tuple[int, ...]:
    """1, 2, 4, 8, then steps of 8 to 64, of 16 to 128 and of 32 beyond, capped at max_batch_size."""
    sizes = [1, 2, 4, *range(8, 65, 8), *range(80, 129, 16), *range(160, max_batch_size + 1, 32)]
    kept = [s for s in sizes if s < max_batch_size]
    return (*kept, max_batch_size)


class DecodeGraphs:
    """The captured graphs, one per (padded batch size, with LoRA or not), and the fixed buffers they
    read; `accepts` tells whether a step can replay one, `run` replays it (module docstring: how)."""

    def __init__(
        self,
        model: CausalLM,
        slots: AdapterSlots,
        device: torch.device,
        block_size: int,
        max_batch_size: int,
        max_blocks_per_sequence: int,
        scratch_block: int,
        use_graphs: bool = True,
    ):
        """`use_graphs=False` runs the same fixed-buffer forward eagerly instead of replaying (tests
        check the buffers and padding this way where there is no GPU)."""
        self.use_graphs = use_graphs
        self.model = model
        self.slots = slots
        self.device = device
        self.block_size = block_size
        self.sizes = capture_sizes(max_batch_size)
        self.scratch_block = scratch_block
        size, width = self.sizes[-1], max_blocks_per_sequence
        # Host staging (pinned) and device buffers, one int64 row of each field per batch row.
        pin = device.type == "cuda"
        self.host_rows = torch.zeros(4, size, dtype=torch.int64, pin_memory=pin)
        self.host_tables = torch.zeros(size, width, dtype=torch.int32, pin_memory=pin)
        self.host_segments = torch.zeros(2 * size + 1, dtype=torch.int32, pin_memory=pin)
        # numpy views of the same memory: per-row writes cost far less than tensor indexing
        self.host_rows_np = self.host_rows.numpy()
        self.host_tables_np = self.host_tables.numpy()
        self.host_segments_np = self.host_segments.numpy()
        self.rows = torch.zeros(4, size, dtype=torch.int64, device=device)
        self.tables = torch.zeros(size, width, dtype=torch.int32, device=device)
        self.segments = torch.zeros(2 * size + 1, dtype=torch.int32, device=device)
        self._write_padding(0, size)
        self.rows.copy_(self.host_rows)
        self.tables.copy_(self.host_tables)
        self.segments.copy_(self.host_segments)
        self.graphs: dict[tuple[int, bool], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.replays = 0  # decode-only steps served here (run eagerly when use_graphs is False)

    @classmethod
    def for_engine(cls, engine: Engine, use_graphs: bool = True) -> DecodeGraphs:
        """Graphs over an engine's model, adapter slots and KV cache (its scratch block for padding)."""
        config = engine.config
        return cls(
            engine.model,
            engine.slots,
            engine.device,
            config.block_size,
            config.max_batch_size,
            -(-engine.limits.max_total_tokens // config.block_size),
            scratch_block=engine.scratch_block,
            use_graphs=use_graphs,
        )

    # ---- capture ---------------------------------------------------------------------------------
    def _context(self, size: int, lora: bool) -> ForwardContext:
        input_ids, positions, slot_mapping, context_lens = self.rows[:, :size]
        tables = self.tables[:size]
        metadata = AttentionMetadata(
            slot_mapping=slot_mapping,
            positions=positions,
            query_lens=[1] * size,
            context_lens=[1] * size,
            query_starts=list(range(size)),
            block_tables=tables,
            decode_buckets=[],
            prefill_rows=[],
            paged_decode=PagedDecode(None, tables, context_lens),
        )
        seg_starts = self.segments[: size + 1]
        seg_slots = self.segments[size + 1 : 2 * size + 1]
        batch = FixedLoraBatch(self.slots, seg_starts, seg_slots) if lora else None
        return ForwardContext(attention=metadata, lora=batch)

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every size, largest first (later graphs reuse the first one's memory pool)."""
        if not self.use_graphs:
            return
        pool = None
        main = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        for size in reversed(self.sizes):
            for lora in (True, False):
                self._set_segments_for_capture(size)
                context = self._context(size, lora)
                input_ids = self.rows[0, :size]
                # A first run outside the capture compiles the kernels and sets up library handles.
                side.wait_stream(main)
                with torch.cuda.stream(side), forward_context(context):
                    self.model(input_ids)
                main.wait_stream(side)
                main.synchronize()
                graph = torch.cuda.CUDAGraph()
                # thread_local: adapter loader threads may pin host memory meanwhile
                with (
                    forward_context(context),
                    torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"),
                ):
                    hidden = self.model(input_ids)
                pool = graph.pool()
                self.graphs[(size, lora)] = (graph, hidden)
        main.synchronize()

    def _set_segments_for_capture(self, size: int) -> None:
        """No adapter rows: the captured launches do not depend on the table's contents."""
        self.host_segments[: size + 1] = 0
        self.host_segments[size + 1 : 2 * size + 1] = -1
        self.segments[: 2 * size + 1].copy_(self.host_segments[: 2 * size + 1])

    # ---- replay ----------------------------------------------------------------------------------
    def accepts(self, batch: ScheduledBatch) -> bool:
        rows = batch.rows
        return (
            0 < len(rows) <= self.sizes[-1]
            and all(row.num_tokens == 1 for row in rows)
            and not any(row.request.params.prompt_logprobs for row in rows)
        )

    def _write_padding(self, start: int, end: int) -> None:
        fields = self.host_rows_np
        fields[0, start:end] = 0
        fields[1, start:end] = 0
        fields[2, start:end] = self.scratch_block * self.block_size
        fields[3, start:end] = 1
        self.host_tables_np[start:end, 0] = self.scratch_block

    def run(self, batch: ScheduledBatch) -> torch.Tensor:
        """Replay the graph for this decode-only batch -> logits [N, V] float32 of its sampling rows."""
        rows = batch.rows
        count = len(rows)
        size = next(s for s in self.sizes if s >= count)
        block_size = self.block_size
        fields, tables = self.host_rows_np, self.host_tables_np
        seg_starts, seg_slots = [0], []
        sampling = []
        for index, row in enumerate(rows):
            request = row.request
            position = row.start
            blocks = request.block_ids
            fields[0, index] = request.token_ids[position]
            fields[1, index] = position
            fields[2, index] = blocks[position // block_size] * block_size + position % block_size
            fields[3, index] = position + 1
            tables[index, : len(blocks)] = blocks
            if row.samples:
                sampling.append(index)
            extend_segments(seg_starts, seg_slots, request.adapter_slot, index + 1)
        self._write_padding(count, size)
        segments = self.host_segments_np
        segments[: len(seg_starts)] = seg_starts
        segments[len(seg_starts) : size + 1] = count
        segments[size + 1 : size + 1 + len(seg_slots)] = seg_slots
        segments[size + 1 + len(seg_slots) : 2 * size + 1] = -1
        self.rows.copy_(self.host_rows, non_blocking=True)
        self.tables[:size].copy_(self.host_tables[:size], non_blocking=True)
        self.segments[: 2 * size + 1].copy_(self.host_segments[: 2 * size + 1], non_blocking=True)
        lora = any(slot >= 0 for slot in seg_slots)
        if self.use_graphs:
            graph, hidden = self.graphs[(size, lora)]
            graph.replay()
        else:
            with forward_context(self._context(size, lora)):
                hidden = self.model(self.rows[0, :size])
        self.replays += 1
        if len(sampling) < count:
            hidden = hidden[torch.tensor(sampling, device=self.device)]
        else:
            hidden = hidden[:count]
        return self.model.compute_logits(hidden)
