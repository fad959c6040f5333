"""PNG plots of a report (matplotlib, Agg backend): against the number of adapters, and latency CDFs.

Runs are grouped by their "system" (a line each); "adapters" is the x value; a system whose runs all
have 0 adapters (the base model alone) is drawn as a horizontal reference line.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
from matplotlib import ticker  # noqa: E402

_MARKERS = "osD^vP*X"
_REFERENCE_STYLES = ("--", ":", "-.")


def _by_system(report: dict) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for run in report["runs"]:
        if run.get("adapters") is not None:
            groups[run["system"]].append(run)
    return {name: sorted(runs, key=lambda r: r["adapters"]) for name, runs in groups.items()}


def _title(report: dict, what: str) -> str:
    env = report.get("environment", {})
    return f"{what}\n{report.get('model', '')}\n{env.get('device', '')} · commit {env.get('commit', '')}"


def _against_adapters(report: dict, path: Path, value, ylabel: str, what: str) -> Path:
    figure, axes = plt.subplots(figsize=(7, 4.5))
    references = 0
    for i, (system, runs) in enumerate(_by_system(report).items()):
        xs = [r["adapters"] for r in runs]
        ys = [value(r) for r in runs]
        if all(x == 0 for x in xs):
            style = _REFERENCE_STYLES[references % len(_REFERENCE_STYLES)]
            axes.axhline(ys[0], linestyle=style, color=f"C{i}", label=f"{system} (no adapters)")
            references += 1
            continue
        xs, ys = zip(*[(x, y) for x, y in zip(xs, ys, strict=True) if x > 0], strict=True)
        axes.plot(xs, ys, marker=_MARKERS[i % len(_MARKERS)], color=f"C{i}", label=system)
    axes.set_xscale("log", base=2)
    axes.set_xlabel("adapters in the workload")
    axes.set_ylabel(ylabel)
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    axes.legend()
    axes.set_title(_title(report, what), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_throughput(report: dict, path: Path) -> Path:
    """Generated tokens/s against the number of adapters, one line per system."""
    return _against_adapters(
        report,
        path,
        lambda r: r["summary"]["output_tokens_per_s"],
        "generated tokens / s",
        "Throughput against the number of adapters",
    )


def plot_latency(report: dict, path: Path) -> Path:
    """p99 end-to-end latency (seconds) against the number of adapters, one line per system."""
    return _against_adapters(
        report,
        path,
        lambda r: r["summary"]["e2e_s"]["p99"],
        "p99 end-to-end latency (s)",
        "p99 latency against the number of adapters",
    )


def plot_cdfs(report: dict, path: Path) -> Path:
    """CDFs of TTFT, inter-token latency and end-to-end latency, one line per run."""
    metrics = (
        ("ttft_s", "time to first token (s)"),
        ("itl_s", "inter-token latency (s)"),
        ("e2e_s", "end-to-end (s)"),
    )
    figure, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    levels = [q / 100 for q in range(101)]
    for run in report["runs"]:
        for ax, (key, _) in zip(axes, metrics, strict=True):
            values = run.get("cdf", {}).get(key) or []
            if values:
                ax.plot(values, levels[: len(values)], label=run["name"])
    for ax, (_, label) in zip(axes, metrics, strict=True):
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel(label + ", log scale")
        ax.set_ylabel("share of requests" if label.startswith(("time", "end")) else "share of tokens")
        ax.set_ylim(0, 1)
        ax.grid(True, alpha=0.3)
    axes[-1].legend(fontsize=7)
    figure.suptitle(_title(report, "Latency CDFs"), fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_all(report: dict, prefix: Path) -> list[Path]:
    """<prefix>_throughput.png, <prefix>_latency.png and <prefix>_cdf.png; the first two only when
    some run has an adapter count."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    if _by_system(report):
        paths.append(plot_throughput(report, prefix.with_name(prefix.name + "_throughput.png")))
        paths.append(plot_latency(report, prefix.with_name(prefix.name + "_latency.png")))
    paths.append(plot_cdfs(report, prefix.with_name(prefix.name + "_cdf.png")))
    return paths
