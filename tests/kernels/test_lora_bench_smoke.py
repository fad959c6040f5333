"""The GPU benchmark script still runs: its --smoke mode on CPU, tiny shapes, a few seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_lora_kernels.py"


def run_smoke(script: Path, out: Path) -> dict:
    """Run `script --smoke` on the CPU; its JSON result."""
    proc = subprocess.run(
        [sys.executable, str(script), "--smoke", "--device", "cpu", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_benchmark_smoke(tmp_path: Path) -> None:
    result = run_smoke(SCRIPT, tmp_path / "lora_kernels_smoke.json")
    meta = result["meta"]
    for key in ("date", "git_commit", "machine", "torch", "triton", "device_name", "dtype"):
        assert key in meta
    assert result["copy_bandwidth_gbs"] > 0
    assert set(result["goals"]) == {
        "distinct_b32plus_rank16_bw_fraction",
        "speedup_vs_gather_bmm_distinct_b64",
        "identical_vs_single_adapter_cublas",
        "rank8_in_rank64_pool_vs_rank8_pool",
    }
    rows = result["results"]
    assert {r["regime"] for r in rows} == {"distinct", "uniform", "skewed", "identical"}
    for row in rows:
        for key in ("loraplex_us", "gather_bmm_us", "loop_cublas_us", "bytes", "gbs", "bw_fraction"):
            assert row[key] >= 0, key
        assert row["rel_err_vs_loop"] < 5e-2, row  # loraplex and the cuBLAS loop agree
    assert result["rank_pool"] and all(r["ratio"] > 0 for r in result["rank_pool"])


SWEEP = SCRIPT.parent / "sweep_lora_blocks.py"


def test_block_sweep_smoke(tmp_path: Path) -> None:
    """The block sweep runs and records, per case, the chosen config and the fastest ones, in order."""
    result = run_smoke(SWEEP, tmp_path / "lora_blocks_smoke.json")
    assert {"date", "git_commit", "device_name", "rank"} <= set(result["meta"])
    (case,) = result["cases"]
    assert case["projection"] == "qkv" and case["distinct_adapters"] == 8
    for kernel in ("shrink", "expand"):
        times = [us for us, _ in case[f"{kernel}_best"]]
        assert times == sorted(times) and all(us > 0 for us in times)
        assert case[f"{kernel}_default"][0] > 0 and "Config(" in case[f"{kernel}_default"][1]
    assert len(case["shrink_best"]) == 2  # split 1 and 2
