"""Regression monitoring of the champion, night after night, recorded in MLflow (SQLite)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from sutazai.benchmark.metrics import RequestRecord
from sutazai.config import Settings
from sutazai.learning.monitoring import find_regressions, monitor_champion
from sutazai.registry import open_registry
from sutazai.selection.rules import Candidate
from sutazai.workflows.improvement import champion_measurements, champion_runs

NIGHT = {"ttft_p95_ms": 80.0, "e2el_p95_ms": 500.0, "output_throughput": 40.0, "quality": 0.5}


def test_a_metric_worse_than_the_median_by_more_than_the_tolerance_is_flagged() -> None:
    history = [NIGHT, NIGHT | {"ttft_p95_ms": 300.0}, NIGHT | {"ttft_p95_ms": 82.0}]
    assert find_regressions("t", "m:1", NIGHT | {"ttft_p95_ms": 85.0}, history, 0.1) == []
    [slow] = find_regressions("t", "m:1", NIGHT | {"ttft_p95_ms": 100.0}, history, 0.1)
    assert slow.metric == "ttft_p95_ms" and slow.baseline == 82.0  # the outlier is ignored
    assert slow.change == pytest.approx(18 / 82)
    [worse] = find_regressions("t", "m:1", NIGHT | {"output_throughput": 30.0}, history, 0.1)
    assert worse.metric == "output_throughput" and worse.change == pytest.approx(0.25)
    assert "25% worse" in worse.sentence
    better = NIGHT | {"output_throughput": 60.0, "ttft_p95_ms": 40.0, "quality": 0.9}
    assert find_regressions("t", "m:1", better, history, 0.1) == []
    assert find_regressions("t", "m:1", NIGHT, [], 0.1) == []  # the first night sets the bar


def test_nights_are_recorded_in_mlflow_and_a_regression_is_tagged(settings: Settings) -> None:
    for _ in range(3):
        assert monitor_champion(settings, "text-generation", "gemma:1", NIGHT) == []
    [regression] = monitor_champion(settings, "text-generation", "gemma:1",
                                    NIGHT | {"quality": 0.3})
    assert regression.metric == "quality" and regression.baseline == 0.5
    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.learning_experiment)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], "tags.`sutazai.step` = 'monitor'",
                              order_by=["attributes.start_time DESC"])
    assert len(runs) == 4
    assert runs[0].data.tags["sutazai.regression"] == "true"
    assert "quality" in runs[0].data.tags["sutazai.regressions"]
    assert runs[0].data.metrics["quality"] == 0.3
    assert any(a.path == "champion_trend.png" for a in client.list_artifacts(runs[0].info.run_id))


def test_a_champion_kept_without_measurements_is_not_a_regression() -> None:
    """The selection keeps a champion promoted on held-out data without measuring it; its
    empty candidate must not read as zero throughput."""
    kept = Candidate(model="gemma-ft", version=1, engine="llamacpp", concurrency=1)
    measured = Candidate(model="spacy", version=1, engine="spacy", concurrency=1, quality=0.9,
                         memory_mib=280.0)
    found = champion_measurements([("text-generation", kept), ("ner", measured)], None)
    assert found == {"ner": ("spacy:1@spacy", {"quality": 0.9, "memory_mib": 280.0})}


def benchmark_run(settings: Settings, tmp_path: Path, tpot_s: float, seed: int) -> str:
    """A benchmark run holding only what the monitor reads: 60 requests at concurrency 1
    (TTFT and TPOT +-20 %) and, as a sweep would, 60 faster ones at concurrency 4."""
    rng = random.Random(seed)
    lines = []
    for level, scale in ((1, 1.0), (4, 0.5)):
        for index in range(60):
            ttft = 0.02 * (1 + 0.2 * rng.uniform(-1, 1))
            tpot = scale * tpot_s * (1 + 0.2 * rng.uniform(-1, 1))
            record = RequestRecord(index=index, sent=0.0, ttft=ttft, latency=ttft + 15 * tpot,
                                   output_tokens=16, success=True)
            lines.append(json.dumps({"concurrency": level, **record.model_dump()}))
    registry = open_registry(settings)
    run_id = registry.start_run("benchmark", tags={"sutazai.step": "benchmark"}, params={},
                                experiment=settings.benchmark_experiment)
    path = tmp_path / f"{seed}" / "requests.jsonl"
    path.parent.mkdir()
    path.write_text("\n".join(lines) + "\n")
    registry.client.log_artifact(run_id, str(path))
    return run_id


def test_with_per_request_samples_the_latencies_are_decided_by_the_bootstrap(
        settings: Settings, tmp_path: Path) -> None:
    for seed in range(2):
        run = benchmark_run(settings, tmp_path, 0.004, seed)
        assert monitor_champion(settings, "text-generation", "gemma:1", NIGHT, run, 1) == []
    # a kept champion judged again on the same benchmark run is not its own baseline
    assert monitor_champion(settings, "text-generation", "gemma:1", NIGHT, run, 1) == []
    slow = benchmark_run(settings, tmp_path, 0.0048, seed=7)  # TPOT +20 %
    found = monitor_champion(settings, "text-generation", "gemma:1",
                             NIGHT | {"quality": 0.3}, slow, 1)
    by_metric = {r.metric: r for r in found}
    assert by_metric["quality"].rule == "median"
    tpot = by_metric["tpot_mean_ms"]
    assert tpot.rule == "bootstrap" and tpot.nights == 2 and tpot.samples == 60
    assert tpot.low is not None and tpot.high is not None
    assert 0.03 < tpot.low < tpot.change < tpot.high
    assert "CI" in tpot.sentence and "last 2 nights" in tpot.sentence
    assert by_metric["e2el_p95_ms"].rule == "bootstrap"  # 15 slower tokens show end to end
    assert "ttft_p95_ms" not in by_metric  # TTFT did not move
    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.learning_experiment)
    assert experiment is not None
    [latest, *_] = client.search_runs([experiment.experiment_id],
                                      "tags.`sutazai.step` = 'monitor'",
                                      order_by=["attributes.start_time DESC"])
    assert latest.data.tags["sutazai.benchmark_run"] == slow
    assert latest.data.metrics["tpot_mean_ms"] == pytest.approx(tpot.value)
    assert any(a.path == "significance.json"
               for a in client.list_artifacts(latest.info.run_id))
    # without samples (a run that kept none), the same night falls back to the median rule
    bare = open_registry(settings).start_run("bare", tags={}, params={},
                                             experiment=settings.benchmark_experiment)
    fallback = monitor_champion(settings, "text-generation", "gemma:1", NIGHT, bare, 1)
    assert all(r.rule == "median" for r in fallback)


def test_the_monitor_reads_the_benchmark_run_behind_each_champion() -> None:
    chosen = Candidate(model="gemma", version=1, engine="llamacpp", concurrency=4,
                       run_id="abc")
    assert champion_runs([("text-generation", chosen), ("ner", None)], None) == {
        "text-generation": ("abc", 4)}
