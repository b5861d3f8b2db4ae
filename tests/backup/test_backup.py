"""Backups of a real home: repository, MLflow (SQLite), the embedded FalkorDB graph, the
audit log; restored into an empty home and read back by SutazAI itself."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from sutazai.backup.archive import BackupArchive
from sutazai.backup.service import backup_root, create, list_backups, prune, restore, verify
from sutazai.config import Settings
from sutazai.errors import ConfigError, IntegrityError
from sutazai.knowledge.service import graph_stats, ingest
from sutazai.registry import open_registry
from sutazai.repository import open_repository
from sutazai.repository.manifest import FileEntry
from sutazai.security.audit import open_audit_log

pytestmark = pytest.mark.slow


@pytest.fixture
def home(settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    """A home with a published model (registered in MLflow), a graph of two documents and
    an audit log."""
    repo = open_repository(settings)
    weights = tmp_path / "src" / "tiny.gguf"
    weights.parent.mkdir()
    weights.write_bytes(b"GGUF" + bytes(range(256)) * 400)
    digest, size, _ = repo.ingest_file(weights)
    manifest, _ = repo.publish(name="tiny", files=[FileEntry(path="tiny.gguf", digest=digest,
                                                          size=size)],
                            source=f"file:{weights}", revision=digest, format="gguf",
                            tasks=["text-generation"], license="apache-2.0")
    open_registry(settings).register(manifest, repo.ensure_snapshot(manifest))
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Alpha\n\nMarie Curie was born in Warsaw.\n")
    (docs / "b.md").write_text("# Beta\n\nTidelift sells support for urllib3.\n")
    assert ingest(settings, [str(docs)], relations="none").documents_ingested == 2
    yield settings


def test_a_backup_restores_a_working_home_and_a_second_one_writes_almost_nothing(
        home: Settings, tmp_path: Path) -> None:
    first = create(home)
    assert first.counts["graph_documents"] == 2 and first.counts["mlflow_model_versions"] == 1
    assert first.counts["repository_versions"] == 1
    paths = {f.path for f in first.files}
    assert {"mlflow.db", "graph/dump.rdb", "audit/audit.jsonl"} <= paths
    assert not any(p.startswith(("repository/snapshots/", "secrets/")) for p in paths)
    second = create(home)  # nothing changed but the audit log's new record
    written = int(second.notes[-1].split()[1])
    assert written <= 0.01 * second.size + 4096, second.notes  # audit log, mlflow pages
    assert [m.id for m in list_backups(home)] == [first.id, second.id]

    target = tmp_path / "restored"
    restored = restore(home, second.id, target)
    assert restored.id == second.id
    again = home.model_copy(update={"home": target})
    assert (graph_stats(again).documents, graph_stats(again).chunks) == (2, 2)
    [version] = open_registry(again).client.search_model_versions("name = 'tiny'")
    assert str(version.version) == "1"
    repo = open_repository(again)
    assert repo.verify([repo.get("tiny")]) == []  # the blob's bytes are right
    assert open_audit_log(again).verify().ok
    with pytest.raises(ConfigError, match="not empty"):
        restore(home, second.id, target)


def test_verify_finds_a_flipped_byte_a_missing_object_and_an_edited_manifest(
        home: Settings) -> None:
    made = create(home)
    assert verify(home, made.id)[1] == []
    archive = BackupArchive(backup_root(home))
    biggest = max(made.files, key=lambda f: f.size)
    victim = archive.object_path(biggest.sha256)
    victim.chmod(0o600)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    problems = verify(home, made.id)[1]
    assert len(problems) == 1 and "damaged" in problems[0]
    victim.unlink()
    assert "missing" in verify(home, made.id)[1][0]
    manifest = archive.backups / made.id / "manifest.json"
    body = json.loads(manifest.read_text())
    body["counts"]["graph_documents"] = 99
    manifest.write_text(json.dumps(body))
    assert "signature does not match" in verify(home, made.id)[1][0]
    with pytest.raises(IntegrityError, match="signature"):
        restore(home, made.id, home.home.parent / "elsewhere")


def test_secrets_are_sealed_only_when_asked_and_prune_keeps_the_newest(
        home: Settings, tmp_path: Path) -> None:
    plain = create(home)
    assert not plain.secrets and not any(f.sealed for f in plain.files)
    sealed = create(home, include_secrets=True)
    secret_files = [f for f in sealed.files if f.sealed]
    assert secret_files and all(f.path.startswith("secrets/") for f in secret_files)
    archive = BackupArchive(backup_root(home))
    password = (home.home / "secrets" / "graph" / "password").read_bytes()
    for entry in secret_files:  # the pool holds ciphertext only
        assert password not in archive.object_path(entry.sha256).read_bytes()
    assert not any("backup/" in f.path for f in secret_files)  # its keys stay out
    restore(home, sealed.id, tmp_path / "with-secrets")
    assert (tmp_path / "with-secrets" / "secrets" / "graph" / "password").read_bytes() == (
        password)
    removed, _ = prune(home, keep=1)
    assert removed == [plain.id] and [m.id for m in list_backups(home)] == [sealed.id]
    assert verify(home, sealed.id)[1] == []  # shared objects survived the prune
    with pytest.raises(ConfigError, match="at least 1"):
        prune(home, keep=0)


def test_a_backup_taken_during_an_ingest_restores_a_graph_the_next_ingest_completes(
        home: Settings, tmp_path: Path) -> None:
    """The graph is a BGSAVE of the running server: at most the document being written
    has chunks without its Document node, and re-ingesting in the restored home finishes
    it."""
    import threading

    from sutazai.knowledge.service import open_store

    docs = tmp_path / "more"
    docs.mkdir()
    for i in range(30):
        (docs / f"d{i}.md").write_text(f"# Doc {i}\n\nAda Lovelace wrote note {i} in London.\n")
    writer = threading.Thread(target=ingest, args=(home, [str(docs)]),
                              kwargs={"relations": "none"})
    writer.start()
    try:
        made = create(home)
    finally:
        writer.join()
    target = tmp_path / "during"
    restore(home, made.id, target)
    again = home.model_copy(update={"home": target})
    dangling = """MATCH (c:Chunk) OPTIONAL MATCH (d:Document {id: c.document})
                  WITH c, d WHERE d IS NULL RETURN DISTINCT c.document"""
    with open_store(again) as store:
        assert len(store.query(dangling).rows) <= 1
    ingest(again, [str(docs)], relations="none")
    with open_store(again) as store:
        assert store.query(dangling).rows == []
    assert graph_stats(again).documents == 32
