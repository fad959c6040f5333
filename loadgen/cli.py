"""`loraplex bench`: drive a running server with a synthetic multi-adapter workload and report.

    loraplex bench --url http://127.0.0.1:8080 --adapter-format bench-r16-{} --adapter-counts 1 4 16 64 \\
        --num-requests 128 --prompt-len 16:64 --output-len 32:64 --concurrency 32 --out result.json

One run per adapter count (the first N names of the pool), plus one with the base model alone unless
--no-base; every run sends the same prompts with the same lengths and arrivals. With --dataset FILE the
prompts come from FILE (JSON Lines, JSON or ShareGPT; see `loraplex.loadgen.dataset`), counted by the
server's /tokenize.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

from .apis import API_NAMES, make_api, served_base_model
from .arrivals import Arrivals
from .dataset import load_dataset
from .lengths import LengthDist
from .popularity import REGIMES
from .report import environment, summary_table, write_report
from .runner import server_info
from .stats import Slo
from .sweep import sweep
from .workload import WorkloadSpec


def _vocab(text: str) -> tuple[int, int]:
    low, high = text.split(":")
    return int(low), int(high)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `bench` options (shared by `loraplex bench` and `python -m loraplex.loadgen`)."""
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the server's base URL")
    parser.add_argument(
        "--api",
        choices=API_NAMES,
        default="lorax",
        help="lorax: POST /generate_stream (loraplex, LoRAX, TGI); openai: POST /v1/completions "
        "(loraplex, vLLM), the adapter named by `model`",
    )
    parser.add_argument(
        "--base-model",
        default=None,
        help="`model` for base-model requests with --api openai (default: /info's model_id, else the "
        "first of /v1/models)",
    )
    load = parser.add_argument_group("workload")
    load.add_argument("--num-requests", type=int, default=128)
    load.add_argument(
        "--prompt-len",
        type=LengthDist.parse,
        default=LengthDist.parse("128"),
        help="N, LOW:HIGH or lognormal:MEDIAN:SIGMA[:MAX] (tokens)",
    )
    load.add_argument(
        "--output-len",
        type=LengthDist.parse,
        default=LengthDist.parse("32"),
        help="as --prompt-len; generated exactly (EOS ignored)",
    )
    load.add_argument("--seed", type=int, default=0)
    load.add_argument("--vocab", type=_vocab, default=(3, 32000), help="prompt word ids LOW:HIGH")
    load.add_argument("--word", default="w{}", help="how a prompt word is written from its id")
    load.add_argument(
        "--dataset",
        type=Path,
        default=None,
        help="prompts from a JSON Lines, JSON or ShareGPT file instead of synthetic words; its output "
        "lengths (or reference answers' token counts) where it has them, else --output-len",
    )
    adapters = parser.add_argument_group("adapters")
    adapters.add_argument(
        "--popularity",
        choices=REGIMES,
        default="powerlaw",
        help="Punica's distinct/uniform/skewed/identical, S-LoRA's powerlaw, roundrobin, base",
    )
    adapters.add_argument("--alpha", type=float, default=1.0, help="power-law exponent (1 = uniform)")
    adapters.add_argument("--adapter-ids", default=None, help="comma-separated adapter ids (the pool)")
    adapters.add_argument(
        "--adapter-format",
        default="bench-r16-{}",
        help="pool names from an index when --adapter-ids is not given",
    )
    adapters.add_argument(
        "--adapter-counts",
        type=int,
        nargs="+",
        default=None,
        help="pool sizes to run (default: the whole pool once)",
    )
    adapters.add_argument("--no-base", action="store_true", help="skip the base-model run")
    arrival = parser.add_argument_group("arrivals")
    arrival.add_argument("--rate", type=float, default=math.inf, help="requests/s (inf: all at once)")
    arrival.add_argument("--cv", type=float, default=1.0, help="coefficient of variation (1: Poisson)")
    arrival.add_argument("--concurrency", type=int, default=None, help="closed loop with N clients")
    out = parser.add_argument_group("output")
    out.add_argument("--slo-ttft", type=float, default=1.0, help="TTFT bound (s) for SLO attainment")
    out.add_argument("--slo-tpot", type=float, default=None, help="TPOT bound (s), also required")
    out.add_argument("--slo-e2e", type=float, default=None, help="end-to-end bound (s), also required")
    out.add_argument("--out", type=Path, default=None, help="JSON report path")
    out.add_argument("--plot-prefix", type=Path, default=None, help="write <prefix>_*.png")
    out.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    out.add_argument("--no-progress", action="store_true")
    out.add_argument("--no-warmup", action="store_true", help="time adapter loads too")


def _pool(args: argparse.Namespace) -> list[str]:
    if args.adapter_ids:
        return [a.strip() for a in args.adapter_ids.split(",") if a.strip()]
    largest = max(args.adapter_counts or [0])
    if args.popularity == "distinct":
        largest = max(largest, args.num_requests)
    return [args.adapter_format.format(i) for i in range(largest)]


def run_from_args(args: argparse.Namespace) -> dict:
    """Run what the options describe and return the report (also written/plotted if asked)."""
    pool = _pool(args)
    info = server_info(args.url)
    counts = args.adapter_counts or ([len(pool)] if pool and args.popularity != "base" else [])
    spec = WorkloadSpec(
        num_requests=args.num_requests,
        prompt_len=args.prompt_len,
        output_len=args.output_len,
        popularity=args.popularity,
        alpha=args.alpha,
        adapters=tuple(pool),  # each run takes the first N of it
        arrivals=Arrivals(rate=args.rate, cv=args.cv, concurrency=args.concurrency),
        seed=args.seed,
        vocab=args.vocab,
        word=args.word,
    )
    if args.dataset is not None:
        dataset = load_dataset(args.dataset, args.url, args.num_requests, args.seed, info)
        spec = dataclasses.replace(spec, dataset=dataset)
    base_model = ""
    if args.api == "openai":
        base_model = args.base_model if args.base_model is not None else served_base_model(args.url, info)
    api = make_api(args.api, base_model)
    runs = sweep(
        args.url,
        spec,
        pool,
        counts,
        include_base=not args.no_base,
        slo=Slo(args.slo_ttft, args.slo_tpot, args.slo_e2e),
        progress=not args.no_progress,
        warm=not args.no_warmup,
        timeout=args.timeout,
        api=api,
    )
    report = {
        "benchmark": "serving",
        "environment": environment(info.get("device", "unknown")),
        "model": info.get("model_id", ""),
        "server": info,
        "workload": spec.describe(),
        "api": {"name": api.name, "route": api.route, **({"base_model": base_model} if base_model else {})},
        "runs": runs,
    }
    if args.out:
        write_report(args.out, report)
    if args.plot_prefix:
        from .plots import plot_all  # matplotlib is only needed here (the `bench` extra)

        plot_all(report, args.plot_prefix)
    return report


def main(argv: list[str] | None = None) -> None:
    """Entry point of `loraplex bench` / `python -m loraplex.loadgen`."""
    parser = argparse.ArgumentParser(
        prog="loraplex bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        report = run_from_args(args)
    except (ValueError, RuntimeError) as error:
        print(f"loraplex bench: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(summary_table(report["runs"]))


if __name__ == "__main__":
    main()
