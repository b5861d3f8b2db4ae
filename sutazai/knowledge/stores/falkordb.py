"""FalkorDB through its Python client: the embedded default (see :mod:`..server`).

Writes go through ``GRAPH.QUERY``, reads and user queries through ``GRAPH.RO_QUERY``, which
FalkorDB refuses to run if the statement writes. FalkorDB has no multi-statement
transactions: a document's statements run in order with the Document node last, so an
interrupted write leaves no Document and the next ingest redoes it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sutazai.errors import GraphStoreError
from sutazai.knowledge import cypher
from sutazai.knowledge.models import QueryResult
from sutazai.knowledge.stores.base import GraphStore, Row, Statement


class FalkorDBStore(GraphStore):
    name = "falkordb"

    def __init__(self, host: str, port: int, graph: str, password: str | None = None,
                 batch_size: int = 1000, timeout_s: float = 60.0) -> None:
        super().__init__(batch_size)
        import redis
        from falkordb import FalkorDB

        self.address = f"{host}:{port}"
        self.graph_name = graph
        try:
            self.db = FalkorDB(host=host, port=port, password=password,
                               socket_timeout=timeout_s, socket_connect_timeout=10)
            self.db.connection.ping()
        except redis.AuthenticationError:
            raise GraphStoreError(
                f"FalkorDB at {self.address} refused the password; set SUTAZAI_KG_PASSWORD "
                "to the server's password") from None
        except redis.RedisError as exc:
            raise GraphStoreError(f"cannot reach FalkorDB at {self.address} ({exc}); start "
                                  "it, or unset SUTAZAI_KG_URI to use the embedded one"
                                  ) from None
        self.graph = self.db.select_graph(graph)

    def _run(self, statement: str, params: dict[str, Any] | None, read_only: bool) -> Any:
        import redis

        try:
            if read_only:
                return self.graph.ro_query(statement, params)
            return self.graph.query(statement, params)
        except redis.ResponseError as exc:
            raise GraphStoreError(f"FalkorDB refused the statement: {exc}") from None
        except redis.RedisError as exc:
            raise GraphStoreError(f"FalkorDB at {self.address} failed ({exc})") from None

    def ensure_schema(self) -> None:
        """Indexes, then unique constraints; FalkorDB has no IF NOT EXISTS, so "already
        indexed" and "already exists" answers mean the schema is in place."""
        import redis

        for statement in cypher.falkordb_schema():
            try:
                self.graph.query(statement)
            except redis.ResponseError as exc:
                if "already indexed" not in str(exc):
                    raise GraphStoreError(f"FalkorDB refused an index: {exc}") from None
            except redis.RedisError as exc:
                raise GraphStoreError(f"FalkorDB at {self.address} failed ({exc})") from None
        for command in cypher.falkordb_constraints(self.graph_name):
            try:
                self.db.connection.execute_command(*command)
            except redis.ResponseError as exc:
                if "already exists" not in str(exc):
                    raise GraphStoreError(f"FalkorDB refused a constraint: {exc}") from None

    def _read(self, statement: str, params: dict[str, Any] | None = None) -> list[Row]:
        return list(self._run(statement, params, True).result_set)

    def _write(self, statement: str, params: dict[str, Any] | None = None) -> list[Row]:
        return list(self._run(statement, params, False).result_set)

    def _write_all(self, statements: Iterable[Statement]) -> None:
        for statement, params in statements:
            self._run(statement, params, False)

    def query(self, statement: str, params: dict[str, Any] | None = None, *,
              write: bool = False) -> QueryResult:
        if not write and (clause := cypher.writes(statement)):
            raise GraphStoreError(f"the query writes ({clause}); add --write to allow it")
        result = self._run(statement, params or {}, not write)
        columns = [str(h[1]) for h in (result.header or [])]
        return QueryResult(columns=columns,
                           rows=[[plain(v) for v in row] for row in result.result_set])

    def close(self) -> None:
        import contextlib

        with contextlib.suppress(Exception):
            self.db.connection.close()


def plain(value: Any) -> Any:
    """FalkorDB's Node/Edge/Path objects as JSON-friendly dictionaries."""
    from falkordb import Edge, Node, Path

    if isinstance(value, Node):
        return {"labels": list(value.labels or []), "properties": dict(value.properties)}
    if isinstance(value, Edge):
        return {"type": value.relation, "properties": dict(value.properties)}
    if isinstance(value, Path):
        return {"nodes": [plain(n) for n in value.nodes()],
                "edges": [plain(e) for e in value.edges()]}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return value
