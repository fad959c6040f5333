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
