"""Regression monitoring of the champion, night after night, recorded in MLflow (SQLite)."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from sutazai.config import Settings
from sutazai.learning.monitoring import find_regressions, monitor_champion
from sutazai.selection.rules import Candidate
from sutazai.workflows.improvement import champion_measurements

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
