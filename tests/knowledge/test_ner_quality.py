"""NER quality of the real spaCy en_core_web_sm pipeline against the gold set, and its
benchmark run in MLflow (spaCy runs in-process: no serving engine loads it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import spacy
import yaml
from mlflow.tracking import MlflowClient

from sutazai.benchmark.profiles import get_profile
from sutazai.benchmark.quality import ner_quality
from sutazai.benchmark.runner import benchmark
from sutazai.config import Settings
from sutazai.errors import BenchmarkError
from sutazai.repository import open_repository
from sutazai.workflows.mirror import mirror_catalog
from tests.helpers import spacy_model_folder

DATA = Path(__file__).resolve().parents[2] / "benchmarks" / "data"


def test_ner_benchmark_is_logged_to_mlflow(settings: Settings) -> None:
    """First in this file: the pipeline's memory is the RSS its first load adds."""
    settings.catalog.write_text(yaml.safe_dump({"models": [{
        "name": "en-core-web-sm", "source": f"file:{spacy_model_folder()}", "format": "spacy",
        "tasks": ["ner"], "license": "mit"}]}))
    assert mirror_catalog(settings, register=False)[0].error is None
    manifest = open_repository(settings).get("en-core-web-sm")
    summary, steps = benchmark(settings, manifest, None, get_profile("latency"))
    assert steps == [] and summary.engine == "spacy" and summary.task == "ner"
    assert summary.quality is not None and summary.quality.score > 0.8
    assert summary.peak_rss_bytes and summary.peak_rss_bytes > 1 * 2**20  # the loaded pipeline
    run = MlflowClient(settings.tracking_uri).get_run(summary.run_id)
    assert run.data.metrics["quality_entity_f1"] == summary.quality.score
    assert run.data.tags["sutazai.task"] == "ner"


def test_en_core_web_sm_finds_most_gold_entities() -> None:
    report = ner_quality(spacy_model_folder(), DATA)
    assert report.primary == "entity_f1" and 0.8 < report.score <= 1.0
    assert report.scores["f1_PERSON"] > 0.9 and report.scores["f1_GPE"] > 0.9
    assert 0 < report.scores["recall"] <= report.scores["precision"] + 0.2


def test_a_pipeline_without_ner_scores_zero_and_a_missing_one_is_clear(tmp_path: Path) -> None:
    spacy.blank("en").to_disk(tmp_path / "blank")
    report = ner_quality(tmp_path / "blank", DATA)
    assert report.score == 0.0 and report.scores["recall"] == 0.0
    with pytest.raises(BenchmarkError, match="spaCy cannot load"):
        ner_quality(tmp_path / "missing", DATA)


def test_ner_champion_is_selected_on_quality_alone(settings: Settings) -> None:
    """NER has no latency figures: the latency SLOs do not apply, the quality floor does."""
    from sutazai.benchmark.metrics import SLO
    from sutazai.registry import open_registry
    from sutazai.registry.task_aliases import TaskAliases
    from sutazai.selection.rules import Weights
    from sutazai.selection.store import select_and_promote

    settings.catalog.write_text(yaml.safe_dump({"models": [{
        "name": "en-core-web-sm", "source": f"file:{spacy_model_folder()}", "format": "spacy",
        "tasks": ["ner"], "license": "mit"}]}))
    assert mirror_catalog(settings)[0].error is None
    benchmark(settings, open_repository(settings).get("en-core-web-sm"), None,
              get_profile("latency"))
    slo = SLO(ttft_p95_ms=100, min_quality=0.5)
    decision, _ = select_and_promote(settings, "ner", "latency", slo, Weights())
    assert decision.winner is not None and decision.winner.model == "en-core-web-sm"
    assert "min_quality=0.5" in decision.explanation and "ttft" not in decision.explanation
    assert TaskAliases(open_registry(settings)).require("ner").engine == "spacy"
    strict, _ = select_and_promote(settings, "ner", "latency", SLO(min_quality=0.99), Weights())
    assert strict.winner is None and "quality 0.920 < 0.99" in strict.explanation
