"""Regression monitoring: does tonight's champion still measure up to the earlier nights?

Each night records the champion's measurements per task as an MLflow run
(``sutazai.step = monitor``) in the learning experiment, so MLflow's charts show the trend.

Two rules decide, and each regression says which (``Regression.rule``):

- ``bootstrap``, for the per-request latencies (TTFT P95, mean TPOT, end-to-end P95), when
  tonight's champion benchmark run and earlier nights' runs still hold their per-request
  records (``requests.jsonl``): a regression is flagged only when the whole 95 % bootstrap
  interval of the change lies beyond a small practical effect
  (:mod:`sutazai.benchmark.compare` says why, and why 3 %). A single number per night
  cannot tell a noisy night from a slower engine; the requests can.
- ``median``, for run-level figures (throughput, quality, memory) and whenever the samples
  are missing (an old run, a quality-only task): tonight's value against the median of the
  last nights, flagged when worse by more than ``regression_tolerance`` (relative). A
  median, not the last night, so that one noisy night neither raises nor hides an alarm.

The monitor run keeps the benchmark run it judged (tag ``sutazai.benchmark_run``), so the
next nights find the samples again: one search and one download per distinct benchmark
run, at most :data:`HISTORY_NIGHTS` + 1.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from sutazai.benchmark.compare import Comparison, Samples, compare_samples, figures, samples_of
from sutazai.benchmark.metrics import RequestRecord
from sutazai.config import Settings
from sutazai.registry import open_registry

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

# metric -> True when higher is better
WATCHED = {"ttft_p95_ms": False, "e2el_p95_ms": False, "tpot_mean_ms": False,
           "output_throughput": True, "quality": True, "memory_mib": False}
HISTORY_NIGHTS = 7
REQUESTS = "requests.jsonl"  # the benchmark runner's per-request records
BENCHMARK_RUN_TAG = "sutazai.benchmark_run"
CONCURRENCY_TAG = "sutazai.concurrency"


class Regression(BaseModel):
    task: str
    champion: str
    metric: str
    value: float
    baseline: float
    change: float  # relative, signed so that positive is worse
    rule: Literal["median", "bootstrap"] = "median"
    low: float | None = None  # bootstrap: the interval of ``change``
    high: float | None = None
    confidence: float | None = None
    nights: int | None = None  # bootstrap: earlier nights with samples
    samples: int | None = None  # bootstrap: tonight's requests

    @property
    def sentence(self) -> str:
        if self.rule == "bootstrap" and self.low is not None and self.high is not None:
            level = f"{self.confidence or 0.95:.0%}"
            nights = f"night{'s' if self.nights != 1 else ''}"
            return (f"{self.task}: champion {self.champion} {self.metric} {self.value:.3g} "
                    f"{self.change:+.0%} ({level} CI {self.low:+.0%} to {self.high:+.0%}) "
                    f"against the last {self.nights} {nights} (median {self.baseline:.3g}; "
                    f"bootstrap over {self.samples} requests tonight)")
        return (f"{self.task}: champion {self.champion} {self.metric} {self.value:.3g} against "
                f"a median of {self.baseline:.3g} over earlier nights ({self.change:+.0%} worse)")


def find_regressions(task: str, champion: str, tonight: dict[str, float],
                     history: list[dict[str, float]], tolerance: float,
                     comparisons: Mapping[str, Comparison] | None = None) -> list[Regression]:
    """Metrics of ``tonight`` worse than the median of ``history`` by more than ``tolerance``;
    a metric with a bootstrap ``comparison`` is judged by it instead (regressed or not)."""
    comparisons = comparisons or {}
    found = []
    for metric, higher_is_better in WATCHED.items():
        if metric in comparisons:
            c = comparisons[metric]
            if c.regressed:
                found.append(Regression(
                    task=task, champion=champion, metric=metric, value=c.value,
                    baseline=c.baseline, change=c.change, rule="bootstrap", low=c.low,
                    high=c.high, confidence=c.confidence, nights=c.nights, samples=c.n))
            continue
        earlier = [night[metric] for night in history if metric in night]
        if metric not in tonight or not earlier:
            continue
        baseline = statistics.median(earlier)
        if baseline == 0:
            continue
        change = (baseline - tonight[metric]) / abs(baseline) if higher_is_better else \
            (tonight[metric] - baseline) / abs(baseline)
        if change > tolerance:
            found.append(Regression(task=task, champion=champion, metric=metric,
                                    value=tonight[metric], baseline=baseline, change=change))
    return found


def _monitor_runs(settings: Settings, task: str) -> list[Run]:
    registry = open_registry(settings)
    experiment_id = registry.experiment_id(settings.learning_experiment)
    runs: list[Run] = registry.client.search_runs(
        [experiment_id], f"tags.`sutazai.step` = 'monitor' and tags.`sutazai.task` = '{task}'",
        order_by=["attributes.start_time DESC"], max_results=HISTORY_NIGHTS)
    return runs


def earlier_nights(settings: Settings, task: str) -> list[dict[str, float]]:
    """The watched metrics of the last ``HISTORY_NIGHTS`` monitor runs of ``task``, newest
    first: the history both the regression check and the pushed change ratios use."""
    return [dict(run.data.metrics) for run in _monitor_runs(settings, task)]


def read_samples(client: MlflowClient, run_id: str, concurrency: int | None) -> Samples | None:
    """The per-request times of one level of a benchmark run (``concurrency``; None: its
    first level, the one a single-level profile has); None when the run kept no records."""
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as folder:
        try:
            path = Path(client.download_artifacts(run_id, REQUESTS, folder))
            lines = path.read_text().splitlines()
        except (MlflowException, OSError):
            return None
    records = []
    for line in lines:
        if not line.strip():
            continue
        row = json.loads(line)
        level = row.pop("concurrency", None)
        if concurrency is None:
            concurrency = level
        if level == concurrency:
            records.append(RequestRecord.model_validate(row))
    samples = samples_of(records)
    return samples if len(samples) else None


def _compare_with_earlier(client: MlflowClient, runs: list[Run], benchmark_run: str,
                          concurrency: int | None) -> tuple[Samples | None, dict[str, Comparison]]:
    """Tonight's samples and their comparisons with the earlier nights that kept theirs; a
    benchmark run judged on several nights (a champion kept unmeasured) counts once, and
    tonight's own run is never its own baseline."""
    tonight = read_samples(client, benchmark_run, concurrency)
    if tonight is None:
        return None, {}
    seen = {benchmark_run}
    nights = []
    for run in runs:
        ref = run.data.tags.get(BENCHMARK_RUN_TAG)
        level = run.data.tags.get(CONCURRENCY_TAG)
        if not ref or ref in seen:
            continue
        seen.add(ref)
        if (samples := read_samples(client, ref, int(level) if level else None)) is not None:
            nights.append(samples)
    return tonight, compare_samples(tonight, nights) if nights else {}


def monitor_champion(settings: Settings, task: str, champion: str,
                     tonight: dict[str, float], benchmark_run: str | None = None,
                     concurrency: int | None = None) -> list[Regression]:
    """Compare with the earlier nights' monitor runs, record tonight's, return regressions.

    ``benchmark_run`` (with the champion's ``concurrency`` level) is the MLflow run whose
    ``requests.jsonl`` tonight's figures come from; with it, the per-request metrics are
    decided by the bootstrap wherever earlier nights kept samples too."""
    registry = open_registry(settings)
    client = registry.client
    runs = _monitor_runs(settings, task)
    history = [dict(run.data.metrics) for run in runs]
    tonight = dict(tonight)
    comparisons: dict[str, Comparison] = {}
    if benchmark_run:
        samples, comparisons = _compare_with_earlier(client, runs, benchmark_run, concurrency)
        if samples is not None:  # e.g. the mean TPOT, which a candidate does not carry
            tonight = {**figures(samples), **tonight}
    regressions = find_regressions(task, champion, tonight, history,
                                   settings.regression_tolerance, comparisons)
    tags = {"sutazai.step": "monitor", "sutazai.task": task, "sutazai.champion": champion,
            "sutazai.regression": str(bool(regressions)).lower(),
            "sutazai.regressions": "; ".join(r.sentence for r in regressions)[:5000]}
    if benchmark_run:
        tags[BENCHMARK_RUN_TAG] = benchmark_run
        if concurrency is not None:
            tags[CONCURRENCY_TAG] = str(concurrency)
    run_id = registry.start_run(
        f"monitor {task}", tags=tags,
        params={"task": task, "champion": champion,
                "tolerance": settings.regression_tolerance},
        experiment=settings.learning_experiment)
    for metric, value in tonight.items():
        if metric in WATCHED:
            client.log_metric(run_id, metric, value)
    if comparisons:
        client.log_dict(run_id, {m: c.model_dump() for m, c in comparisons.items()},
                        "significance.json")
    if history:
        _log_trend(client, run_id, task, [*reversed(history), tonight])
    client.set_terminated(run_id)
    return regressions


def _log_trend(client: MlflowClient, run_id: str, task: str,
               nights: list[dict[str, float]]) -> None:
    """One small chart per watched metric over the nights, oldest first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in WATCHED if any(m in n for n in nights)]
    figure, axes = plt.subplots(len(metrics), 1, figsize=(6, 2 * len(metrics)), squeeze=False)
    for axis, metric in zip(axes[:, 0], metrics, strict=True):
        points = [(i, n[metric]) for i, n in enumerate(nights) if metric in n]
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o")
        axis.set_ylabel(metric, fontsize=8)
    axes[-1, 0].set_xlabel("night (last = tonight)")
    figure.suptitle(f"Champion of {task}, night by night")
    figure.tight_layout()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "champion_trend.png"
        figure.savefig(path, dpi=80)
        client.log_artifact(run_id, str(path))
    plt.close(figure)
