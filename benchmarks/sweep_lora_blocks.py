"""Block-size sweep of the segmented LoRA kernels: shrink and expand timed apart, config by config.

    python benchmarks/sweep_lora_blocks.py            # one GPU, about 70 s on an H200
    python benchmarks/sweep_lora_blocks.py --smoke    # CPU (TRITON_INTERPRET=1) or GPU, tiny shapes

For Llama-3-8B projections at rank 16 in bfloat16, and decode-like steps (64 tokens from 64 distinct
adapters, 64 tokens from 8, 8 tokens from 8), every (block_k, split_k, warps) of the shrink and every
(block_n, block_k, warps) of the expand is timed the way `bench_lora_kernels` times (CUDA graph of
several steps over disjoint adapters, so weights come from HBM), next to the config `lora_tuning`
picks and the base projection's matmul. `lora_tuning`'s decode rules come from this sweep; rerun it
on another GPU to check them. JSON: benchmarks/results/lora_blocks_<device>.json, with the default
and the four fastest configs of each case.
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_lora_kernels import (  # noqa: E402
    LLAMA3_8B_PROJECTIONS,
    Pool,
    Timer,
    gpu_script_args,
    make_steps,
    provenance,
    write_result,
)

from loraplex.kernels.lora_tuning import (  # noqa: E402
    ExpandConfig,
    ShrinkConfig,
    expand_config,
    num_sms,
    shrink_config,
)

FULL = {
    "projections": LLAMA3_8B_PROJECTIONS,
    "cases": ((64, "distinct"), (64, "uniform"), (8, "distinct")),
    "shrink": {"block_k": (64, 128, 256), "split_k": (1, 2, 4, 8, 16), "num_warps": (2, 4)},
    "expand": {"block_n": (64, 128, 256, 512), "block_k": (16, 32), "num_warps": (2, 4, 8)},
    "pool_slots": 512,
    "groups": 8,
    "reps": 8,
}
SMOKE = {
    "projections": {"qkv": (64, (64, 16, 16))},
    "cases": ((8, "distinct"),),
    "shrink": {"block_k": (32,), "split_k": (1, 2), "num_warps": (4,)},
    "expand": {"block_n": (32,), "block_k": (16,), "num_warps": (4,)},
    "pool_slots": 16,
    "groups": 2,
    "reps": 2,
}
RANK = 16


def sweep_case(name, spec, tokens, regime, cfg, timer, device, dtype, sm_count) -> dict:
    from loraplex.kernels.lora_triton import lora_expand_triton, lora_shrink_triton

    in_features, widths = spec
    n = len(widths)
    pool = Pool.make(cfg["pool_slots"], in_features, widths, RANK, RANK, device, dtype)
    steps = make_steps(tokens, regime, cfg["groups"], cfg["pool_slots"], device, seed=tokens)
    distinct = sum(s.distinct for s in steps) / len(steps)
    segments = len(steps[0].segments)
    x = torch.randn((tokens, in_features), dtype=dtype, device=device)
    y = torch.randn((tokens, sum(widths)), dtype=dtype, device=device)
    h = torch.randn((tokens, n, RANK), dtype=torch.float32, device=device)

    def shrink_us(config: ShrinkConfig) -> float:
        def fn(i: int) -> None:
            s = steps[i]
            lora_shrink_triton(
                x, pool.lora_a, pool.ranks, s.seg_starts, s.seg_slots, config=config, zero_fill=False
            )

        return timer(fn, len(steps))[0]

    def expand_us(config: ExpandConfig) -> float:
        def fn(i: int) -> None:
            s = steps[i]
            lora_expand_triton(
                y, h, pool.lora_b, pool.ranks, pool.scaling, s.seg_starts, s.seg_slots,
                pool.slice_offsets, config=config,
            )  # fmt: skip

        return timer(fn, len(steps))[0]

    default_shrink = shrink_config(tokens, segments, n, RANK, in_features, sm_count, x.element_size())
    default_expand = expand_config(tokens, segments, max(widths), RANK, sm_count)
    block_m = default_shrink.block_m
    shrinks = [
        ShrinkConfig(block_m, 16, block_k, split_k, warps, 3)
        for block_k, split_k, warps in itertools.product(*cfg["shrink"].values())
        if block_k * split_k <= 2 * in_features
    ]
    expands = [
        ExpandConfig(block_m, block_n, block_k, warps, 2)
        for block_n, block_k, warps in itertools.product(*cfg["expand"].values())
    ]
    shrink_times = sorted((round(shrink_us(c), 2), repr(c)) for c in shrinks)
    expand_times = sorted((round(expand_us(c), 2), repr(c)) for c in expands)
    weight = torch.randn((sum(widths), in_features), dtype=dtype, device=device)
    return {
        "projection": name,
        "tokens": tokens,
        "regime": regime,
        "distinct_adapters": distinct,
        "shrink_weight_MB": distinct * RANK * n * in_features * x.element_size() / 1e6,
        "expand_weight_MB": distinct * RANK * sum(widths) * x.element_size() / 1e6,
        "base_matmul_us": round(timer(lambda _: torch.matmul(x, weight.t()), 1)[0], 2),
        "shrink_default": (round(shrink_us(default_shrink), 2), repr(default_shrink)),
        "shrink_best": shrink_times[:4],
        "expand_default": (round(expand_us(default_expand), 2), repr(default_expand)),
        "expand_best": expand_times[:4],
    }


def main(argv: list[str] | None = None) -> int:
    args = gpu_script_args(argv, __doc__.splitlines()[0], "lora_blocks")
    device = torch.device(args.device)
    cfg = SMOKE if args.smoke else FULL
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sm_count = num_sms(device.index or 0) if device.type == "cuda" else None
    torch.manual_seed(0)
    info = provenance(device) | {"mode": "smoke" if args.smoke else "full", "rank": RANK}
    started = time.perf_counter()
    timer = Timer(device, cfg["reps"])
    cases = []
    for (name, spec), (tokens, regime) in itertools.product(cfg["projections"].items(), cfg["cases"]):
        case = sweep_case(name, spec, tokens, regime, cfg, timer, device, dtype, sm_count)
        cases.append(case)
        print(
            f"{name:8s} b{tokens:<3d} {regime:9s} shrink {case['shrink_default'][0]:7.1f} -> "
            f"{case['shrink_best'][0][0]:7.1f} us   expand {case['expand_default'][0]:7.1f} -> "
            f"{case['expand_best'][0][0]:7.1f} us   (base matmul {case['base_matmul_us']:.1f} us)",
            flush=True,
        )
    result = {"meta": info | {"seconds": round(time.perf_counter() - started, 1)}, "cases": cases}
    out = write_result(result, args, "lora_blocks")
    print(f"wrote {out} in {result['meta']['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
