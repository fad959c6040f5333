"""Segmented-LoRA kernel benchmark: loraplex vs gather-then-bmm vs a per-adapter cuBLAS loop.

    python benchmarks/bench_lora_kernels.py            # one GPU, about 2-3 minutes
    python benchmarks/bench_lora_kernels.py --smoke    # CPU or GPU, tiny shapes, seconds

Llama-3-8B projections (qkv 4096 -> 4096+1024+1024 as 3 slices, o 4096 -> 4096, gate/up 4096 ->
2x14336 as 2 slices, down 14336 -> 4096), bfloat16, ranks 8/16/64, batch 1/8/32/64/256 decode tokens,
adapter popularity regimes distinct / uniform / skewed (zipf 1.5) / identical. Every method runs in
the same process on the same data; on CUDA each is captured in a CUDA graph (so launch overhead
from Python is not measured, and the loraplex path is shown to be graph-capturable) and timed with
CUDA events, median of several replays. Each replay cycles through several disjoint adapter groups so
that weights come from HBM, not L2. B is stored rank-major ([slots, r_max, out] passed as a
transposed view), the layout that lets a small-rank slot read only its own bytes.

Bytes moved = x read + y read and written + the A and B weights of the distinct adapters the step
touches, at their ranks. GB/s is that over the time; bw_fraction divides it by the device-to-device
copy bandwidth measured in the same run. JSON goes to benchmarks/results/lora_kernels_<device>.json
with machine, device, versions, date and git commit, plus the issue's goal checks as named fields.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from loraplex.kernels import add_lora

ROOT = Path(__file__).resolve().parents[1]
REGIMES = ("distinct", "uniform", "skewed", "identical")
LLAMA3_8B_PROJECTIONS = {
    "qkv": (4096, (4096, 1024, 1024)),
    "o": (4096, (4096,)),
    "gate_up": (4096, (14336, 14336)),
    "down": (14336, (4096,)),
}
FULL = {
    "projections": LLAMA3_8B_PROJECTIONS,
    "ranks": (8, 16, 64),
    "batches": (1, 8, 32, 64, 256),
    "pool_slots": 256,
    "groups": 8,
    "reps": 10,
}
SMOKE = {
    "projections": {"qkv": (64, (64, 16, 16)), "down": (96, (64,))},
    "ranks": (8,),
    "batches": (1, 8),
    "pool_slots": 16,
    "groups": 2,
    "reps": 2,
}


# ----------------------------------------------------------------------------------------- timing
class Timer:
    """Median time of fn over reps, in microseconds per call of the inner step.

    On CUDA, ``calls`` invocations of fn are captured in one CUDA graph (eager timing if capture
    fails) and replayed; on CPU fn is timed with perf_counter.
    """

    def __init__(self, device: torch.device, reps: int) -> None:
        self.device, self.reps = device, reps

    def __call__(self, fn: Callable[[int], None], calls: int) -> tuple[float, bool]:
        for i in range(calls):  # warm up: compiles kernels, allocates
            fn(i)
        if self.device.type != "cuda":
            samples = []
            for _ in range(self.reps):
                start = time.perf_counter()
                for i in range(calls):
                    fn(i)
                samples.append((time.perf_counter() - start) * 1e6 / calls)
            return statistics.median(samples), False
        torch.cuda.synchronize()
        graph, captured = None, True
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for i in range(calls):
                    fn(i)
            run = graph.replay
        except Exception:  # noqa: BLE001 - fall back to eager timing, recorded in the result
            captured, graph = False, None
            torch.cuda.synchronize()

            def run() -> None:
                for i in range(calls):
                    fn(i)

        for _ in range(3):
            run()
        samples = []
        for _ in range(self.reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) * 1e3 / calls)
        del graph
        return statistics.median(samples), captured


def copy_bandwidth(device: torch.device, smoke: bool) -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + bytes written)."""
    n = (16 << 20) if smoke else (1 << 29)  # elements of bfloat16: 32 MiB or 1 GiB
    src = torch.empty(n, dtype=torch.bfloat16, device=device).fill_(1)
    dst = torch.empty_like(src)
    us, _ = Timer(device, 5 if smoke else 20)(lambda _: dst.copy_(src), 1)
    return 2 * src.numel() * src.element_size() / (us * 1e-6) / 1e9


# -------------------------------------------------------------------------------------- problems
@dataclass
class Pool:
    """Stacked adapters of one projection: A [slots, n, r_max, in], B rank-major [slots, out, r_max]."""

    lora_a: torch.Tensor
    lora_b: torch.Tensor
    ranks: torch.Tensor
    scaling: torch.Tensor
    rank: int
    slice_offsets: tuple[int, ...]

    @classmethod
    def make(cls, slots: int, in_features: int, widths, rank: int, r_max: int, device, dtype) -> Pool:
        n, out = len(widths), sum(widths)
        gen = torch.Generator(device="cpu").manual_seed(rank * 1000 + r_max)
        lora_a = torch.empty((slots, n, r_max, in_features), dtype=dtype, device=device)
        lora_b = torch.empty((slots, r_max, out), dtype=dtype, device=device).transpose(1, 2)
        lora_a.normal_(0, in_features**-0.5, generator=None)
        lora_b.normal_(0, rank**-0.5, generator=None)
        lora_a[:, :, rank:] = 0  # gather-bmm reads r_max: keep the padding zero
        lora_b[:, :, rank:] = 0
        ranks = torch.full((n, slots), rank, dtype=torch.int32, device=device)
        scaling = (0.5 + torch.rand((n, slots), generator=gen)).to(device)
        offsets = tuple(sum(widths[:i]) for i in range(n + 1))
        return cls(lora_a, lora_b, ranks, scaling, rank, offsets)


@dataclass
class Step:
    """One decode step: tokens grouped into segments by slot, plus host copies for the baselines."""

    seg_starts: torch.Tensor
    seg_slots: torch.Tensor
    token_slots: torch.Tensor
    segments: list[tuple[int, int, int]]  # (begin, end, slot) on the host

    @property
    def distinct(self) -> int:
        return len({s for _, _, s in self.segments})


def adapters_for(tokens: int, regime: str, gen: torch.Generator) -> list[int]:
    """Adapter index (0-based, within a group) of each token."""
    if regime == "distinct":
        return list(range(tokens))
    if regime == "uniform":
        return torch.randint(0, math.ceil(math.sqrt(tokens)), (tokens,), generator=gen).tolist()
    if regime == "skewed":
        weights = torch.arange(1, tokens + 1, dtype=torch.float64) ** -1.5
        return torch.multinomial(weights, tokens, replacement=True, generator=gen).tolist()
    return [0] * tokens


def make_steps(tokens: int, regime: str, groups: int, pool_slots: int, device, seed: int) -> list[Step]:
    """`groups` steps whose adapters come from disjoint slot ranges where the pool allows it."""
    gen = torch.Generator().manual_seed(seed)
    span = max(tokens, 1)
    steps = []
    for g in range(groups):
        ids = adapters_for(tokens, regime, gen)
        base = (g * span) % max(1, pool_slots - span + 1)
        slots = sorted(base + (i % pool_slots) for i in ids)
        segments, begin = [], 0
        for t in range(1, tokens + 1):
            if t == tokens or slots[t] != slots[begin]:
                segments.append((begin, t, slots[begin]))
                begin = t
        starts = [0] + [e for _, e, _ in segments]
        steps.append(
            Step(
                torch.tensor(starts, dtype=torch.int32, device=device),
                torch.tensor([s for _, _, s in segments], dtype=torch.int32, device=device),
                torch.tensor(slots, dtype=torch.long, device=device),
                segments,
            )
        )
    return steps


def bytes_moved(step: Step, pool: Pool, tokens: int, in_features: int, out_total: int, elem: int) -> int:
    n = len(pool.slice_offsets) - 1
    weights = step.distinct * pool.rank * (n * in_features + out_total)
    return elem * (tokens * in_features + 2 * tokens * out_total + weights)


# --------------------------------------------------------------------------------------- methods
def loraplex_fn(y, x, pool: Pool, steps: list[Step]) -> Callable[[int], None]:
    def fn(i: int) -> None:
        s = steps[i]
        add_lora(
            y,
            x,
            pool.lora_a,
            pool.lora_b,
            pool.ranks,
            pool.scaling,
            s.seg_starts,
            s.seg_slots,
            pool.slice_offsets,
        )

    return fn


def gather_bmm_fn(y, x, pool: Pool, steps: list[Step]) -> Callable[[int], None]:
    """Index A and B by each token's slot, then batched matmuls (r_max wide, zero-padded)."""
    n = len(pool.slice_offsets) - 1
    r_max = pool.lora_a.shape[2]

    def fn(i: int) -> None:
        idx = steps[i].token_slots
        a_tok = pool.lora_a[idx].reshape(idx.numel(), n * r_max, -1)  # [T, n*r, in]
        h = torch.bmm(a_tok, x.unsqueeze(-1))  # [T, n*r, 1]
        b_tok = pool.lora_b[idx]  # [T, out, r]
        scale = pool.scaling[:, idx]  # [n, T]
        for s in range(n):
            lo, hi = pool.slice_offsets[s], pool.slice_offsets[s + 1]
            delta = torch.bmm(b_tok[:, lo:hi], h[:, s * r_max : (s + 1) * r_max]).squeeze(-1)
            y[:, lo:hi] += delta * scale[s].unsqueeze(-1).to(delta.dtype)

    return fn


def loop_cublas_fn(y, x, pool: Pool, steps: list[Step]) -> Callable[[int], None]:
    """One shrink GEMM and one expand GEMM per slice for each segment (host-side loop)."""
    n = len(pool.slice_offsets) - 1
    r = pool.rank
    scales = pool.scaling.cpu().tolist()
    a_flat = pool.lora_a[:, :, :r]  # [slots, n, r, in]

    def fn(i: int) -> None:
        for begin, end, slot in steps[i].segments:
            h = x[begin:end] @ a_flat[slot].reshape(n * r, -1).t()
            for s in range(n):
                lo, hi = pool.slice_offsets[s], pool.slice_offsets[s + 1]
                b = pool.lora_b[slot, lo:hi, :r]
                y[begin:end, lo:hi].addmm_(h[:, s * r : (s + 1) * r], b.t(), alpha=scales[s][slot])

    return fn


METHODS = {"loraplex": loraplex_fn, "gather_bmm": gather_bmm_fn, "loop_cublas": loop_cublas_fn}


# ------------------------------------------------------------------------------------------ runs
def check_agreement(x, y0, pool: Pool, step: Step) -> float:
    """Max |loraplex - loop_cublas| on one step, relative to the delta's magnitude."""
    outs = []
    for make in (loraplex_fn, loop_cublas_fn):
        y = y0.clone()
        make(y, x, pool, [step])(0)
        outs.append(y.float() - y0.float())
    scale = outs[1].abs().max().item() or 1.0
    return (outs[0] - outs[1]).abs().max().item() / scale


def run_projection(
    name: str, spec, rank: int, cfg: dict, timer: Timer, device, dtype, copy_gbs: float
) -> list:
    in_features, widths = spec
    out_total = sum(widths)
    pool = Pool.make(cfg["pool_slots"], in_features, widths, rank, rank, device, dtype)
    rows = []
    for tokens in cfg["batches"]:
        x = torch.randn((tokens, in_features), dtype=dtype, device=device)
        y0 = torch.randn((tokens, out_total), dtype=dtype, device=device)
        for regime in REGIMES:
            steps = make_steps(tokens, regime, cfg["groups"], cfg["pool_slots"], device, seed=tokens)
            moved = statistics.mean(
                bytes_moved(s, pool, tokens, in_features, out_total, x.element_size()) for s in steps
            )
            row = {
                "projection": name,
                "rank": rank,
                "batch": tokens,
                "regime": regime,
                "segments": statistics.mean(len(s.segments) for s in steps),
                "distinct_adapters": statistics.mean(s.distinct for s in steps),
                "bytes": int(moved),
                "rel_err_vs_loop": check_agreement(x, y0, pool, steps[0]),
            }
            for method, make in METHODS.items():
                y = y0.clone()
                us, graphed = timer(make(y, x, pool, steps), len(steps))
                row[f"{method}_us"] = round(us, 3)
                row[f"{method}_graph"] = graphed
            gbs = moved / (row["loraplex_us"] * 1e-6) / 1e9
            row["gbs"] = round(gbs, 1)
            row["bw_fraction"] = round(gbs / copy_gbs, 4)
            row["speedup_vs_gather_bmm"] = round(row["gather_bmm_us"] / row["loraplex_us"], 3)
            row["speedup_vs_loop_cublas"] = round(row["loop_cublas_us"] / row["loraplex_us"], 3)
            rows.append(row)
            print(
                f"{name:8s} r{rank:<3d} b{tokens:<4d} {regime:9s} loraplex {row['loraplex_us']:9.1f}us "
                f"{row['gbs']:7.1f}GB/s ({row['bw_fraction']:.2f})  gather-bmm x{row['speedup_vs_gather_bmm']:.2f}"
                f"  loop x{row['speedup_vs_loop_cublas']:.2f}  err {row['rel_err_vs_loop']:.1e}",
                flush=True,
            )
    del pool
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def rank_pool_check(cfg: dict, timer: Timer, device, dtype, batches=(32, 64)) -> list:
    """Rank-8 adapters in a rank-64 pool (r_max 64) vs the same adapters in a rank-8 pool."""
    out = []
    for name, (in_features, widths) in cfg["projections"].items():
        pools = {
            r_max: Pool.make(cfg["pool_slots"], in_features, widths, 8, r_max, device, dtype)
            for r_max in (8, 64)
        }
        for tokens in batches:
            if tokens > cfg["pool_slots"]:
                continue
            x = torch.randn((tokens, in_features), dtype=dtype, device=device)
            y = torch.zeros((tokens, sum(widths)), dtype=dtype, device=device)
            steps = make_steps(tokens, "distinct", cfg["groups"], cfg["pool_slots"], device, seed=7)
            us = {r: timer(loraplex_fn(y, x, p, steps), len(steps))[0] for r, p in pools.items()}
            out.append({"projection": name, "batch": tokens, "r8_pool_us": us[8], "r64_pool_us": us[64],
                        "ratio": round(us[64] / us[8], 3)})  # fmt: skip
            print(
                f"rank-8 slots: {name:8s} b{tokens:<4d} r_max 64 / r_max 8 = {out[-1]['ratio']:.3f}",
                flush=True,
            )
        del pools
    return out


def goals(rows: list, rank_rows: list) -> dict:
    def pick(**kw):
        return [r for r in rows if all(r[k] == v for k, v in kw.items())]

    bw = {
        f"{r['projection']}_b{r['batch']}": r["bw_fraction"]
        for r in rows
        if r["regime"] == "distinct" and r["rank"] == 16 and r["batch"] >= 32
    }
    gather = {
        f"{r['projection']}_r{r['rank']}": r["speedup_vs_gather_bmm"]
        for r in pick(regime="distinct", batch=64)
    }
    ident = {
        f"{r['projection']}_r{r['rank']}_b{r['batch']}": round(r["loraplex_us"] / r["loop_cublas_us"], 3)
        for r in pick(regime="identical")
    }
    ranks = {f"{r['projection']}_b{r['batch']}": r["ratio"] for r in rank_rows}

    def summary(values: dict, goal: float, worst: Callable, met: Callable) -> dict:
        w = worst(values.values()) if values else None
        return {"goal": goal, "worst": w, "met": bool(values) and met(w, goal), "by_case": values}

    return {
        "distinct_b32plus_rank16_bw_fraction": summary(bw, 0.6, min, lambda w, g: w >= g),
        "speedup_vs_gather_bmm_distinct_b64": summary(gather, 3.0, min, lambda w, g: w >= g),
        "identical_vs_single_adapter_cublas": summary(ident, 1.2, max, lambda w, g: w <= g),
        "rank8_in_rank64_pool_vs_rank8_pool": summary(ranks, 1.1, max, lambda w, g: w <= g),
    }


def provenance(device: torch.device) -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    info = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": os.environ.get("LORAPLEX_BENCH_COMMIT") or git("rev-parse", "HEAD"),
        "git_dirty": False
        if os.environ.get("LORAPLEX_BENCH_COMMIT")
        else bool(git("status", "--porcelain", "--untracked-files=no")),
        "machine": {"host": platform.node(), "arch": platform.machine(), "python": platform.python_version()},
        "torch": torch.__version__,
        "triton": triton_version,
        "device": str(device),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, sm_count=props.multi_processor_count, cuda=torch.version.cuda)
    else:
        info.update(
            device_name=platform.processor() or platform.machine(), torch_threads=torch.get_num_threads()
        )
    return info


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def gpu_script_args(argv: list[str] | None, description: str, prefix: str) -> argparse.Namespace:
    """--smoke, --device, --out of a GPU kernel script (`prefix`: its results file's name); the full
    run refuses a device other than CUDA."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, few iterations (CPU is fine)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--out", type=Path, help=f"JSON path (default benchmarks/results/{prefix}_<device>.json)"
    )
    args = parser.parse_args(argv)
    if torch.device(args.device).type != "cuda" and not args.smoke:
        parser.error("the full run needs a CUDA device; use --smoke on CPU")
    return args


def write_result(result: dict, args: argparse.Namespace, prefix: str) -> Path:
    """Write `result` to --out, or to benchmarks/results/<prefix>_<device name>[-smoke].json."""
    meta = result["meta"]
    name = slug(meta.get("device_name") or meta["device"]) + ("-smoke" if args.smoke else "")
    out = args.out or ROOT / "benchmarks" / "results" / f"{prefix}_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    args = gpu_script_args(argv, __doc__.splitlines()[0], "lora_kernels")
    device = torch.device(args.device)
    cfg = SMOKE if args.smoke else FULL
    dtype = torch.bfloat16
    torch.manual_seed(0)
    info = provenance(device)
    info.update(
        mode="smoke" if args.smoke else "full", dtype="bfloat16", b_layout="rank-major (transposed view)"
    )
    print(
        f"{info.get('device_name')}  torch {info['torch']}  triton {info['triton']}  commit {info['git_commit'][:10]}"
    )

    started = time.perf_counter()
    timer = Timer(device, cfg["reps"])
    copy_gbs = copy_bandwidth(device, args.smoke)
    print(f"device copy bandwidth: {copy_gbs:.1f} GB/s", flush=True)
    rows = []
    for name, spec in cfg["projections"].items():
        for rank in cfg["ranks"]:
            rows += run_projection(name, spec, rank, cfg, timer, device, dtype, copy_gbs)
    rank_rows = rank_pool_check(cfg, timer, device, dtype, batches=(8,) if args.smoke else (32, 64))
    result = {
        "meta": info | {"seconds": round(time.perf_counter() - started, 1)},
        "copy_bandwidth_gbs": round(copy_gbs, 1),
        "goals": goals(rows, rank_rows),
        "results": rows,
        "rank_pool": rank_rows,
    }
    out = write_result(result, args, "lora_kernels")
    for goal, value in result["goals"].items():
        print(f"goal {goal}: worst {value['worst']} (goal {value['goal']}) met={value['met']}")
    print(f"wrote {out} in {result['meta']['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
