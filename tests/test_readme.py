"""The README states only what was measured: its results tables and demo rates match the committed files."""

import json
from pathlib import Path

from benchmarks import report

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_results_block_is_rendered_from_committed_results():
    assert report.readme_block(README) == report.render()


def test_results_block_covers_every_cpu_benchmark():
    block = report.readme_block(README)
    for heading in ("Engine against `transformers`", "Adapters: cold loads", "Serving over HTTP"):
        assert heading in block


def test_demo_rates_are_the_evaluated_ones():
    rates = json.loads((ROOT / "demo/assets/evaluation.json").read_text())["exact_match"]
    text = " ".join(README.split())  # independent of where the paragraph wraps
    assert f"base model (echo) {rates['base']:.0%}" in text
    for adapter in ("upper", "reverse", "rot13"):
        assert f"`{adapter}` {rates[adapter]:.1%}" in text


def test_the_issues_peft_reference_is_quoted_only_for_peers_the_run_did_not_measure():
    def reference_line(name: str) -> str:
        results = json.loads((ROOT / "benchmarks/results" / name).read_text())
        lines = [line for line in report.serving_section(results) if "as measured on an H200" in line]
        return lines[0] if lines else ""

    partial = reference_line("serving_gpu_h100.json")  # ran peft with 1 adapter and the base model only
    assert "8 adapters" in partial and "64 adapters" in partial
    assert "1 adapters" not in partial and "base model" not in partial
    assert reference_line("serving_gpu.json") == ""  # ran every peer itself


def test_a_serving_result_names_the_options_it_ran_under():
    results = json.loads((ROOT / "benchmarks/results/serving_gpu.json").read_text())
    results["options"] = {
        "budget_s": 520.0,
        "threads": 2,
        "server_args": [
            "--max-batch-total-tokens",
            "32768",
            "--adapter-cpu-cache",
            "128",
            "--no-cuda-graphs",
        ],
    }
    line = report.serving_section(results)[-3]
    assert (
        "Reproduce: `python -m benchmarks.bench_serving --config gpu --budget 520 --threads 2 "
        "--server-arg=--no-cuda-graphs`" in line
    )
    results["options"] = {
        "budget_s": 225.0,
        "server_args": results["options"]["server_args"][:4],
        "threads": None,
    }
    assert (
        "Reproduce: `python -m benchmarks.bench_serving --config gpu`." in report.serving_section(results)[-3]
    )
