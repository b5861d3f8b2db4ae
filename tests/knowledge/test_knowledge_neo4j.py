"""The Neo4j adapter, smoke-tested over FalkorDB's experimental Bolt port.

No Neo4j server is obtainable on this machine (not on PyPI, apt or npm), so this drives
:class:`Neo4jStore` — the official ``neo4j`` driver, managed transactions — against
``falkordb.so`` loaded with ``BOLT_PORT``, the nearest real Bolt server. Its limits
(PLATFORM-FACTS, and two found here) shape the test: parameters over ~4 KB crash it, so
batches are tiny (5 rows) and so is the document; results over ~64 KB hang it, so every
read is small; ``driver.close()`` breaks the next connection, so the server is per-test
and stopped right after; it does not listen on a port above 32767 (a signed 16-bit
parse), and a write over Bolt kills a server that has the append-only file on, so this
one has none; it has no login once a password is set, no rollback, no Neo4j schema
statements, and it reads the access-mode field as a graph name, so reads go in WRITE mode
(``read_access_mode=False``) and the schema is made through FalkorDB's own client.
What this proves: the adapter's Cypher, parameters and result handling work over Bolt.
What it cannot: Neo4j's constraints, READ-mode enforcement, transactions and retries,
and search: Neo4j's vector and full-text indexes (``db.index.vector.queryNodes``,
``db.index.fulltext.queryNodes``, ``CREATE VECTOR INDEX``) exist only in Neo4j, so
``kg search`` and ``kg ask`` on Neo4j are checked here only as far as their statements
(all IF NOT EXISTS, every value a parameter).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sutazai.errors import GraphStoreError
from sutazai.knowledge import cypher
from sutazai.knowledge.server import EmbeddedFalkorDB
from sutazai.knowledge.stores.falkordb import FalkorDBStore
from sutazai.knowledge.stores.neo4j import Neo4jStore
from sutazai.serving.process import free_port
from tests.knowledge_helpers import free_bolt_port, small_graph


def test_neo4j_adapter_over_falkordb_bolt(tmp_path: Path) -> None:
    bolt = free_bolt_port()
    with EmbeddedFalkorDB(tmp_path / "graph", "", bolt_port=bolt) as server:
        with FalkorDBStore(server.host, server.port, "falkordb") as native:
            native.ensure_schema()  # Bolt has no schema statements; the graph it serves
        store = Neo4jStore(f"bolt://127.0.0.1:{bolt}", None, None, batch_size=5,
                           read_access_mode=False)
        try:
            graph = small_graph()
            store.upsert_document(graph)
            store.upsert_document(graph)  # idempotent through the driver too
            stats = store.stats()
            assert (stats.documents, stats.chunks, stats.entities, stats.mentions,
                    stats.relations) == (1, 1, 3, 4, 2)
            assert stats.relations_by_type == {"ACQUIRED": 1, "LEADS": 1}
            [view] = store.entity("microsoft")
            assert {(n.direction, n.type, n.name) for n in view.neighbours} == {
                ("out", "ACQUIRED", "GitHub"), ("in", "LEADS", "Satya Nadella")}
            assert len(view.mentions) == 2 and "[Microsoft] acquired" in view.mentions[0].snippet
            result = store.query("MATCH (e:Entity {id: $id}) RETURN e", {"id": "org:github"})
            assert result.columns == ["e"]
            assert result.rows[0][0]["properties"]["name"] == "GitHub"  # type: ignore[index]
            with pytest.raises(GraphStoreError, match="--write"):
                store.query("MATCH (n) DETACH DELETE n")
            assert store.document("/docs/ms.txt") is not None
            assert store.delete_document(graph.document.id) == 3
            assert store.stats().entities == 0 and store.document("/docs/ms.txt") is None
        finally:
            store.close()  # breaks the server's next connection: it is stopped right after


def test_neo4j_schema_is_idempotent_cypher() -> None:
    """The statements a real Neo4j 5 gets (not runnable here): all IF NOT EXISTS."""
    statements = cypher.neo4j_schema()
    assert len(statements) == 8 and all("IF NOT EXISTS" in s for s in statements)
    assert "CREATE CONSTRAINT entity_id IF NOT EXISTS FOR (n:Entity) REQUIRE n.id IS UNIQUE" \
        in statements


def test_an_unreachable_neo4j_is_a_clear_error() -> None:
    with pytest.raises(GraphStoreError, match=r"cannot reach Neo4j.*SUTAZAI_KG_URI"):
        Neo4jStore(f"bolt://127.0.0.1:{free_port()}", "neo4j", "pw")
    with pytest.raises(GraphStoreError, match="invalid Neo4j URI"):
        Neo4jStore("http://x", "neo4j", "pw")


def test_neo4j_search_statements_use_its_index_procedures() -> None:
    """Not runnable here (see the module docstring): the statements Neo4j would get."""
    from sutazai.knowledge.stores.neo4j import Neo4jStore

    assert "db.index.vector.queryNodes('chunk_embedding', $k, $vector)" in (
        Neo4jStore.VECTOR_SEARCH)
    assert "db.index.fulltext.queryNodes('chunk_text', $terms)" in Neo4jStore.FULLTEXT_SEARCH
    assert "$t" in Neo4jStore.VECTOR_SEARCH and "$t" in Neo4jStore.FULLTEXT_COUNT
    index = cypher.neo4j_vector_index(384)
    assert "IF NOT EXISTS" in index and "`vector.dimensions`: 384" in index
    assert cypher.fulltext_terms(["widget", "acme"], "neo4j") == "widget OR acme"
