"""The runner against a real server: every token timestamped, exact lengths, and a complete report."""

import dataclasses
import json

import pytest

from loraplex.loadgen.arrivals import Arrivals
from loraplex.loadgen.cli import main
from loraplex.loadgen.lengths import LengthDist
from loraplex.loadgen.runner import run
from loraplex.loadgen.workload import WorkloadSpec, build_workload


def test_runner_streams_and_times_every_token(server, two_adapter_spec):
    spec = dataclasses.replace(two_adapter_spec, arrivals=Arrivals(rate=50.0, cv=1.0))
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
            "--slo-tpot", "10",
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
    assert report["workload"]["adapter_pool"] == 3
    assert report["server"]["max_active_adapters"] == 4
    names = [r["name"] for r in report["runs"]]
    assert names == ["loraplex 1 adapters", "loraplex 3 adapters", "loraplex base model"]
    assert [r["distinct_adapters"] for r in report["runs"]] == [1, 3, 0]
    for run_ in report["runs"]:
        s = run_["summary"]
        assert s["completed"] == 6 and s["failed"] == 0 and s["length_mismatches"] == 0
        assert s["generated_tokens"] == 18
        assert s["output_tokens_per_s"] > 0 and s["slo"]["attainment"] == pytest.approx(1.0)
        assert s["slo"]["tpot_bound_s"] == 10 and "e2e_bound_s" not in s["slo"]
        assert s["slo"]["goodput_requests_per_s"] == pytest.approx(s["requests_per_s"])
        assert set(s["ttft_s"]) >= {"p50", "p90", "p99", "mean"}
        assert len(run_["cdf"]["ttft_s"]) == 101
    assert sorted(p.name for p in tmp_path.glob("plot_*.png")) == [
        "plot_cdf.png",
        "plot_latency.png",
        "plot_throughput.png",
    ]
    table = capsys.readouterr().out
    assert "loraplex 3 adapters" in table and "in SLO" in table and table.count(" 100%") == 3


def test_measure_warms_up_with_a_wave_of_the_runs_own_requests(server, tiny_adapters, two_adapter_spec):
    """Loads first (one short request per adapter), then the first wave of the run with 2 output
    tokens each (the run's own prompt shapes), then the timed requests."""
    from loraplex.loadgen.sweep import measure

    _, ids = tiny_adapters
    engine = server.engine
    seen: list[tuple[int, str | None, int]] = []
    submit = engine.submit

    def recording_submit(request):
        adapter = request.adapter.adapter_id if request.adapter is not None else None
        seen.append((request.params.max_new_tokens, adapter, len(request.prompt_token_ids)))
        submit(request)

    engine.submit = recording_submit
    try:
        spec = dataclasses.replace(
            two_adapter_spec, prompt_len=LengthDist.parse("8:12"), output_len=LengthDist.parse("5")
        )
        record = measure(server.url, spec, "wave", progress=False)
    finally:
        engine.submit = submit
    assert record["summary"]["completed"] == 6
    loads, wave, timed = seen[:2], seen[2:5], seen[5:]
    assert sorted(a for _, a, _ in loads) == sorted(ids[:2]) and all(n == 2 for n, _, _ in loads)
    assert [n for n, _, _ in wave] == [2, 2, 2]
    # the run's own requests: same adapters and prompts as timed ones (their order may differ)
    assert all(w[1:] in [t[1:] for t in timed] for w in wave)
    assert len({w[1:] for w in wave}) == 3
    assert len(timed) == 6 and all(n == 5 for n, _, _ in timed)
    server.wait_idle()
