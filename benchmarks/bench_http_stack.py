"""The HTTP side's CPU time per streamed token, for each event loop and HTTP/1.1 implementation.

    python -m benchmarks.bench_http_stack                    # llama-58m, 3 rounds of each stack
    python -m benchmarks.bench_http_stack --workload tiny    # a tiny model at a GPU-like token rate
    python -m benchmarks.bench_http_stack --rounds 1 --requests 32 --out /tmp/http_stack.json

`loraplex serve` runs uvicorn with uvloop and httptools where they are installed, else with asyncio's
own event loop and h11 (`--loop`, `--http`). This benchmark streams from a server to concurrent
clients (LoRAX `/generate_stream`, 16 prompt tokens each, the load generator's closed loop) and reads
from /proc how much CPU time the server's main thread, where uvicorn's event loop runs, and its other
threads (the engine; threads that end during the run take their time with them) spend per streamed
token over the timed run. The two stacks alternate, one fresh server per round, `--rounds` times;
each keeps its medians. Two workloads (float32 on CPU, one torch thread):

- `cpu`: the CPU serving configuration's llama-58m, 32 streams of 32 new tokens, a few hundred
  tokens/s, which the load generator reads as they come.
- `tiny`: tiny Llama shapes (hidden 64, two layers), 64 streams of 64 new tokens, about two thousand
  tokens/s, the rate of a GPU server, at which a load generator sharing two cores with the server
  reads tokens in bursts: its ITL and tokens/s measure the client as much as the server.

What to read: the event loop's CPU time per token. On a GPU that time is taken from the engine thread,
which needs the GIL to launch the next step; here, on CPU, the engine thread is the bottleneck and
throughput is shown for completeness. Linux only (/proc).

Results: benchmarks/results/http_stack_<workload>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
from pathlib import Path

import torch

from benchmarks.bench_serving import prepare_model
from benchmarks.bench_serving_configs import CONFIGS, TINY_GPU, BenchConfig
from benchmarks.bench_serving_runs import serve_args
from loraplex.loadgen.arrivals import Arrivals
from loraplex.loadgen.lengths import LengthDist
from loraplex.loadgen.report import environment, write_report
from loraplex.loadgen.runner import server_info
from loraplex.loadgen.server import local_server_process
from loraplex.loadgen.sweep import measure
from loraplex.loadgen.workload import WorkloadSpec

RESULTS = Path(__file__).parent / "results"
# (--loop, --http): the pure-Python pair first, the peer the C pair is compared with
STACKS = (("asyncio", "h11"), ("uvloop", "httptools"))
PROMPT_TOKENS = 16


@dataclasses.dataclass(frozen=True)
class Workload:
    config: BenchConfig
    concurrency: int
    new_tokens: int
    requests: int


WORKLOADS = {
    "cpu": Workload(CONFIGS["cpu"], concurrency=32, new_tokens=32, requests=128),
    "tiny": Workload(TINY_GPU, concurrency=64, new_tokens=64, requests=384),
}
_SCHEDSTAT = Path("/proc/self/schedstat").exists()
MEASURED = (
    "output_tokens_per_s",
    "itl_p50_ms",
    "event_loop_cpu_us_per_token",
    "other_threads_cpu_us_per_token",
)


def _task_cpu_seconds(task: Path) -> float:
    """One thread's CPU seconds: its schedstat (nanoseconds on the CPU) where the kernel keeps one,
    else its stat (user + system, in clock ticks of 10 ms)."""
    if _SCHEDSTAT:
        return int((task / "schedstat").read_text().split()[0]) / 1e9
    stat = (task / "stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after the name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def thread_cpu_seconds(pid: int) -> tuple[float, float]:
    """(main thread, all other threads) CPU seconds of process `pid` so far."""
    main = others = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            seconds = _task_cpu_seconds(Path(f"/proc/{pid}/task/{tid}"))
        except (FileNotFoundError, ProcessLookupError):  # the thread ended
            continue
        if int(tid) == pid:
            main += seconds
        else:
            others += seconds
    return main, others


def one_round(loop: str, http: str, args: list[str], spec: WorkloadSpec, log: Path) -> dict:
    """One fresh server with this stack: a warm-up, then the timed run and its CPU time per token."""
    flags = ["--loop", loop, "--http", http]
    env = {"OMP_NUM_THREADS": "1"}
    with local_server_process([*args, *flags], log, timeout=600, env=env) as (url, process):
        info = server_info(url)
        warm_up = dataclasses.replace(spec, num_requests=spec.arrivals.concurrency)
        measure(url, warm_up, "warm-up", progress=False)
        main_before, others_before = thread_cpu_seconds(process.pid)
        run = measure(url, spec, f"{loop} + {http}", progress=False, warm=False)
        main_after, others_after = thread_cpu_seconds(process.pid)
    summary = run["summary"]
    tokens = summary["generated_tokens"]
    return {
        "served_with": [info["event_loop"], info["http_protocol"]],
        "output_tokens_per_s": summary["output_tokens_per_s"],
        "itl_p50_ms": summary["itl_s"]["p50"] * 1e3,
        "failed": summary["failed"],
        "generated_tokens": tokens,
        "event_loop_cpu_us_per_token": (main_after - main_before) / tokens * 1e6,
        "other_threads_cpu_us_per_token": (others_after - others_before) / tokens * 1e6,
    }


def measure_stacks(rounds: int, name: str, workload: Workload) -> dict:
    """Every stack `rounds` times, alternating -> the report (runs, medians, event-loop CPU ratio)."""
    config, concurrency = workload.config, workload.concurrency
    new_tokens, requests = workload.new_tokens, workload.requests
    torch.set_num_threads(1)
    model_dir, root, _, shape = prepare_model(config)
    args = [*serve_args(config, model_dir, root), "--max-batch-size", str(concurrency)]
    spec = WorkloadSpec(
        num_requests=requests,
        prompt_len=LengthDist.parse(str(PROMPT_TOKENS)),
        output_len=LengthDist.parse(str(new_tokens)),
        popularity="base",
        arrivals=Arrivals(concurrency=concurrency),
        seed=0,
        vocab=(3, shape["vocab_size"]),
    )
    log = Path(tempfile.gettempdir()) / "loraplex-bench-http-stack.log"
    runs: dict[str, list[dict]] = {f"{loop} + {http}": [] for loop, http in STACKS}
    for index in range(rounds):
        for loop, http in STACKS if index % 2 == 0 else reversed(STACKS):
            result = one_round(loop, http, args, spec, log)
            runs[f"{loop} + {http}"].append(result)
            print(
                f"round {index + 1}: {loop} + {http}: {result['output_tokens_per_s']:.0f} tokens/s, "
                f"event loop {result['event_loop_cpu_us_per_token']:.0f} us/token",
                flush=True,
            )
    medians = {
        name: {key: statistics.median(r[key] for r in results) for key in MEASURED}
        for name, results in runs.items()
    }
    plain, fast = (medians[f"{loop} + {http}"] for loop, http in STACKS)
    return {
        "benchmark": "http_stack",
        "environment": environment("cpu") | {"torch_threads": 1},
        "model": config.model,
        "workload": {
            "name": name,
            "requests": requests,
            "concurrency": concurrency,
            "prompt_tokens": PROMPT_TOKENS,
            "new_tokens": new_tokens,
            "route": "/generate_stream",
            "rounds": rounds,
        },
        "runs": runs,
        "medians": medians,
        "event_loop_cpu_ratio": fast["event_loop_cpu_us_per_token"] / plain["event_loop_cpu_us_per_token"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=None, help="timed requests per round")
    parser.add_argument("--out", type=Path, default=None, help="default: results/http_stack_<workload>.json")
    args = parser.parse_args()
    workload = WORKLOADS[args.workload]
    if args.requests:
        workload = dataclasses.replace(workload, requests=args.requests)
    report = measure_stacks(args.rounds, args.workload, workload)
    print(
        f"event loop CPU per token, uvloop + httptools / asyncio + h11: {report['event_loop_cpu_ratio']:.2f}"
    )
    print(write_report(args.out or RESULTS / f"http_stack_{args.workload}.json", report))


if __name__ == "__main__":
    main()
