"""loraplex.loadgen: a load generator for multi-LoRA servers, and the numbers it reports.

workload:  WorkloadSpec -> build_workload -> [RequestSpec]   (popularity, arrivals, lengths)
dataset:   load_dataset(path, url, ...) -> Dataset          (prompts from a file, counted by the server)
runner:    run(url, requests, arrivals) -> RunOutcome        (streams, timestamps every token)
apis:      LORAX (/generate_stream), OpenAIApi (/v1/completions): bodies and stream events
stats:     summarize(results, slo) -> throughput, TTFT, ITL, TPOT, e2e percentiles, SLO attainment, goodput
report:    run_record / write_report (JSON with environment), plots: plot_all (PNG)
cli:       `loraplex bench` (main, add_arguments)
"""

from .apis import LORAX, OpenAIApi, make_api
from .arrivals import Arrivals, gamma_arrival_times, gamma_intervals
from .dataset import Dataset, DatasetPrompt, load_dataset, read_entries
from .lengths import LengthDist
from .popularity import REGIMES, assign_indices, power_law_probabilities, zipf_probabilities
from .report import environment, run_record, write_report
from .runner import RunOutcome, run, run_async, warm_up
from .stats import RequestResult, Slo, percentile, slo_attainment, summarize
from .sweep import measure, sweep
from .workload import RequestSpec, WorkloadSpec, build_workload

__all__ = [
    "LORAX",
    "REGIMES",
    "Arrivals",
    "Dataset",
    "DatasetPrompt",
    "LengthDist",
    "OpenAIApi",
    "RequestResult",
    "RequestSpec",
    "RunOutcome",
    "Slo",
    "WorkloadSpec",
    "assign_indices",
    "build_workload",
    "environment",
    "gamma_arrival_times",
    "gamma_intervals",
    "load_dataset",
    "make_api",
    "measure",
    "percentile",
    "power_law_probabilities",
    "read_entries",
    "run",
    "run_async",
    "run_record",
    "slo_attainment",
    "summarize",
    "sweep",
    "warm_up",
    "write_report",
    "zipf_probabilities",
]
