"""The engine: owns the model, the KV cache and the scheduler, and steps them on its own thread.

    step() = schedule -> run the model -> postprocess

Other threads talk to it only through `submit` and `abort` (queued and applied between steps); results
go back through each request's sink, called on the engine thread.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import random
import threading
import time
import traceback
import uuid
from dataclasses import dataclass

import torch

from loraplex.kernels import resolve_backend

from .adapters.manager import AdapterManager, make_reader
from .adapters.slots import AdapterSlots, slot_bytes
from .adapters.sources import AdapterLocation, AdapterSources
from .batch import ScheduledBatch, ScheduledRow, StepOutput
from .config import ConfigError, EngineConfig, Limits, resolve_limits
from .cuda_graphs import DecodeGraphs, supports_paged_decode
from .kv_cache import BlockAllocator, KVCache
from .model_runner import ModelRunner
from .models.attention import TorchAttention
from .models.loader import build_model, check_model_folder, load_config, resolve_model_path
from .placement import choose_device, choose_dtype, kv_cache_blocks
from .request import OutputSink, Request, RequestOutput, RequestStatus, SamplingParams
from .scheduler import Scheduler
from .tokenizer import IncrementalDetokenizer, load_tokenizer

logger = logging.getLogger(__name__)

_MAX_CONSECUTIVE_FAILURES = 3


@dataclass(frozen=True)
class EngineInfo:
    """What the engine is serving, for the startup line and /info."""

    model_id: str
    model_path: str
    architecture: str
    dtype: str
    device: str
    block_size: int
    num_kv_blocks: int
    kv_cache_bytes: int
    limits: Limits
    max_batch_prefill_tokens: int
    max_batch_size: int
    max_stop_sequences: int
    vocab_size: int
    adapter_slots: int
    max_lora_rank: int
    cuda_graphs: bool = False

    @property
    def kv_cache_tokens(self) -> int:
        return self.num_kv_blocks * self.block_size

    def summary(self) -> str:
        return (
            f"model={self.model_id} architecture={self.architecture} dtype={self.dtype} device={self.device} "
            f"kv_blocks={self.num_kv_blocks} kv_tokens={self.kv_cache_tokens} "
            f"kv_memory={self.kv_cache_bytes / 2**20:.1f}MiB block_size={self.block_size} "
            f"max_input_length={self.limits.max_input_length} max_total_tokens={self.limits.max_total_tokens} "
            f"max_batch_prefill_tokens={self.max_batch_prefill_tokens} max_batch_size={self.max_batch_size} "
            f"adapter_slots={self.adapter_slots} max_lora_rank={self.max_lora_rank} "
            f"cuda_graphs={self.cuda_graphs}"
        )


class Engine:
    def __init__(self, config: EngineConfig):
        self.config = config
        path = resolve_model_path(config.model_id, config.revision)
        check_model_folder(path)
        model_config = load_config(path)
        self.device = choose_device(config.device)
        self.dtype = choose_dtype(config.dtype, model_config, self.device)
        self.tokenizer = load_tokenizer(path)
        self.model = build_model(path, model_config, TorchAttention(), self.dtype, self.device)
        shape = self.model.shape
        self.limits = resolve_limits(config, shape.max_positions)
        self.slots = _adapter_slots(config, shape, self.dtype, self.device)
        num_blocks = kv_cache_blocks(config, shape, self.dtype, self.device, self.limits.max_total_tokens)
        use_graphs = (
            config.cuda_graphs
            and self.device.type == "cuda"
            and supports_paged_decode(shape.head_dim, config.block_size)
        )
        # One block more than the allocator hands out: scratch for the padding rows of a decode graph.
        self.scratch_block = num_blocks
        self.kv_cache = KVCache(
            shape.num_layers,
            num_blocks + 1,
            config.block_size,
            shape.num_kv_heads,
            shape.head_dim,
            self.dtype,
            self.device,
        )
        self.model.attach_kv_cache(self.kv_cache.layers())
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self.adapters = self._adapter_manager(shape, config)
        self.allocator = BlockAllocator(num_blocks, config.block_size)
        self.scheduler = Scheduler(
            self.allocator,
            config.max_batch_prefill_tokens,
            config.max_batch_size,
            eos_token_ids=_eos_token_ids(model_config, self.tokenizer),
            adapters=self.adapters,
        )
        graphs = None
        if use_graphs:
            graphs = DecodeGraphs.for_engine(self)
            started = time.perf_counter()
            graphs.capture()
            logger.info(
                "captured %d CUDA graphs of decode steps (batch sizes up to %d) in %.1f s",
                len(graphs.graphs),
                graphs.sizes[-1],
                time.perf_counter() - started,
            )
        if self.device.type == "cuda" and resolve_backend(self.device) == "triton":
            started = time.perf_counter()
            count = _warm_up_lora_kernels(
                self.slots, config.max_batch_prefill_tokens + config.max_batch_size, config.max_batch_size
            )
            logger.info("compiled %d LoRA kernel variants in %.1f s", count, time.perf_counter() - started)
        self.runner = ModelRunner(self.model, config.block_size, self.device, self.slots, graphs)
        self.info = EngineInfo(
            model_id=config.served_model_name or config.model_id,
            model_path=str(path),
            architecture=shape.architecture,
            dtype=str(self.dtype).removeprefix("torch."),
            device=str(self.device),
            block_size=config.block_size,
            num_kv_blocks=num_blocks,
            kv_cache_bytes=self.kv_cache.nbytes,
            limits=self.limits,
            max_batch_prefill_tokens=config.max_batch_prefill_tokens,
            max_batch_size=config.max_batch_size,
            max_stop_sequences=config.max_stop_sequences,
            vocab_size=shape.vocab_size,
            adapter_slots=self.slots.num_slots,
            max_lora_rank=config.max_lora_rank,
            cuda_graphs=use_graphs,
        )
        self._requests: dict[str, Request] = {}
        # On CUDA a step's outputs reach their sinks once the next step's forward is queued, while the
        # GPU runs it: the HTTP thread then streams them while the engine thread waits on the GPU,
        # instead of taking the GIL from it while it schedules and prepares that step.
        self.defer_delivery = self.device.type == "cuda"
        self._pending: list[RequestOutput] = []
        self.runner.after_launch = self._flush
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._consecutive_failures = 0
        self.fatal_error: str | None = None
        self.num_steps = 0
        self.num_aborted = 0
        self.last_step_ran = False
        self.num_batched_rows = 0
        self.last_batch_size = 0

    # ---- requests -------------------------------------------------------------------------------
    def make_request(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        sink: OutputSink | None = None,
        request_id: str | None = None,
        adapter: AdapterLocation | None = None,
    ) -> Request:
        if params.top_k > self.info.vocab_size:  # keeps every token; past int64 it broke the step's tensor
            params = dataclasses.replace(params, top_k=self.info.vocab_size)
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        request = Request(
            request_id=request_id or uuid.uuid4().hex,
            prompt_token_ids=list(prompt_token_ids),
            params=params,
            seed=seed,
            adapter=adapter,
            sink=sink,
        )
        request.detokenizer = IncrementalDetokenizer(self.tokenizer, request.prompt_token_ids, params.stop)
        return request

    def submit(self, request: Request) -> None:
        """Queue a request (any thread); it joins the batch at the next step."""
        self._commands.put(("add", request))

    def abort(self, request_id: str) -> None:
        """Drop a request (any thread) and free its KV blocks at the next step boundary."""
        self._commands.put(("abort", request_id))

    def _apply_commands(self, block: bool) -> None:
        try:
            command = self._commands.get(timeout=0.05) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            kind, payload = command
            if kind == "add":
                self._add(payload)
            elif kind == "call":
                payload()
            elif kind == "abort" and self._requests.pop(payload, None) is not None:
                self.scheduler.abort(payload)
                self.num_aborted += 1
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _add(self, request: Request) -> None:
        problem = self.check_lengths(request.num_prompt_tokens, request.params.max_new_tokens)
        self._requests[request.request_id] = request
        if problem is None:
            self.scheduler.add(request)
            return
        request.status = RequestStatus.FINISHED
        self._deliver([_error_output(request, problem, "validation")])

    def check_lengths(self, prompt_tokens: int, max_new_tokens: int) -> str | None:
        """Why a request of this size can never be served, or None if it can."""
        limits = self.limits
        if prompt_tokens == 0:
            return "`inputs` cannot be empty"
        if prompt_tokens > limits.max_input_length:
            return f"`inputs` must have less than {limits.max_input_length} tokens. Given: {prompt_tokens}"
        if prompt_tokens + max_new_tokens > limits.max_total_tokens:
            return (
                f"`inputs` tokens + `max_new_tokens` must be <= {limits.max_total_tokens}. "
                f"Given: {prompt_tokens} `inputs` tokens and {max_new_tokens} `max_new_tokens`"
            )
        return None

    # ---- stepping -------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Apply queued commands, run one batch, deliver its outputs. Engine thread only."""
        self._apply_commands(block=False)
        batch = self.scheduler.schedule()
        if batch.failed:
            self._deliver([_error_output(r, str(e), e.error_type) for r, e in batch.failed])
        self.last_step_ran = bool(batch.rows)
        if not batch.rows:
            self.last_batch_size = 0
            self._flush()
            return []
        try:
            step = self.runner.run(batch)
        except Exception as error:  # noqa: BLE001 - a failed step fails its requests, not the engine
            outputs = self._isolate_failure(batch, error)
        else:
            self._consecutive_failures = 0
            outputs = self._finish_step(batch, step)
        if not self.scheduler.has_work:
            self._flush()
        return outputs

    def _finish_step(self, batch: ScheduledBatch, step: StepOutput) -> list[RequestOutput]:
        self.num_steps += 1
        self.num_batched_rows += len(batch.rows)
        self.last_batch_size = len(batch.rows)
        outputs = self.scheduler.postprocess(batch, step)
        if self.defer_delivery:
            self._pending += outputs
        else:
            self._deliver(outputs)
        return outputs

    def _flush(self) -> None:
        """Hand the outputs held back from the last step to their sinks."""
        if self._pending:
            pending, self._pending = self._pending, []
            self._hand_over(pending)

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        """Hand outputs to their sinks now, after any held back (a request's outputs stay in order)."""
        self._flush()
        self._hand_over(outputs)

    def _hand_over(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            request = self._requests.get(output.request_id)
            if request is None:
                continue
            if output.finished:
                del self._requests[output.request_id]
            if request.sink is not None:
                try:
                    request.sink(output)
                except Exception:  # noqa: BLE001 - one sink's failure is not the step's nor the others'
                    logger.exception("handing output of request %s over failed", output.request_id)

    def _isolate_failure(self, batch: ScheduledBatch, error: Exception) -> list[RequestOutput]:
        """A step of several requests failed: run each request's rows alone, so that one request that
        breaks the model fails by itself and the others go on (a retried row computes the same KV slots
        and tokens it would have).

        A step counts towards marking the engine fatal when no request is to blame: every one fails
        alone (or the step held one), or every one succeeds alone (a fault of whole batches, such as
        running out of memory, would otherwise cost every later step a run per request, for good).
        """
        self.runner.recover()
        by_request: dict[str, list[ScheduledRow]] = {}
        for row in batch.rows:
            by_request.setdefault(row.request.request_id, []).append(row)
        if len(by_request) == 1:
            return self._fail_batch(batch, error)
        logger.warning(
            "engine step of %d requests failed (%s: %s); running each alone",
            len(by_request), type(error).__name__, error,
        )  # fmt: skip
        outputs: list[RequestOutput] = []
        failures: list[tuple[Request, Exception]] = []
        for rows in by_request.values():
            alone = ScheduledBatch(rows=rows)
            try:
                step = self.runner.run(alone)
            except Exception as own_error:  # noqa: BLE001 - this request's own failure
                self.runner.recover()
                failures.append((rows[0].request, own_error))
                continue
            outputs += self._finish_step(alone, step)
        if len(failures) == len(by_request):
            return self._fail_batch(batch, error)
        if not failures:
            return outputs + self._count_blameless(error)
        self._consecutive_failures = 0
        for request, own_error in failures:
            logger.error("request %s failed alone: %s", request.request_id, _traceback_text(own_error))
            outputs += self._fail_requests([request], own_error)
        return outputs

    def _count_failure(self, error: Exception) -> bool:
        """One more step in a row with no request to blame; True once there are
        _MAX_CONSECUTIVE_FAILURES of them, when the engine stops serving."""
        self._consecutive_failures += 1
        if self._consecutive_failures >= _MAX_CONSECUTIVE_FAILURES:
            self.fatal_error = f"{type(error).__name__}: {error}"
        return self.fatal_error is not None

    def _count_blameless(self, error: Exception) -> list[RequestOutput]:
        """A step failed whole and passed request by request: it counts as a failed step."""
        if not self._count_failure(error):
            return []
        logger.error("engine steps keep failing whole (%s: %s); stopping", type(error).__name__, error)
        return self._fail_requests(list(self._requests.values()), error)

    def _fail_batch(self, batch: ScheduledBatch, error: Exception) -> list[RequestOutput]:
        """Fail the batch's requests; when the engine stops serving (see _count_failure), every request."""
        logger.error("engine step failed", exc_info=error)
        if self._count_failure(error):
            return self._fail_requests(list(self._requests.values()), error)
        return self._fail_requests([row.request for row in batch.rows], error)

    def _fail_requests(self, requests: list[Request], error: Exception) -> list[RequestOutput]:
        outputs = []
        for request in requests:
            self.scheduler.abort(request.request_id)
            message = f"generation failed: {type(error).__name__}: {error}"
            outputs.append(_error_output(request, message, "generation"))
        self._deliver(outputs)
        return outputs

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    # ---- thread ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="loraplex-engine", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        idle = True
        while not self._stopping.is_set():
            # Block for commands when idle, or when every waiting request waits on an adapter load:
            # a finished load posts a command that wakes us.
            self._apply_commands(block=idle)
            if self.scheduler.has_work and self.fatal_error is None:
                self.step()
                idle = not self.last_step_ran
            else:
                # An abort can take the last running request between two steps: what the last step
                # held back goes out before the loop waits.
                self._flush()
                idle = True
        self._flush()

    def call_soon(self, function) -> None:
        """Run `function()` on the engine thread between steps (any thread may ask)."""
        self._commands.put(("call", function))

    def _wake(self) -> None:
        self._commands.put(("call", lambda: None))

    def _adapter_manager(self, shape, config: EngineConfig) -> AdapterManager:
        read = make_reader(
            shape.num_layers,
            shape.lora_out_slices(),
            shape.lora_in_features(),
            self.dtype,
            config.max_lora_rank,
            # the names the base model is known by: an adapter trained on another is warned about
            tuple(name for name in (config.model_id, config.served_model_name) if name),
            pin=self.device.type == "cuda",
        )
        manager = AdapterManager(
            AdapterSources(config.adapter_dirs), self.slots, read, config.adapter_cpu_cache, self._wake
        )
        for adapter_id in config.preload_adapters:
            location = manager.locate(adapter_id, None)
            manager.wait_loaded(location)
            manager.activate_now(location)
        return manager

    def shutdown(self) -> None:
        self.adapters.shutdown()
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # ---- convenience for tests, benchmarks and scripts ----------------------------------------------
    def generate(self, requests: list[Request]) -> list[Request]:
        """Run the given requests to completion on the calling thread (the engine thread must not run)."""
        for request in requests:
            self.submit(request)
        self._apply_commands(block=False)
        while self.scheduler.has_work:
            self.step()
            if not self.last_step_ran:
                self._apply_commands(block=True)
        return requests


def _warm_up_lora_kernels(slots: AdapterSlots, max_tokens: int, max_segments: int) -> int:
    """Compile, before serving, the LoRA kernel variants a step may launch (`kernels.lora_warmup`):
    the first prefill with a new segment count would otherwise stall every running request."""
    from loraplex.kernels.lora_warmup import warm_up

    launches = 0
    for group, offsets in slots.slice_offsets.items():
        key = (0, group)  # every layer's buffers of a group have the same shapes and layout
        launches += warm_up(
            slots.a[key],
            slots.b[key],
            slots.ranks[key],
            slots.scaling[key],
            offsets,
            max_tokens,
            max_segments,
        )
    return launches


def _adapter_slots(config: EngineConfig, shape, dtype: torch.dtype, device: torch.device) -> AdapterSlots:
    """As many slots as `max_active_adapters`, fewer if `adapter_memory_gib` can't hold them."""
    out_slices, in_features = shape.lora_out_slices(), shape.lora_in_features()
    count = config.max_active_adapters
    if config.adapter_memory_gib is not None:
        per_slot = slot_bytes(shape.num_layers, out_slices, in_features, config.max_lora_rank, dtype)
        count = min(count, int(config.adapter_memory_gib * 2**30 // per_slot))
        if count < 1:
            raise ConfigError(
                f"--adapter-memory-gib {config.adapter_memory_gib} holds no slot of {per_slot} bytes"
            )
    return AdapterSlots(count, shape.num_layers, out_slices, in_features, config.max_lora_rank, dtype, device)


def _error_output(request: Request, message: str, error_type: str) -> RequestOutput:
    return RequestOutput(
        request_id=request.request_id,
        token=None,
        finished=True,
        prompt_tokens=request.num_prompt_tokens,
        generated_tokens=request.num_output_tokens,
        seed=request.seed,
        error=message,
        error_type=error_type,
    )


def _eos_token_ids(model_config, tokenizer) -> frozenset[int]:
    ids = set()
    declared = getattr(model_config, "eos_token_id", None)
    if isinstance(declared, int):
        ids.add(declared)
    elif isinstance(declared, list | tuple):
        ids.update(declared)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


def _traceback_text(error: BaseException) -> str:
    """`error` with its own traceback only: logged from inside another exception's handler, `exc_info`
    would print that one first ("During handling of the above exception...")."""
    return "".join(traceback.format_exception(type(error), error, error.__traceback__, chain=False))
