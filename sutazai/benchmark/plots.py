"""Pictures of a benchmark for MLflow: latency CDFs, throughput versus concurrency, and the
Pareto front of a selection. matplotlib with the Agg backend: no display needed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sutazai.benchmark.capacity import CapacityCurve
    from sutazai.benchmark.loadgen import LoadResult
    from sutazai.benchmark.metrics import SLO


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_cdf(steps: Sequence[LoadResult], title: str, path: Path) -> Path:
    """Empirical CDFs of TTFT and end-to-end latency, one line per concurrency level."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for step in steps:
        ok = [r for r in step.records if r.success]
        for axis, values in ((axes[0], [r.ttft for r in ok]), (axes[1], [r.latency for r in ok])):
            data = sorted(v * 1000 for v in values if v is not None)
            if data:
                axis.step(data, [(i + 1) / len(data) for i in range(len(data))], where="post",
                          label=f"concurrency {step.concurrency}")
    for axis, name in ((axes[0], "time to first token (ms)"), (axes[1], "end-to-end (ms)")):
        axis.set_xlabel(name)
        axis.set_ylabel("fraction of requests")
        axis.axhline(0.95, color="grey", linewidth=0.5, linestyle="--")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def throughput_vs_concurrency(steps: Sequence[LoadResult], title: str, path: Path) -> Path:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    levels = [s.concurrency for s in steps]
    axis.plot(levels, [s.metrics.output_throughput for s in steps], marker="o",
              label="output tokens/s")
    axis.set_xlabel("concurrent requests")
    axis.set_ylabel("output tokens per second")
    twin = axis.twinx()
    twin.plot(levels, [s.metrics.ttft.p95_ms or 0 for s in steps], marker="s", color="tab:red",
              label="P95 TTFT (ms)")
    twin.set_ylabel("P95 TTFT (ms)")
    axis.grid(alpha=0.3)
    figure.legend(loc="upper left", fontsize=8)
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def pareto_front(points: Sequence[tuple[str, float, float, bool, bool]], x_label: str,
                 y_label: str, title: str, path: Path) -> Path:
    """Candidates as (label, x, y, on_front, feasible); the winner is labelled first."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 5))
    for index, (label, x, y, front, feasible) in enumerate(points):
        marker = "*" if index == 0 else ("o" if front else "x")
        color = "tab:green" if index == 0 else ("tab:blue" if feasible else "tab:grey")
        axis.scatter([x], [y], marker=marker, s=160 if index == 0 else 60, color=color)
        axis.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    axis.set_xlabel(x_label)
    axis.set_ylabel(y_label)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def goodput_curve(curve: CapacityCurve, slo: SLO, title: str, path: Path) -> Path:
    """Offered rate against served rate and requests within the SLOs, with P95 TTFT and
    its limit on a second axis; the sustainable rate marked."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    steps = sorted(curve.steps, key=lambda s: s.rate)
    rates = [s.rate for s in steps]
    axis.plot(rates, [s.throughput_rps for s in steps], marker="o", label="served req/s")
    axis.plot(rates, [s.rate * s.good_ratio for s in steps], marker="^",
              label="goodput req/s (within SLOs)")
    axis.plot(rates, rates, color="grey", linewidth=0.5, linestyle=":", label="offered")
    if curve.max_rate_rps:
        axis.axvline(curve.max_rate_rps, color="tab:green", linestyle="--",
                     label=f"sustainable {curve.max_rate_rps:.2f} req/s")
    axis.set_xlabel("offered requests per second (Poisson)")
    axis.set_ylabel("requests per second")
    twin = axis.twinx()
    twin.plot(rates, [s.ttft_p95_ms or 0 for s in steps], marker="s", color="tab:red",
              label="P95 TTFT (ms)")
    if slo.ttft_p95_ms is not None:
        twin.axhline(slo.ttft_p95_ms, color="tab:red", linewidth=0.7, linestyle="--")
    twin.set_ylabel("P95 TTFT (ms)")
    axis.grid(alpha=0.3)
    figure.legend(loc="upper left", fontsize=7)
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
