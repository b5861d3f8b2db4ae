"""Batch metrics pushed to a real Pushgateway, read back from its /metrics, and one real
Prometheus scraping it and evaluating infra/prometheus/alerts.yml on what was pushed."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml

from sutazai.config import Settings
from sutazai.knowledge.service import ingest
from sutazai.observability.metrics import (
    pipeline_label,
    pipeline_run,
    push_repository_metrics,
    record_pipeline_run,
    redacted,
)
from sutazai.repository.manifest import FileEntry
from sutazai.repository.store import Repository
from sutazai.selection.rules import Candidate
from sutazai.serving.process import free_port
from sutazai.workflows.nightly import SelectionOutcome, graph_statistics, monitor_champions
from tests.knowledge_helpers import write_corpus
from tests.pushgateway import RULES, Pushgateway, RulesPrometheus, labels

NIGHTLY = "sutazai-nightly"
PIPELINES = {"job": "sutazai-pipelines"}


@pytest.fixture(scope="module")
def pushgateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushgateway]:
    server = Pushgateway(tmp_path_factory.mktemp("pushgateway"))
    server.start(timeout_s=30)
    yield server
    server.stop()


@pytest.fixture
def pushed(pushgateway: Pushgateway, settings: Settings) -> Settings:
    """Settings that push to the (emptied) Pushgateway."""
    pushgateway.wipe()
    return settings.model_copy(update={"pushgateway_url": pushgateway.url})


def test_pipeline_names_are_the_kfp_names() -> None:
    assert [pipeline_label(n) for n in ("model_sync", "benchmark_select", "nightly",
                                        "knowledge_ingest", "sutazai-nightly")] == [
        "sutazai-model-sync", "sutazai-benchmark-select", "sutazai-nightly",
        "sutazai-knowledge-ingest", "sutazai-nightly"]


def test_a_failure_keeps_the_last_success_and_a_success_keeps_the_last_failure(
        pushed: Settings, pushgateway: Pushgateway) -> None:
    key = labels(**PIPELINES, pipeline=NIGHTLY)
    assert record_pipeline_run(pushed, "nightly", succeeded=True, seconds=61.5, ended=1000.0)
    assert pushgateway.series("sutazai_pipeline_last_success_timestamp_seconds") == {key: 1000.0}
    assert pushgateway.series("sutazai_pipeline_last_run_timestamp_seconds") == {key: 1000.0}
    assert pushgateway.series("sutazai_pipeline_duration_seconds") == {key: 61.5}
    assert pushgateway.series("sutazai_pipeline_last_failure_timestamp_seconds") == {}

    assert record_pipeline_run(pushed, "nightly", succeeded=False, seconds=3.0, ended=2000.0)
    assert pushgateway.series("sutazai_pipeline_last_success_timestamp_seconds") == {key: 1000.0}
    assert pushgateway.series("sutazai_pipeline_last_failure_timestamp_seconds") == {key: 2000.0}
    assert pushgateway.series("sutazai_pipeline_last_run_timestamp_seconds") == {key: 2000.0}
    assert pushgateway.series("sutazai_pipeline_duration_seconds") == {key: 3.0}

    assert record_pipeline_run(pushed, "nightly", succeeded=True, seconds=60.0, ended=3000.0)
    assert pushgateway.series("sutazai_pipeline_last_success_timestamp_seconds") == {key: 3000.0}
    assert pushgateway.series("sutazai_pipeline_last_failure_timestamp_seconds") == {key: 2000.0}


def test_a_pipeline_run_that_raises_or_fails_is_pushed_as_a_failure(
        pushed: Settings, pushgateway: Pushgateway) -> None:
    with pytest.raises(RuntimeError, match="step broke"), \
            pipeline_run(pushed, "knowledge_ingest"):
        raise RuntimeError("step broke")
    ingest_key = labels(**PIPELINES, pipeline="sutazai-knowledge-ingest")
    failed = pushgateway.series("sutazai_pipeline_last_failure_timestamp_seconds")
    assert list(failed) == [ingest_key] and abs(failed[ingest_key] - time.time()) < 30

    with pipeline_run(pushed, "model_sync") as run:
        run.fail("the repository failed verification")
    with pipeline_run(pushed, "benchmark_select") as run:
        time.sleep(0.05)
    failures = pushgateway.series("sutazai_pipeline_last_failure_timestamp_seconds")
    assert set(failures) == {ingest_key, labels(**PIPELINES, pipeline="sutazai-model-sync")}
    select = labels(**PIPELINES, pipeline="sutazai-benchmark-select")
    assert set(pushgateway.series("sutazai_pipeline_last_success_timestamp_seconds")) == {select}
    assert 0.05 <= pushgateway.series("sutazai_pipeline_duration_seconds")[select] < 5


def test_nothing_is_pushed_without_a_url_and_an_unreachable_one_only_warns(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    assert settings.pushgateway_url is None
    assert not record_pipeline_run(settings, "nightly", succeeded=True, seconds=1.0)
    assert not push_repository_metrics(settings)
    nowhere = settings.model_copy(update={
        "pushgateway_url": f"http://ops:hunter2@127.0.0.1:{free_port()}"})
    with caplog.at_level(logging.WARNING, logger="sutazai.observability.metrics"), \
            pipeline_run(nowhere, "nightly"):
        pass  # the run itself succeeds; only the push fails
    [warning] = [r.getMessage() for r in caplog.records
                 if r.name == "sutazai.observability.metrics"]
    assert "could not push sutazai-pipelines" in warning and "goes on" in warning
    assert "hunter2" not in warning and "ops:***@127.0.0.1" in warning
    assert redacted("https://pushgw:9091") == "https://pushgw:9091"


def test_basic_auth_in_the_url_is_sent_as_credentials(settings: Settings) -> None:
    """A Pushgateway behind basic auth: user:password in the URL becomes the header."""
    import base64
    import http.server
    import threading

    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"] or 0))
            seen.append(self.headers.get("Authorization"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        secured = settings.model_copy(update={
            "pushgateway_url": f"http://ops:s3cret@127.0.0.1:{server.server_port}"})
        assert record_pipeline_run(secured, "nightly", succeeded=True, seconds=1.0)
    finally:
        server.shutdown()
    assert seen == ["Basic " + base64.b64encode(b"ops:s3cret").decode()]


def publish(repo: Repository, folder: Path, name: str, fmt: str, content: bytes
            ) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.{fmt}"
    path.write_bytes(content)
    digest, size, _ = repo.ingest_file(path)
    repo.publish(name=name, files=[FileEntry(path=path.name, digest=digest, size=size)],
                 source=f"file:{path}", revision=digest, format=fmt, tasks=["text-generation"],
                 license="apache-2.0")
    return size


def test_repository_size_and_versions_per_model_and_format(
        pushed: Settings, pushgateway: Pushgateway, tmp_path: Path) -> None:
    repo = Repository(pushed.repository_root)
    sizes = [publish(repo, tmp_path / "f", "gemma", "gguf", b"a" * 1000),
             publish(repo, tmp_path / "f", "gemma", "gguf", b"b" * 2000),
             publish(repo, tmp_path / "f", "gemma-hf", "safetensors", b"c" * 300),
             publish(repo, tmp_path / "f", "gemma-hf", "safetensors", b"a" * 1000)]  # shared
    assert push_repository_metrics(pushed)
    job = {"job": "sutazai-repository"}
    assert pushgateway.series("sutazai_repository_size_bytes") == {
        labels(**job): float(sum(sizes) - 1000)}  # content-addressed: one blob for b"a"*1000
    assert pushgateway.series("sutazai_repository_model_versions") == {
        labels(**job, model="gemma", format="gguf"): 2.0,
        labels(**job, model="gemma-hf", format="safetensors"): 2.0}

    for manifest in repo.versions("gemma-hf"):
        repo.remove(manifest)
    repo.gc()
    assert push_repository_metrics(pushed)
    assert pushgateway.series("sutazai_repository_model_versions") == {
        labels(**job, model="gemma", format="gguf"): 2.0}  # the removed model's series is gone
    assert pushgateway.series("sutazai_repository_size_bytes") == {labels(**job): 3000.0}


def champion(quality: float, ttft: float, version: int = 1) -> SelectionOutcome:
    return SelectionOutcome(task="text-generation", champion=Candidate(
        model="gemma", version=version, engine="llamacpp", concurrency=1, quality=quality,
        ttft_p95_ms=ttft, e2el_p95_ms=500.0, output_throughput=40.0))


def test_the_monitor_pushes_each_watched_metric_its_change_and_the_champion(
        pushed: Settings, pushgateway: Pushgateway) -> None:
    for _ in range(2):
        assert monitor_champions(pushed, [champion(0.5, 80.0)], None) == []
    job = {"job": "sutazai-monitoring", "task": "text-generation"}
    assert pushgateway.series("sutazai_champion_regression") == {
        labels(**job, metric=m): 0.0
        for m in ("ttft_p95_ms", "e2el_p95_ms", "output_throughput", "quality")}

    [regression] = monitor_champions(pushed, [champion(0.3, 76.0, version=2)], None)
    assert regression.metric == "quality"
    flags = pushgateway.series("sutazai_champion_regression")
    assert flags[labels(**job, metric="quality")] == 1.0
    assert sum(flags.values()) == 1.0
    changes = pushgateway.series("sutazai_champion_change_ratio")
    assert changes[labels(**job, metric="quality")] == pytest.approx(0.4)  # 0.5 -> 0.3
    assert changes[labels(**job, metric="ttft_p95_ms")] == pytest.approx(-0.05)  # better
    assert changes[labels(**job, metric="e2el_p95_ms")] == 0.0
    assert pushgateway.series("sutazai_champion_info") == {
        labels(**job, model="gemma", version="2"): 1.0}  # the group was replaced: v1 is gone


def test_an_ingest_pushes_the_graph_by_type_in_the_ingest_pipelines_group(
        pushed: Settings, pushgateway: Pushgateway, tmp_path: Path) -> None:
    report = ingest(pushed, [str(write_corpus(tmp_path / "docs"))])
    stats = graph_statistics(pushed, report.model_dump(mode="json"))
    record_pipeline_run(pushed, "knowledge_ingest", succeeded=True, seconds=2.0)
    group = {**PIPELINES, "pipeline": "sutazai-knowledge-ingest"}
    assert pushgateway.series("sutazai_graph_entities") == {
        labels(**group, type=kind): float(n) for kind, n in stats.entities_by_type.items()}
    assert pushgateway.series("sutazai_graph_relations") == {
        labels(**group, type=kind): float(n) for kind, n in stats.relations_by_type.items()}
    assert set(stats.entities_by_type) >= {"PERSON", "ORG", "GPE"}
    assert pushgateway.series("sutazai_graph_ingest_documents") == {labels(**group): 3.0}
    assert pushgateway.series("sutazai_graph_ingest_chunks") == {
        labels(**group): float(report.chunks)}
    # the run's own push (POST) left the graph gauges in the shared group
    assert pushgateway.series("sutazai_pipeline_duration_seconds") == {labels(**group): 2.0}


def alert_expression(name: str) -> str:
    rules = yaml.safe_load((RULES / "alerts.yml").read_text())
    return next(str(rule["expr"]) for group in rules["groups"] for rule in group["rules"]
                if rule.get("alert") == name)


@pytest.mark.slow
def test_prometheus_alerts_on_a_failed_nightly_and_a_regression(
        pushed: Settings, pushgateway: Pushgateway, tmp_path: Path) -> None:
    """Real Prometheus, infra's rules: the pushed series make the alerts' expressions true."""
    now = time.time()
    record_pipeline_run(pushed, "nightly", succeeded=True, seconds=60.0, ended=now - 27 * 3600)
    record_pipeline_run(pushed, "nightly", succeeded=False, seconds=5.0, ended=now - 60)
    record_pipeline_run(pushed, "model_sync", succeeded=True, seconds=9.0, ended=now - 30)
    monitor_champions(pushed, [champion(0.5, 80.0)], None)
    monitor_champions(pushed, [champion(0.2, 80.0)], None)
    prometheus = RulesPrometheus(tmp_path / "prometheus",
                                 pushgateway.url.removeprefix("http://"))
    prometheus.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            failed: list[Any] = prometheus.query(alert_expression("SutazAINightlyFailed"))
            firing: list[Any] = prometheus.query('ALERTS{alertname="SutazAIChampionRegression",'
                                      'alertstate="firing"}')
            pending: list[Any] = prometheus.query('ALERTS{alertname="SutazAINightlyFailed"}')
            if (failed and firing and pending) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert [r["metric"]["pipeline"] for r in failed] == [NIGHTLY]
        assert [r["metric"]["metric"] for r in firing] == ["quality"]
        assert pending and pending[0]["metric"]["alertstate"] == "pending"
        assert prometheus.query(alert_expression("SutazAIPipelineFailed")) == []
        stale: list[Any] = prometheus.query(alert_expression("SutazAINightlyStale"))
        assert [r["metric"]["pipeline"] for r in stale] == [NIGHTLY]
        assert prometheus.query(alert_expression("SutazAINightlyNeverSucceeded")) == []
        up = urllib3.request("GET", f"{prometheus.url}/api/v1/targets").json()
        assert up["data"]["activeTargets"][0]["labels"]["job"] == "sutazai-pushgateway"
    finally:
        prometheus.stop()


def test_every_contract_metric_is_emitted_with_its_type_and_labels(tmp_path: Path) -> None:
    """infra/README.md's metric contract, read the way tests/test_infra.py reads it: the
    registries pushed here hold exactly its metrics, as gauges with exactly its labels
    (``job`` and the group label are added by the Pushgateway's grouping key)."""
    from sutazai.backup.drill import DrillReport, drill_registry
    from sutazai.knowledge.models import GraphStats, IngestReport
    from sutazai.observability.metrics import (
        ChampionFigures,
        champion_registry,
        graph_registry,
        pipeline_run_registry,
        repository_registry,
    )
    from tests.test_infra import contract

    repo = Repository(tmp_path / "repository")
    publish(repo, tmp_path / "f", "gemma", "gguf", b"x")
    stats = GraphStats(documents=1, chunks=1, entities=1, relations=1, mentions=1,
                       entities_by_type={"PERSON": 1}, relations_by_type={"FOUNDED": 1})
    registries = [
        pipeline_run_registry("sutazai-nightly", succeeded=True, seconds=1.0),
        pipeline_run_registry("sutazai-nightly", succeeded=False, seconds=1.0),
        champion_registry(ChampionFigures(task="ner", model="spacy", version=1,
                                          measured=("quality",), changes={"quality": 0.1})),
        repository_registry(repo),
        graph_registry(stats, IngestReport(documents_ingested=1, chunks=1)),
        drill_registry(DrillReport(ok=True, backup_id="b", backup_bytes=1, seconds=1.0)),
    ]
    emitted: dict[str, tuple[str, set[str]]] = {}
    for registry in registries:
        for family in registry.collect():
            for sample in family.samples:
                emitted[family.name] = (family.type, set(sample.labels))
    assert emitted == {name: ("gauge", labels) for name, (_, labels) in contract().items()}
