"""The runner against a real server: every token timestamped, exact lengths, and a complete report."""

import json

import pytest

from loraplex.loadgen.arrivals import Arrivals
from loraplex.loadgen.cli import main
from loraplex.loadgen.lengths import LengthDist
from loraplex.loadgen.runner import run
from loraplex.loadgen.workload import WorkloadSpec, build_workload


def test_runner_streams_and_times_every_token(server, tiny_adapters):
    _, ids = tiny_adapters
    spec = WorkloadSpec(
        num_requests=6,
        prompt_len=LengthDist.parse("3:6"),
        output_len=LengthDist.parse("2:5"),
        popularity="roundrobin",
        adapters=tuple(ids[:2]),
        arrivals=Arrivals(rate=50.0, cv=1.0),
        vocab=(3, 300),
    )
    requests = build_workload(spec)
    outcome = run(server.url, requests, spec.arrivals, progress=False)
    assert [r.index for r in outcome.results] == list(range(6))
    for result, request in zip(outcome.results, requests, strict=True):
        assert result.ok, result.error
        assert len(result.token_times) == request.output_len == result.generated_tokens
        assert result.finish_reason == "length"
        assert result.prompt_tokens >= request.prompt_len
        assert 0 < result.ttft <= result.e2e
        assert result.token_times == sorted(result.token_times)
        assert result.adapter_id == request.adapter_id
    server.wait_idle()


def test_unknown_adapter_is_recorded_not_raised(server):
    spec = WorkloadSpec(2, LengthDist.parse("3"), LengthDist.parse("2"), "identical", adapters=("nope",))
    outcome = run(server.url, build_workload(spec), Arrivals(concurrency=2), progress=False)
    assert all(not r.ok and r.error.startswith("HTTP 4") for r in outcome.results)


def test_cli_writes_a_report_with_workload_environment_and_runs(server, tiny_adapters, tmp_path, capsys):
    _, ids = tiny_adapters
    out = tmp_path / "report.json"
    main(
        [
            "--url", server.url,
            "--adapter-ids", ",".join(ids),
            "--adapter-counts", "1", "3",
            "--popularity", "roundrobin",
            "--num-requests", "6",
            "--prompt-len", "4",
            "--output-len", "3",
            "--concurrency", "3",
            "--vocab", "3:300",
            "--slo-ttft", "5",
            "--out", str(out),
            "--plot-prefix", str(tmp_path / "plot"),
            "--no-progress",
        ]
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert report["benchmark"] == "serving"
    assert {"date", "commit", "machine", "device"} <= set(report["environment"])
    assert report["workload"]["arrivals"] == {"mode": "closed_loop", "concurrency": 3}
    assert report["workload"]["num_requests"] == 6 and report["workload"]["ignore_eos_token"]
    assert report["server"]["max_active_adapters"] == 4
    names = [r["name"] for r in report["runs"]]
    assert names == ["loraplex 1 adapters", "loraplex 3 adapters", "loraplex base model"]
    assert [r["distinct_adapters"] for r in report["runs"]] == [1, 3, 0]
    for run_ in report["runs"]:
        s = run_["summary"]
        assert s["completed"] == 6 and s["failed"] == 0 and s["length_mismatches"] == 0
        assert s["generated_tokens"] == 18
        assert s["output_tokens_per_s"] > 0 and s["slo"]["attainment"] == pytest.approx(1.0)
        assert set(s["ttft_s"]) >= {"p50", "p90", "p99", "mean"}
        assert len(run_["cdf"]["ttft_s"]) == 101
    assert sorted(p.name for p in tmp_path.glob("plot_*.png")) == [
        "plot_cdf.png",
        "plot_latency.png",
        "plot_throughput.png",
    ]
    assert "loraplex 3 adapters" in capsys.readouterr().out
