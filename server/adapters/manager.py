"""The tiered adapter cache: GPU slots above a CPU tier of loaded weights above disk (or the hub).

Every adapter ever asked for stays known (with its tier and counters) after it leaves memory.

Loads run on background threads; the engine thread only asks `acquire(request)` for waiting requests
and never waits. A slot that running requests use is pinned; when a slot is needed and none is free,
the least recently used unpinned one is evicted. A failed load fails the requests waiting for it and is
then forgotten, so a later request retries.

The host tier holds at most `cpu_capacity` adapters. Each admission pass (`begin_admission`, then
`acquire` for the waiting requests in order) says which adapters waiting requests want; an adapter
wanted in the current or the last pass and not yet in a slot keeps its host copy, and a new load starts
only while fewer than `cpu_capacity` of the adapters wanted before it in the pass wait outside a slot.
Otherwise each finished load would push out the one before it, still waiting for a slot, and the
two would be read from disk again and again.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import AdapterError, AdapterReadError
from .peft_format import AdapterWeights, load_adapter
from .slots import AdapterSlots
from .sources import HUB, AdapterLocation, AdapterSources, fetch_from_hub

logger = logging.getLogger(__name__)


class Readiness(enum.Enum):
    READY = "ready"  # resident in a slot, now pinned for this request
    LOADING = "loading"  # on its way from disk / hub / host memory
    NEEDS_SLOT = "needs_slot"  # in host memory, but every slot is pinned
    FAILED = "failed"


@dataclass
class AdapterEntry:
    location: AdapterLocation
    future: Future | None = None
    weights: AdapterWeights | None = None
    error: AdapterError | None = None
    slot: int | None = None
    activation: torch.cuda.Event | None = None
    pins: int = 0
    last_used: float = field(default_factory=time.time)
    requests: int = 0
    rank: int = 0
    nbytes: int = 0
    load_seconds: float | None = None

    @property
    def tier(self) -> str:
        if self.slot is not None:
            return "gpu"
        return "cpu" if self.weights is not None else "disk"


@dataclass
class AdapterStats:
    loads: int = 0
    load_failures: int = 0
    load_seconds: float = 0.0
    evictions: int = 0
    hits: int = 0
    misses: int = 0


Reader = Callable[[AdapterLocation], AdapterWeights]


class AdapterManager:
    def __init__(
        self,
        sources: AdapterSources,
        slots: AdapterSlots,
        read: Reader,
        cpu_capacity: int,
        wake: Callable[[], None] = lambda: None,
        load_threads: int = 2,
    ):
        self.sources = sources
        self.slots = slots
        self.read = read
        self.cpu_capacity = cpu_capacity
        self.wake = wake
        self.stats = AdapterStats()
        self._entries: OrderedDict[str, AdapterEntry] = OrderedDict()
        self._wanted: dict[str, None] = {}  # keys acquired in this admission pass, in order
        self._wanted_before: dict[str, None] = {}  # ... and in the one before
        self._slot_owner: list[str | None] = [None] * slots.num_slots
        self._lock = threading.RLock()
        self._pool = ThreadPoolExecutor(max_workers=load_threads, thread_name_prefix="loraplex-adapter-load")
        self._stream = torch.cuda.Stream(slots.device) if slots.device.type == "cuda" else None

    # ---- loading (any thread) -------------------------------------------------------------------
    def locate(self, adapter_id: str, source: str | None) -> AdapterLocation:
        return self.sources.locate(adapter_id, source)

    def start_load(self, location: AdapterLocation) -> AdapterEntry:
        """Ensure a load is under way or done; concurrent callers share one load."""
        with self._lock:
            entry = self._entries.get(location.key)
            if entry is None or entry.error is not None:
                entry = AdapterEntry(location)
                self._entries[location.key] = entry
            if entry.weights is None and entry.slot is None and entry.future is None:
                self.stats.misses += 1
                entry.future = self._pool.submit(self._load, entry)
            return entry

    def _load(self, entry: AdapterEntry) -> None:
        started = time.perf_counter()
        try:
            weights = self.read(entry.location)
        except AdapterError as error:
            failure = error
        except Exception as error:  # noqa: BLE001 - anything else while reading is a load failure
            failure = AdapterReadError(entry.location.adapter_id, f"{type(error).__name__}: {error}")
        else:
            failure = None
        with self._lock:
            entry.future = None
            if failure is not None:
                entry.error = failure
                self.stats.load_failures += 1
                logger.warning("%s", failure)
            else:
                entry.weights = weights
                entry.last_used = time.time()
                entry.rank = weights.max_rank
                entry.nbytes = weights.nbytes
                entry.load_seconds = time.perf_counter() - started
                self.stats.loads += 1
                self.stats.load_seconds += entry.load_seconds
                self._trim_cpu_tier()
        self.wake()

    def wait_loaded(self, location: AdapterLocation, timeout: float | None = None) -> AdapterEntry:
        """Block until the adapter is in host memory or failed (for preloading and the load API)."""
        entry = self.start_load(location)
        future = entry.future
        if future is not None:
            future.result(timeout=timeout)
        if entry.error is not None:
            raise entry.error
        return entry

    def _trim_cpu_tier(self) -> None:
        """Drop host copies beyond capacity, least recently used first (GPU-resident ones stay servable),
        the ones waiting requests still need for a slot last, the most recently wanted of them first."""
        held = [e for e in self._entries.values() if e.weights is not None]
        excess = len(held) - self.cpu_capacity
        if excess <= 0:
            return
        order = {key: i for i, key in enumerate([*self._wanted_before, *self._wanted])}
        is_needed = [e.slot is None and e.location.key in order for e in held]
        spare = sorted((e for e, n in zip(held, is_needed, strict=True) if not n), key=lambda e: e.last_used)
        needed = sorted(
            (e for e, n in zip(held, is_needed, strict=True) if n), key=lambda e: -order[e.location.key]
        )
        for entry in (spare + needed)[:excess]:
            entry.weights = None

    def _waiting_outside_slots(self) -> int:
        """Adapters wanted earlier in this admission pass that are loading or in host memory, slotless."""
        entries = (self._entries.get(key) for key in self._wanted)
        return sum(1 for e in entries if e is not None and e.slot is None and e.error is None)

    # ---- engine thread ----------------------------------------------------------------------------
    def begin_admission(self) -> None:
        """A new pass of `acquire` calls over the waiting requests, in their order, begins."""
        with self._lock:
            self._wanted_before, self._wanted = self._wanted, {}

    def acquire(
        self, location: AdapterLocation, first: bool = True
    ) -> tuple[Readiness, int, AdapterError | None]:
        """For a waiting request: (READY, slot, None) pins the slot; otherwise why it must wait or fail.
        `first`: the request's first ask, the only one that can count as a cache hit."""
        with self._lock:
            entry = self._entries.get(location.key)
            if entry is None or (entry.weights is None and entry.slot is None and entry.future is None):
                if entry is not None and entry.error is not None:
                    return Readiness.FAILED, -1, entry.error
                if location.key not in self._wanted and self._waiting_outside_slots() >= self.cpu_capacity:
                    return Readiness.LOADING, -1, None  # its turn to load comes when one of those has a slot
                entry = self.start_load(location)
            self._wanted[location.key] = None
            if entry.error is not None:
                return Readiness.FAILED, -1, entry.error
            if entry.slot is not None:
                if entry.activation is not None:
                    if not entry.activation.query():
                        return Readiness.LOADING, -1, None
                    entry.activation = None
                entry.pins += 1
                entry.requests += 1
                entry.last_used = time.time()
                self.stats.hits += first
                return Readiness.READY, entry.slot, None
            if entry.weights is None:
                return Readiness.LOADING, -1, None
            slot = self._take_slot()
            if slot is None:
                return Readiness.NEEDS_SLOT, -1, None
            self._activate(entry, slot)
            return self.acquire(location, first=False)

    def release(self, location: AdapterLocation) -> None:
        with self._lock:
            entry = self._entries.get(location.key)
            if entry is not None and entry.pins > 0:
                entry.pins -= 1
                entry.last_used = time.time()

    def forget_failures(self) -> None:
        """After the engine failed the requests waiting on a failed load: let later requests retry."""
        with self._lock:
            for key in [k for k, e in self._entries.items() if e.error is not None]:
                del self._entries[key]

    def _take_slot(self) -> int | None:
        for slot, owner in enumerate(self._slot_owner):
            if owner is None:
                return slot
        idle = [self._entries[o] for o in self._slot_owner if o is not None and self._entries[o].pins == 0]
        if not idle:
            return None
        victim = min(idle, key=lambda e: e.last_used)
        slot = victim.slot
        self._evict(victim)
        self.stats.evictions += 1  # the cache's choice (an unload asked for is not counted)
        return slot

    def _evict(self, entry: AdapterEntry) -> None:
        slot = entry.slot
        self.slots.clear(slot)
        self._slot_owner[slot] = None
        entry.slot = None
        entry.activation = None

    def _activate(self, entry: AdapterEntry, slot: int) -> None:
        self.slots.write(slot, entry.weights, stream=self._stream)
        if self._stream is not None:
            entry.activation = torch.cuda.Event()
            entry.activation.record(self._stream)
        entry.slot = slot
        self._slot_owner[slot] = entry.location.key

    def activate_now(self, location: AdapterLocation) -> bool:
        """Put a host-resident adapter in a slot if one is free or evictable (preload / load API)."""
        with self._lock:
            entry = self._entries.get(location.key)
            if entry is None or entry.weights is None:
                return False
            if entry.slot is not None:
                return True
            slot = self._take_slot()
            if slot is None:
                return False
            self._activate(entry, slot)
            return True

    def unload(self, location: AdapterLocation) -> AdapterEntry:
        """Drop an adapter from GPU and host memory (it stays known, on disk); refused while in use."""
        with self._lock:
            entry = self._entries.get(location.key)
            if entry is None or entry.tier == "disk":
                raise KeyError(location.adapter_id)
            if entry.pins:
                raise RuntimeError(
                    f"adapter {location.adapter_id!r} is in use by {entry.pins} running requests"
                )
            if entry.slot is not None:
                self._evict(entry)
            entry.weights = None
            return entry

    # ---- reporting (any thread) -------------------------------------------------------------------
    def entries(self) -> list[AdapterEntry]:
        with self._lock:
            return list(self._entries.values())

    def tier_counts(self) -> dict[str, int]:
        counts = {"gpu": 0, "cpu": 0, "disk": 0}
        for entry in self.entries():
            counts[entry.tier] += 1
        return counts

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def make_reader(
    num_layers: int,
    out_slices: dict[str, tuple[int, ...]],
    in_features: dict[str, int],
    dtype: torch.dtype,
    max_lora_rank: int,
    base_model_names: tuple[str, ...],
    pin: bool,
) -> Reader:
    """Disk (or hub) -> validated host weights, pinned for fast copies when serving on CUDA."""

    def read(location: AdapterLocation) -> AdapterWeights:
        path: Path = fetch_from_hub(location) if location.source == HUB else location.path
        weights = load_adapter(
            location.adapter_id,
            path,
            num_layers,
            out_slices,
            in_features,
            dtype,
            max_lora_rank,
            base_model_names,
        )
        return weights.pin_memory() if pin else weights

    return read
