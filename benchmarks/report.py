"""Markdown tables for the README from the committed results in `benchmarks/results/`.

    python -m benchmarks.report                 # print the tables
    python -m benchmarks.report --write-readme  # replace the README's results block with them

The README's block sits between `<!-- results:begin -->` and `<!-- results:end -->`; a test checks it
equals what this module renders, so the README never shows a number the results do not hold.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from benchmarks.bench_serving_configs import CONFIGS

RESULTS = Path(__file__).parent / "results"
README = Path(__file__).parents[1] / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def _provenance(report: dict[str, Any], command: str) -> str:
    env = report["environment"]
    threads = env.get("torch_threads")
    plural = "s" if threads != 1 else ""
    device = env["device"] + (
        f", {threads} torch thread{plural}" if threads and "CPU" in env["device"] else ""
    )
    return (
        f"{env['machine']}; {device}; torch {env['torch']}; {env['date']}; commit `{env['commit']}`. "
        f"Reproduce: `{command}`."
    )


def _serving_command(report: dict[str, Any]) -> str:
    """The command that reproduces a serving run, with the options it ran under where they differ
    from its configuration's (results written before they were recorded name the configuration only)."""
    command = f"python -m benchmarks.bench_serving --config {report['config']}"
    options, config = report.get("options"), CONFIGS.get(report["config"])
    if options is None or config is None:
        return command
    if options["budget_s"] != config.budget_s:
        command += f" --budget {options['budget_s']:g}"
    if options["threads"] != config.threads:
        command += f" --threads {options['threads']}"
    extra = options["server_args"][len(config.server_args) :]
    return command + "".join(f" --server-arg={arg}" for arg in extra)


def _runs(entry: dict[str, Any]) -> str:
    runs = len(entry.get("all_seconds", [0]))
    return f" (median of {runs} runs)" if runs > 1 else ""


def _goal(met: bool) -> str:
    return "met" if met else "**not met**"


def engine_section(report: dict[str, Any]) -> list[str]:
    workload, results = report["workload"], report["results"]
    engine_tps = results["engine"]["tokens_per_second"]
    lines = [
        "### Engine against `transformers` generate (no adapters)",
        "",
        f"{workload['model']}, {workload['dtype']}, {workload['requests']} requests, prompts "
        f"{workload['prompt_len_range'][0]}-{workload['prompt_len_range'][1]} tokens, outputs "
        f"{workload['output_len_range'][0]}-{workload['output_len_range'][1]} tokens (seed "
        f"{workload['seed']}), greedy. Generated tokens per second of wall time:",
        "",
        "| system | tokens/s | loraplex is |",
        "|---|---:|---:|",
        f"| loraplex, continuous batching{_runs(results['engine'])} | {engine_tps:.0f} | |",
    ]
    for name, entry in results.items():
        if name == "engine":
            continue
        lines.append(
            f"| transformers, static batches of {entry['batch_size']}{_runs(entry)} "
            f"| {entry['tokens_per_second']:.0f} | {report['speedup_vs'][name]:.2f}x faster |"
        )
    best = report["speedup_vs_best_transformers"]
    lines += [
        "",
        f"Against the fastest static batch size: {best['ratio']:.2f}x (goal 2x: {_goal(best['ratio'] >= 2)}).",
        "",
        _provenance(report, "python -m benchmarks.bench_engine_vs_transformers"),
    ]
    return lines


def adapters_section(report: dict[str, Any]) -> list[str]:
    workload, stalls = report["workload"], report["stalls"]
    lines = [
        "### Adapters: cold loads, stalls, throughput as adapters multiply",
        "",
        "| rank | adapter bytes | disk to ready (ms) | MB/s |",
        "|---:|---:|---:|---:|",
    ]
    for row in report["cold_load"]:
        lines.append(
            f"| {row['rank']} | {row['bytes'] / 1e6:.1f} MB | {row['seconds'] * 1000:.0f} | {row['MB_per_s']:.0f} |"
        )
    lines += [
        "",
        f"While {stalls['cold_adapters']} cold rank-64 adapters loaded in the background, "
        f"{stalls['resident_requests']} requests for resident adapters ran {stalls['steps_while_loading']} "
        f"step{'' if stalls['steps_while_loading'] == 1 else 's'}: {stalls['stalled_steps']} stalled (goal 0: {_goal(stalls['stalled_steps'] == 0)}); median "
        f"step {stalls['step_ms_p50_while_loading']:.0f} ms while loading, "
        f"{stalls['step_ms_p50_otherwise']:.0f} ms otherwise (a step while loading also copies the adapters "
        "that just finished into their slots and prefills their requests, and shares the cores with the "
        "loader threads).",
        "",
        f"Throughput, {workload['requests']} requests, prompts {workload['prompt_len_range'][0]}-"
        f"{workload['prompt_len_range'][1]}, outputs {workload['output_len_range'][0]}-"
        f"{workload['output_len_range'][1]}, rank-{workload['rank']} adapters on {workload['targets']}, "
        "assigned round robin (with 64, every request in the batch has its own):",
        "",
        "| adapters | tokens/s | of base model |",
        "|---|---:|---:|",
    ]
    for name, entry in report["throughput"].items():
        label = "none (base model)" if name == "base" else name.split("_")[0]
        lines.append(f"| {label} | {entry['tokens_per_second']:.0f} | {entry['relative_to_base']:.0%} |")
    lines += ["", _provenance(report, "python -m benchmarks.bench_adapters")]
    return lines


def serving_section(report: dict[str, Any]) -> list[str]:
    workload, comparisons = report["workload"], report["comparisons"]
    arrivals = workload["arrivals"]
    lines = [
        f"### Serving over HTTP against `peft` mixed-adapter batching ({report['config'].upper()})",
        "",
        f"{report['model']}, {report['dtype']}; {workload['num_requests']} requests per run, prompts "
        f"{workload['prompt_len']} tokens, outputs {workload['output_len']}, "
        f"{arrivals['mode'].replace('_', ' ')} with {arrivals['concurrency']} in flight, through the HTTP "
        f"server and `loraplex bench`; rank-{workload['rank']} adapters on {workload['targets']}. `peft` "
        f"runs in-process (no HTTP), static batches of {workload['peft_batch_size']} with each row's "
        "adapter (`adapter_names=`).",
        "",
        "| system | adapters | output tokens/s | TTFT p50 (s) | ITL p50 (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for run in report["runs"]:
        summary = run["summary"]
        ttft = f"{summary['ttft_s']['p50']:.2f}" if run["system"] == "loraplex" else ""
        itl = f"{summary['itl_s']['p50'] * 1000:.0f}" if run["system"] == "loraplex" else ""
        adapters = "none" if run["adapters"] in (0, "base") else run["adapters"]
        lines.append(
            f"| {run['system']} | {adapters} | {summary['output_tokens_per_s']:.0f} | {ttft} | {itl} |"
        )
    lines.append("")
    skipped = {(s["system"], s["adapters"]): s["reason"] for s in report.get("skipped", [])}
    for name, goal in comparisons.get("goals", {}).items():
        if goal["value"] is None:
            lines.append(f"- {name}: not measured in this run (goal {goal['target']})")
        else:
            lines.append(f"- {name}: {goal['value']:.2f} (goal {goal['target']}: {_goal(goal['met'])})")
    for (system, adapters), reason in skipped.items():
        lines.append(f"- {system} with {adapters} adapters skipped: {reason}")
    overhead = comparisons.get("lora_overhead_vs_base", {})
    if overhead:
        lines.append(
            "- LoRA cost against the base model: "
            + ", ".join(f"{n} adapters {value:.0%}" for n, value in overhead.items())
        )
    floor = comparisons.get("fraction_of_byte_floor_step", {})
    if floor and report["config"] != "cpu":
        lines.append(
            "- decode step (ITL p50) against its byte floor at the measured copy bandwidth "
            f"({report['copy_bandwidth_GBps']:.0f} GB/s): "
            + ", ".join(f"{'base' if n in (0, '0') else n} {value:.0%}" for n, value in floor.items())
        )
    measured = {str(k) for k, v in comparisons.get("vs_peft", {}).items() if v is not None}
    if comparisons.get("loraplex_base_vs_transformers_base") is not None:
        measured.add("base")
    reference = {k: v for k, v in comparisons.get("vs_peft_h200_reference", {}).items() if k not in measured}
    if any(value is not None for value in reference.values()):
        lines.append(
            "- against transformers + peft as measured on an H200 with these shapes (batch 64, prompt 128, "
            "32 new tokens; not run here): "
            + ", ".join(
                f"{'base model' if key == 'base' else key + ' adapters'} {value:.1f}x"
                for key, value in reference.items()
                if value is not None
            )
        )
    lines += ["", _provenance(report, _serving_command(report))]
    plots = [
        (kind, f"serving_{report['config']}_{kind}.png")
        for kind in ("throughput", "latency", "cdf")
        if (RESULTS / f"serving_{report['config']}_{kind}.png").exists()
    ]
    if plots:
        lines += ["", " ".join(f"![{kind}](benchmarks/results/{name})" for kind, name in plots)]
    return lines


def kernels_section(report: dict[str, Any]) -> list[str]:
    meta = report["meta"]
    lines = [
        f"### Segmented LoRA kernels ({meta['device_name']})",
        "",
        f"Llama-3-8B projections, {meta['dtype']}, rank 16, 64 decode tokens; each method captured in a "
        "CUDA graph and timed by CUDA events (median of replays), weights cycled so they come from HBM. "
        "GB/s counts x, y and the weights of the distinct adapters the step touches; bandwidth fraction is "
        f"that over the device-to-device copy bandwidth measured in the run ({report['copy_bandwidth_gbs']:.0f} "
        "GB/s). The peers run in the same process on the same data: gather-then-bmm (each token's A and B "
        "gathered, then two batched matmuls) and a loop of cuBLAS matmuls per distinct adapter.",
        "",
        "| projection | adapters | loraplex (us) | GB/s | of copy bandwidth | vs gather-bmm | vs cuBLAS loop |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["results"]:
        if row["rank"] != 16 or row["batch"] != 64:
            continue
        lines.append(
            f"| {row['projection']} | {row['regime']} ({row['distinct_adapters']}) | {row['loraplex_us']:.1f} | "
            f"{row['gbs']:.0f} | {row['bw_fraction']:.0%} | {row['speedup_vs_gather_bmm']:.2f}x | "
            f"{row['speedup_vs_loop_cublas']:.2f}x |"
        )
    lines.append("")
    for name, goal in report["goals"].items():
        lines.append(f"- {name}: worst case {goal['worst']} (goal {goal['goal']}: {_goal(goal['met'])})")
    lines += [
        "",
        f"{meta['device_name']}, CUDA {meta['cuda']}; torch {meta['torch']}, triton {meta['triton']}; "
        f"{meta['date'][:16].replace('T', ' ')} UTC; commit `{meta['git_commit'][:7]}`. "
        "Reproduce: `python benchmarks/bench_lora_kernels.py`.",
    ]
    return lines


def _config(text: str) -> str:
    """ "ShrinkConfig(block_m=16, block_n=16, block_k=64, split_k=4, ...)" -> "k64 split4 w4"."""
    fields = dict(re.findall(r"(\w+)=(\d+)", text))
    if "split_k" in fields:
        return f"k{fields['block_k']} split{fields['split_k']} w{fields['num_warps']}"
    return f"n{fields['block_n']} k{fields['block_k']} w{fields['num_warps']}"


def blocks_section(report: dict[str, Any]) -> list[str]:
    meta = report["meta"]
    lines = [
        f"### LoRA kernel block sweep ({meta['device_name']})",
        "",
        "Decode-like steps at rank 16, bfloat16: shrink and expand timed apart for each block config, "
        "as the kernel benchmark times them. The default column is the config the kernels picked when "
        "the sweep ran. The decode rules of `kernels/lora_tuning.py` were set from this table; with 64 "
        "distinct adapters they pick, for each row, its fastest config or one within 8% of it.",
        "",
        "| projection | tokens (adapters) | base matmul (us) | shrink: default -> fastest swept (us) | "
        "expand: default -> fastest swept (us) |",
        "|---|---|---:|---|---|",
    ]
    for case in report["cases"]:
        shrink, expand = case["shrink_best"][0], case["expand_best"][0]
        lines.append(
            f"| {case['projection']} | {case['tokens']} ({case['distinct_adapters']:g}) | "
            f"{case['base_matmul_us']:.1f} | {case['shrink_default'][0]:.1f} -> {shrink[0]:.1f} "
            f"({_config(shrink[1])}) | {case['expand_default'][0]:.1f} -> {expand[0]:.1f} ({_config(expand[1])}) |"
        )
    lines += [
        "",
        f"{meta['device_name']}; torch {meta['torch']}, triton {meta['triton']}; "
        f"{meta['date'][:16].replace('T', ' ')} UTC; commit `{meta['git_commit'][:7]}`. "
        "Reproduce: `python benchmarks/sweep_lora_blocks.py`.",
    ]
    return lines


def decode_step_section(report: dict[str, Any]) -> list[str]:
    lines = [
        f"### Decode steps in-process, without HTTP ({report['config'].upper()})",
        "",
        f"{report['model']}, {report['dtype']}; {report['batch']} requests decoding together (prompts "
        f"{report['prompt_tokens']} tokens), the engine built as `loraplex serve` builds it and stepped "
        f"on the benchmark's own thread; median step over {report['passes']} passes of every adapter "
        "count. The runner's share is the forward and sampling; the rest is scheduling and "
        "bookkeeping (no HTTP here: outputs go nowhere).",
        "",
        "| adapters | step (ms) | runner (ms) | rest (ms) | LoRA cost (ms) | of byte floor |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for count, step in report["steps"].items():
        cost = "" if step["lora_cost_ms"] is None else f"{step['lora_cost_ms']:.1f}"
        lines.append(
            f"| {'none' if count == '0' else count} | {step['step_ms']:.1f} | {step['runner_ms']:.1f} | "
            f"{step['rest_ms']:.2f} | {cost} | {step['fraction_of_floor']:.0%} |"
        )
    command = (
        f"python -m benchmarks.bench_decode_step --config {report['config']} --passes {report['passes']}"
    )
    return [*lines, "", _provenance(report, command)]


def http_stack_section(report: dict[str, Any]) -> list[str]:
    work = report["workload"]
    lines = [
        f"### The event loop's CPU time per streamed token (CPU, {work.get('name', 'cpu')} workload)",
        "",
        f"{report['model']}; {work['requests']} streaming requests ({work['route']}, "
        f"{work['prompt_tokens']} prompt and {work['new_tokens']} new tokens), {work['concurrency']} at "
        f"a time; the median of {work['rounds']} rounds per stack, each a fresh server, the stacks "
        "alternating. CPU time from /proc: the server's main thread runs uvicorn's event loop, its "
        "other threads are mostly the engine's. On a GPU the event loop's time is taken from the "
        "engine thread through the GIL; here the engine thread is the bottleneck."
        + (
            " At this rate the load generator, on the same two cores, reads tokens in bursts: its "
            "ITL and tokens/s measure the client as much as the server."
            if work.get("name") == "tiny"
            else ""
        ),
        "",
        "| event loop + HTTP | event loop CPU (µs/token) | other threads (µs/token) | tokens/s | ITL p50 (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, median in report["medians"].items():
        label = f"{name} (default)" if name == "uvloop + httptools" else name  # `serve`'s where installed
        lines.append(
            f"| {label} | {median['event_loop_cpu_us_per_token']:.0f} | "
            f"{median['other_threads_cpu_us_per_token']:.0f} | {median['output_tokens_per_s']:.0f} | "
            f"{median['itl_p50_ms']:.1f} |"
        )
    lines += [
        "",
        f"uvloop + httptools: {report['event_loop_cpu_ratio']:.2f}x the event loop's CPU time per token "
        "of asyncio + h11.",
    ]
    command = (
        f"python -m benchmarks.bench_http_stack --workload {work.get('name', 'cpu')} "
        f"--rounds {work['rounds']} --requests {work['requests']}"
    )
    return [*lines, "", _provenance(report, command)]


def render() -> str:
    sections = [
        ("engine_vs_transformers_cpu.json", engine_section),
        ("adapters_cpu.json", adapters_section),
        ("serving_cpu.json", serving_section),
        ("decode_step_cpu.json", decode_step_section),
        ("http_stack_cpu.json", http_stack_section),
        ("http_stack_tiny.json", http_stack_section),
        ("adapters_cuda.json", adapters_section),
        ("serving_gpu.json", serving_section),
        ("decode_step_gpu.json", decode_step_section),
        *(
            (path.name, kernels_section)
            for path in sorted(RESULTS.glob("lora_kernels_*.json"))
            if not path.stem.endswith("-smoke")
        ),
        *(
            (path.name, blocks_section)
            for path in sorted(RESULTS.glob("lora_blocks_*.json"))
            if not path.stem.endswith("-smoke")
        ),
    ]
    lines: list[str] = []
    for name, section in sections:
        report = _load(name)
        if report is not None:
            lines += [*section(report), ""]
    return "\n".join(lines).rstrip() + "\n"


def readme_block(text: str) -> str:
    match = re.search(re.escape(BEGIN) + r"\n(.*?)" + re.escape(END), text, re.DOTALL)
    if match is None:
        raise ValueError(f"README has no {BEGIN} ... {END} block")
    return match.group(1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    tables = render()
    if not args.write_readme:
        print(tables, end="")
        return
    text = README.read_text()
    README.write_text(text.replace(BEGIN + "\n" + readme_block(text) + END, BEGIN + "\n" + tables + END))


if __name__ == "__main__":
    main()
