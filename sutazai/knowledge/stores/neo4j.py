"""Neo4j through the official driver: the production store.

Schema statements use ``IF NOT EXISTS``; writes run as managed transactions
(``execute_write``), which the driver retries on transient errors and cluster leader
changes; a document's statements share one transaction, so readers see all of it or none.
Reads use ``execute_read`` (READ access mode: routed to followers in a cluster, and the
server refuses writes in it), which is also what makes ``sutazai kg query`` read-only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sutazai.errors import GraphStoreError
from sutazai.knowledge import cypher
from sutazai.knowledge.models import QueryResult
from sutazai.knowledge.stores.base import GraphStore, Row, Statement

BOLT_SCHEMES = ("neo4j", "neo4j+s", "neo4j+ssc", "bolt", "bolt+s", "bolt+ssc")


class Neo4jStore(GraphStore):
    name = "neo4j"
    VECTOR_SEARCH = cypher.NEO4J_VECTOR_SEARCH
    FULLTEXT_SEARCH = cypher.NEO4J_FULLTEXT_SEARCH
    FULLTEXT_COUNT = cypher.NEO4J_FULLTEXT_COUNT
    SET_EMBEDDINGS = cypher.NEO4J_SET_EMBEDDINGS

    def __init__(self, uri: str, user: str | None, password: str | None,
                 database: str | None = None, batch_size: int = 1000,
                 read_access_mode: bool = True, retry_s: float = 30.0) -> None:
        """``read_access_mode=False`` sends reads in WRITE mode; only for FalkorDB's
        experimental Bolt port, which takes the access-mode field for a graph name."""
        super().__init__(batch_size)
        import neo4j

        self.uri = uri
        self.database = database
        self.read_access_mode = read_access_mode
        auth = (user, password) if user and password is not None else None
        if uri.split("://", 1)[0] not in BOLT_SCHEMES:
            raise GraphStoreError(f"invalid Neo4j URI {uri!r}: use neo4j://host:7687 (or "
                                  "neo4j+s://, bolt://, bolt+s://)")
        try:
            self.driver = neo4j.GraphDatabase.driver(uri, auth=auth,
                                                     max_transaction_retry_time=retry_s)
        except (ValueError, neo4j.exceptions.ConfigurationError) as exc:
            raise GraphStoreError(f"invalid Neo4j URI {uri!r} ({exc}); use neo4j://host:7687 "
                                  "or bolt://host:7687") from None
        # Fail now, not after the driver's 30 s of transaction retries, when nothing answers.
        self._call(True, None)

    def _session(self, read: bool) -> Any:
        import neo4j

        mode = neo4j.READ_ACCESS if read and self.read_access_mode else neo4j.WRITE_ACCESS
        return self.driver.session(database=self.database, default_access_mode=mode)

    def _call(self, read: bool, work: Any) -> Any:
        import neo4j

        try:
            if work is None:
                self.driver.verify_connectivity()
                return None
            with self._session(read) as session:
                if read and self.read_access_mode:
                    return session.execute_read(work)
                return session.execute_write(work)
        except neo4j.exceptions.AuthError:
            raise GraphStoreError(f"Neo4j at {self.uri} refused the credentials; set "
                                  "SUTAZAI_KG_USER and the secret graph/password "
                                  "(SUTAZAI_SECRET_GRAPH_PASSWORD, or the secret "
                                  "provider)") from None
        except (neo4j.exceptions.ServiceUnavailable, neo4j.exceptions.SessionExpired) as exc:
            reason = " ".join(str(exc).split())
            raise GraphStoreError(f"cannot reach Neo4j at {self.uri} ({reason}); check "
                                  "SUTAZAI_KG_URI and that the server runs") from None
        except neo4j.exceptions.Neo4jError as exc:
            raise GraphStoreError(f"Neo4j refused the statement: {exc.message or exc}"
                                  ) from None

    def ensure_schema(self) -> None:
        for statement in cypher.neo4j_schema():
            self._call(False, lambda tx, s=statement: tx.run(s).consume())

    def create_vector_index(self, dimension: int, *, replace: bool = False) -> None:
        statements = [cypher.NEO4J_DROP_VECTOR_INDEX] if replace else []
        for statement in [*statements, cypher.neo4j_vector_index(dimension)]:
            self._call(False, lambda tx, s=statement: tx.run(s).consume())

    def _read(self, statement: str, params: dict[str, Any] | None = None) -> list[Row]:
        return self._call(True, lambda tx: [list(r.values()) for r in tx.run(statement,
                                                                               params or {})])

    def _write(self, statement: str, params: dict[str, Any] | None = None) -> list[Row]:
        return self._call(False, lambda tx: [list(r.values()) for r in tx.run(statement,
                                                                                params or {})])

    def _write_all(self, statements: Iterable[Statement]) -> None:
        work = list(statements)

        def run_all(tx: Any) -> None:
            for statement, params in work:
                tx.run(statement, params).consume()

        self._call(False, run_all)

    def query(self, statement: str, params: dict[str, Any] | None = None, *,
              write: bool = False) -> QueryResult:
        if not write and (clause := cypher.writes(statement)):
            raise GraphStoreError(f"the query writes ({clause}); add --write to allow it")

        def run(tx: Any) -> QueryResult:
            result = tx.run(statement, params or {})
            rows = [[plain(v) for v in record.values()] for record in result]
            return QueryResult(columns=list(result.keys()), rows=rows)

        result: QueryResult = self._call(not write, run)
        return result

    def close(self) -> None:
        self.driver.close()


def plain(value: Any) -> Any:
    """Driver graph objects as JSON-friendly dictionaries."""
    from neo4j.graph import Node, Path, Relationship

    if isinstance(value, Node):
        return {"labels": sorted(value.labels), "properties": dict(value)}
    if isinstance(value, Relationship):
        return {"type": value.type, "properties": dict(value)}
    if isinstance(value, Path):
        return {"nodes": [plain(n) for n in value.nodes],
                "edges": [plain(r) for r in value.relationships]}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return value
