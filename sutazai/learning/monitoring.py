"""Regression monitoring: does tonight's champion still measure up to the earlier nights?

Each night records the champion's measurements per task as an MLflow run
(``sutazai.step = monitor``) in the learning experiment, so MLflow's charts show the trend.
Tonight's values are compared with the median of the last nights; a metric worse than
that median by more than ``regression_tolerance`` (relative) is flagged. A median, not the
last night, so that one noisy night neither raises nor hides an alarm.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from sutazai.config import Settings
from sutazai.registry import open_registry

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# metric -> True when higher is better
WATCHED = {"ttft_p95_ms": False, "e2el_p95_ms": False, "output_throughput": True,
           "quality": True, "memory_mib": False}
HISTORY_NIGHTS = 7


class Regression(BaseModel):
    task: str
    champion: str
    metric: str
    value: float
    baseline: float
    change: float  # relative, signed so that positive is worse

    @property
    def sentence(self) -> str:
        return (f"{self.task}: champion {self.champion} {self.metric} {self.value:.3g} against "
                f"a median of {self.baseline:.3g} over earlier nights ({self.change:+.0%} worse)")


def find_regressions(task: str, champion: str, tonight: dict[str, float],
                     history: list[dict[str, float]], tolerance: float) -> list[Regression]:
    """Metrics of ``tonight`` worse than the median of ``history`` by more than ``tolerance``."""
    found = []
    for metric, higher_is_better in WATCHED.items():
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


def earlier_nights(settings: Settings, task: str) -> list[dict[str, float]]:
    """The watched metrics of the last ``HISTORY_NIGHTS`` monitor runs of ``task``, newest
    first: the history both the regression check and the pushed change ratios use."""
    registry = open_registry(settings)
    experiment_id = registry.experiment_id(settings.learning_experiment)
    earlier = registry.client.search_runs(
        [experiment_id], f"tags.`sutazai.step` = 'monitor' and tags.`sutazai.task` = '{task}'",
        order_by=["attributes.start_time DESC"], max_results=HISTORY_NIGHTS)
    return [dict(run.data.metrics) for run in earlier]


def monitor_champion(settings: Settings, task: str, champion: str,
                     tonight: dict[str, float]) -> list[Regression]:
    """Compare with the earlier nights' monitor runs, record tonight's, return regressions."""
    registry = open_registry(settings)
    client = registry.client
    history = earlier_nights(settings, task)
    regressions = find_regressions(task, champion, tonight, history,
                                   settings.regression_tolerance)
    run_id = registry.start_run(
        f"monitor {task}",
        tags={"sutazai.step": "monitor", "sutazai.task": task, "sutazai.champion": champion,
              "sutazai.regression": str(bool(regressions)).lower(),
              "sutazai.regressions": "; ".join(r.sentence for r in regressions)[:5000]},
        params={"task": task, "champion": champion,
                "tolerance": settings.regression_tolerance},
        experiment=settings.learning_experiment)
    for metric, value in tonight.items():
        if metric in WATCHED:
            client.log_metric(run_id, metric, value)
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
