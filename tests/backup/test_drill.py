"""The backup drill on a real home (repository with a real GGUF served by llama.cpp, MLflow
on SQLite with aliases, learning-store rows, the embedded FalkorDB graph), its metrics on a
real Pushgateway, and a drill of a damaged backup."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sutazai.backup.archive import BackupArchive
from sutazai.backup.drill import run_drill
from sutazai.backup.service import backup_root, create
from sutazai.cli.main import app
from sutazai.config import Settings
from sutazai.knowledge.service import ingest
from sutazai.learning.datastore import FeedbackStore
from sutazai.registry import open_registry
from sutazai.registry.task_aliases import TaskAliases
from sutazai.repository import open_repository
from sutazai.repository.manifest import FileEntry
from sutazai.security.audit import open_audit_log
from tests.pushgateway import Pushgateway

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pushgateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushgateway]:
    server = Pushgateway(tmp_path_factory.mktemp("pushgateway"))
    server.start(timeout_s=30)
    yield server
    server.stop()


@pytest.fixture
def pushed(pushgateway: Pushgateway, settings: Settings) -> Settings:
    pushgateway.wipe()
    return settings.model_copy(update={"pushgateway_url": pushgateway.url})


def publish(settings: Settings, source: Path, name: str) -> None:
    repo = open_repository(settings)
    digest, size, _ = repo.ingest_file(source)
    manifest, _ = repo.publish(name=name, files=[FileEntry(path=source.name, digest=digest,
                                                           size=size)],
                               source=f"file:{source}", revision=digest, format="gguf",
                               tasks=["text-generation"], license="apache-2.0")
    open_registry(settings).register(manifest, repo.ensure_snapshot(manifest))


def learning_rows(settings: Settings, count: int) -> None:
    store = FeedbackStore.open(settings)
    try:
        for i in range(count):
            store.log_interaction(f"prompt {i}", f"response {i}", model="smol")
    finally:
        store.close()


def test_the_drill_restores_serves_queries_and_counts_what_the_source_had(
        pushed: Settings, pushgateway: Pushgateway, smollm2_gguf: Path, tmp_path: Path
) -> None:
    publish(pushed, smollm2_gguf, "smol")
    repo = open_repository(pushed)
    TaskAliases(open_registry(pushed)).set("text-generation", "champion", repo.get("smol"),
                                           "llamacpp", 1)
    learning_rows(pushed, 3)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Alpha\n\nMarie Curie was born in Warsaw.\n")
    (docs / "b.md").write_text("# Beta\n\nTidelift sells support for urllib3.\n")
    assert ingest(pushed, [str(docs)], relations="none", embed=False).documents_ingested == 2

    report = run_drill(pushed, question="Paris is the capital of")
    assert report.ok, report.failures
    checks = {c.name: c for c in report.checks}
    assert set(checks) == {"create", "verify", "restore", "graph_documents", "graph_chunks",
                           "repository_versions", "mlflow_model_versions",
                           "mlflow_registered_model_aliases", "learning_rows", "answer"}
    assert {c.status for c in checks.values()} == {"ok"}, report.checks
    assert (checks["graph_documents"].restored, checks["graph_chunks"].restored) == (2, 2)
    assert checks["repository_versions"].restored == 1
    assert checks["learning_rows"].restored == 3
    # smol:1, and the task's own registered model carrying the champion alias
    assert checks["mlflow_model_versions"].restored == 2
    assert checks["mlflow_registered_model_aliases"].restored == 1
    assert report.answer is not None and report.answer.ref == "smol:1"
    assert report.answer.engine == "llamacpp" and report.answer.text.strip()
    assert report.backup_bytes > smollm2_gguf.stat().st_size
    # the scratch home is gone, and the source was only read (and audited)
    assert list((backup_root(pushed) / "drill").iterdir()) == []
    assert [r.action for r in open_audit_log(pushed).records()][-1] == "backup.drill"

    assert report.pushed
    job = frozenset({("job", "sutazai-backup")})
    assert pushgateway.series("sutazai_backup_drill_success") == {job: 1.0}
    [size] = pushgateway.series("sutazai_backup_size_bytes").values()
    assert size == report.backup_bytes
    [when] = pushgateway.series("sutazai_backup_last_success_timestamp_seconds").values()
    assert when >= report.started.timestamp()
    [seconds] = pushgateway.series("sutazai_backup_drill_duration_seconds").values()
    assert seconds == report.seconds


def test_a_drill_of_a_damaged_backup_fails_and_pushes_its_failure(
        pushed: Settings, pushgateway: Pushgateway, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Through ``sutazai backup drill --backup ID --json``, as an operator runs it."""
    weights = tmp_path / "tiny.gguf"
    weights.write_bytes(b"GGUF" + bytes(range(256)) * 400)
    publish(pushed, weights, "tiny")
    learning_rows(pushed, 1)
    made = create(pushed)
    archive = BackupArchive(backup_root(pushed))
    biggest = max(made.files, key=lambda f: f.size)
    victim = archive.object_path(biggest.sha256)
    victim.chmod(0o600)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))

    killed = backup_root(pushed) / "drill" / "drill-killed"  # what a killed drill left
    (killed / "repository").mkdir(parents=True)
    os.utime(killed, (time.time() - 2 * 86400,) * 2)
    monkeypatch.setenv("SUTAZAI_PUSHGATEWAY_URL", pushgateway.url)
    done = CliRunner().invoke(app, ["backup", "drill", "--backup", made.id, "--json"])
    assert done.exit_code == 1, done.output
    report = json.loads(done.stdout)
    assert not report["ok"] and report["backup_id"] == made.id and report["pushed"]
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["verify"]["status"] == "failed" and "damaged" in checks["verify"]["detail"]
    assert checks["restore"]["status"] == "failed"
    assert biggest.path in checks["restore"]["detail"]
    assert report["failures"] == [f"verify: {checks['verify']['detail']}",
                                  f"restore: {checks['restore']['detail']}"]
    assert "answer" not in checks  # nothing restored: nothing to use
    assert list((backup_root(pushed) / "drill").iterdir()) == []
    job = frozenset({("job", "sutazai-backup")})
    assert pushgateway.series("sutazai_backup_drill_success") == {job: 0.0}
    assert pushgateway.series("sutazai_backup_size_bytes") == {job: float(made.size)}
    # a drill never passed here: no good backup to report (the alert's "absent" case)
    assert pushgateway.series("sutazai_backup_last_success_timestamp_seconds") == {}


def test_a_production_drill_restores_the_dumps_into_its_own_scratch_postgres(
        production: Settings, postgres_cluster: object, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's store, the learning store and the NAS studies live in the session's real
    PostgreSQL; the drill restores their dumps into a cluster of its own and counts there,
    leaving the production databases as they were."""
    from mlflow import MlflowClient

    production.home.mkdir(parents=True, exist_ok=True)
    learning_rows(production, 2)
    monkeypatch.setenv("PGPASSWORD", postgres_cluster.password)  # type: ignore[attr-defined]
    mlflow = MlflowClient(tracking_uri=production.mlflow_store_url)
    mlflow.create_registered_model("tiny")
    mlflow.create_model_version("tiny", source=str(tmp_path))
    mlflow.set_registered_model_alias("tiny", "prod", "1")
    monkeypatch.delenv("PGPASSWORD")

    report = run_drill(production, push_metrics=False)
    assert report.ok, report.failures
    checks = {c.name: c for c in report.checks}
    for name in ("mlflow_model_versions", "mlflow_registered_model_aliases"):
        assert (checks[name].status, checks[name].source, checks[name].restored) == (
            "ok", 1, 1), checks[name]
    assert (checks["learning_rows"].source, checks["learning_rows"].restored) == (2, 2)
    assert checks["answer"].status == "skipped"  # no text-generation champion to serve
    assert checks["graph_documents"].status == "skipped"
    with postgres_cluster.admin() as admin:  # type: ignore[attr-defined]
        names = [row[0] for row in admin.execute("SELECT datname FROM pg_database")]
    assert not [n for n in names if n.startswith("drill_")]  # nothing of the drill there
    with FeedbackStore.open(production) as store:
        assert store.count() == 2
