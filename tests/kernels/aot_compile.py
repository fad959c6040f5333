"""Compile the LoRA Triton kernels ahead of time for a CUDA target, without a GPU.

Run as a script (``python tests/kernels/aot_compile.py --arch 90``) in a process WITHOUT
TRITON_INTERPRET. For Llama-3-8B projections, several (tokens, segments) batches and each dtype it
builds the exact launch the ops would make (block configs chosen for an H100-sized GPU), specialises
it as Triton's JIT would (integer arguments equal to 1 become constants, pointers and multiples of 16
get divisibility hints), and lowers it through TTIR -> TTGIR -> LLVM -> PTX -> cubin with the ptxas
that ships with Triton. That catches what the interpreter does not: tl.dot tile minimums, non
power-of-2 blocks, type mismatches across control flow, shared-memory overflows. With
``--report`` it also prints registers, spills and shared memory per variant (needs cuobjdump).
Exits non-zero on the first failure.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget

from loraplex.kernels import lora_triton as lt
from loraplex.kernels.lora_tuning import expand_config, shrink_config

H100_SMS = 132
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TRITON_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int32: "i32"}
# (T, S): one decode token, distinct-adapter decode, a mixed batch, a long prefill with one adapter.
BATCHES = ((1, 1), (64, 64), (256, 8), (2048, 2))
# Llama-3-8B projections: (in, slice widths)
QKV = (4096, (4096, 1024, 1024))
PROJECTIONS = (QKV, (4096, (14336, 14336)), (14336, (4096,)))
ODD = (1000, (300,))  # sizes that are no multiple of any block
# --quick: (dtype, projection, batch) covering split-K atomics, both BLOCK_M extremes, odd sizes
QUICK = (
    ("bf16", QKV, (1, 1)),
    ("bf16", QKV, (64, 64)),
    ("bf16", ODD, (2048, 2)),
    ("fp16", ODD, (1, 1)),
    ("fp32", QKV, (64, 64)),
)
R_MAX = 64


def _specialize(kernel, args: list, meta: dict) -> tuple[dict, dict, dict, dict]:
    """Signature, constexprs, attrs and options, as Triton's JIT would derive them from the args."""
    signature, constexprs, attrs = {}, {}, {}
    options = {"num_warps": meta["num_warps"], "num_stages": meta["num_stages"]}
    runtime_params = [p for p in kernel.params if not p.is_constexpr]
    for index, (param, value) in enumerate(zip(runtime_params, args, strict=True)):
        if isinstance(value, torch.Tensor):
            signature[param.name] = "*" + TRITON_TYPES[value.dtype]
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif param.do_not_specialize:
            signature[param.name] = "i32"
        elif value == 1:
            signature[param.name] = "constexpr"
            constexprs[param.name] = 1
        else:
            signature[param.name] = "i32" if abs(value) < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
    for param in kernel.params:
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            constexprs[param.name] = meta[param.name]
    return signature, constexprs, attrs, options


def _segments(tokens: int, segments: int) -> tuple[torch.Tensor, torch.Tensor]:
    starts = torch.linspace(0, tokens, segments + 1).round().to(torch.int32)
    return starts, torch.arange(segments, dtype=torch.int32) % 2


def launches(dtype: str, projection: tuple[int, tuple[int, ...]], batch: tuple[int, int]):
    """Yield (kernel, args, meta) of the launches the ops make on an H100-sized GPU for one problem."""
    torch_dtype = DTYPES[dtype]
    in_features, widths = projection
    tokens, segments = batch
    n_slices, out_total = len(widths), sum(widths)
    offsets = tuple(sum(widths[:i]) for i in range(n_slices + 1))
    x = torch.empty((tokens, in_features), dtype=torch_dtype)
    y = torch.empty((tokens, out_total), dtype=torch_dtype)
    h = torch.empty((tokens, n_slices, R_MAX), dtype=torch.float32)
    lora_a = torch.empty((2, n_slices, R_MAX, in_features), dtype=torch_dtype)
    b_out_major = torch.empty((2, out_total, R_MAX), dtype=torch_dtype)
    b_rank_major = torch.empty((2, R_MAX, out_total), dtype=torch_dtype).transpose(1, 2)
    ranks = torch.empty((n_slices, 2), dtype=torch.int32)
    scaling = torch.empty((n_slices, 2), dtype=torch.float32)
    starts = torch.linspace(0, tokens, segments + 1).round().to(torch.int32)
    slots = torch.arange(segments, dtype=torch.int32) % 2
    scfg = shrink_config(tokens, segments, n_slices, R_MAX, in_features, H100_SMS, x.element_size())
    _, args, meta = lt.shrink_launch(x, lora_a, ranks, h, starts, slots, scfg, interpret=False)
    yield lt._shrink_kernel, args, meta
    ecfg = expand_config(tokens, segments, max(widths), R_MAX, H100_SMS)
    for lora_b in (b_out_major, b_rank_major):
        _, args, meta = lt.expand_launch(y, h, lora_b, ranks, scaling, starts, slots, offsets, ecfg)
        yield lt._expand_kernel, args, meta


def problems(dtypes: list[str], quick: bool):
    if quick:
        return [p for p in QUICK if p[0] in dtypes]
    return [(d, p, b) for d in dtypes for p in (*PROJECTIONS, ODD) for b in BATCHES]


def _resource_usage(cubin: bytes) -> str:
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    return next((line.strip().split(" CONSTANT")[0] for line in out.splitlines() if "REG:" in line), "?")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 80 or 90")
    parser.add_argument("--dtypes", default="fp32,fp16,bf16")
    parser.add_argument("--quick", action="store_true", help="fewer shapes (the unit test uses this)")
    parser.add_argument("--report", action="store_true", help="print registers/spills per variant")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("unset TRITON_INTERPRET to compile", file=sys.stderr)
        return 2
    target = GPUTarget("cuda", args.arch, 32)
    seen = set()
    for name, projection, batch in problems(args.dtypes.split(","), args.quick):
        for kernel, launch_args, meta in launches(name, projection, batch):
            signature, constexprs, attrs, options = _specialize(kernel, launch_args, meta)
            key = (
                kernel.__name__,
                repr(sorted(signature.items())),
                repr(sorted(constexprs.items())),
                repr(attrs),
            )
            if key in seen:
                continue
            seen.add(key)
            src = triton.compiler.ASTSource(
                fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs
            )
            compiled = triton.compile(src, target=target, options=options)
            shown = {k: v for k, v in constexprs.items() if k.startswith(("BLOCK", "USE", "EVEN", "N_SL"))}
            line = f"sm_{args.arch} {kernel.__name__} {name} {shown} smem={compiled.metadata.shared}"
            if args.report:
                line += " " + _resource_usage(compiled.asm["cubin"])
            print(line, flush=True)
    print(f"compiled {len(seen)} variants for sm_{args.arch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
