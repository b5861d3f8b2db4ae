"""FalkorDB through its Python client: the embedded default (see :mod:`..server`).

Writes go through ``GRAPH.QUERY``, reads and user queries through ``GRAPH.RO_QUERY``, which
FalkorDB refuses to run if the statement writes. FalkorDB has no multi-statement
transactions: a document's statements run in order with the Document node last, so an
interrupted write leaves no Document and the next ingest redoes it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import groupby
from typing import Any

from sutazai.errors import GraphStoreError
from sutazai.knowledge import cypher
from sutazai.knowledge.models import Entity, QueryResult
from sutazai.knowledge.stores.base import GraphStore, Row, Statement, entity_rows


class FalkorDBStore(GraphStore):
    name = "falkordb"
    VECTOR_SEARCH = cypher.FALKORDB_VECTOR_SEARCH
    FULLTEXT_SEARCH = cypher.FALKORDB_FULLTEXT_SEARCH
    FULLTEXT_COUNT = cypher.FALKORDB_FULLTEXT_COUNT
    SET_EMBEDDINGS = cypher.FALKORDB_SET_EMBEDDINGS

    def __init__(self, host: str, port: int, graph: str, password: str | None = None,
                 batch_size: int = 1000, timeout_s: float = 60.0, writers: int = 2) -> None:
        super().__init__(batch_size)
        import redis
        from falkordb import FalkorDB

        self.address = f"{host}:{port}"
        self.graph_name = graph
        self.writers = max(1, writers)
        self._writers: list[Any] = []
        self._connect = {"host": host, "port": port, "password": password,
                         "socket_timeout": timeout_s, "socket_connect_timeout": 10}
        try:
            self.db = FalkorDB(**self._connect)
            self.db.connection.ping()
        except redis.AuthenticationError:
            raise GraphStoreError(
                f"FalkorDB at {self.address} refused the password; put the server's "
                "password in the secret graph/password (SUTAZAI_SECRET_GRAPH_PASSWORD, or the "
                "secret provider)") from None
        except redis.RedisError as exc:
            raise GraphStoreError(f"cannot reach FalkorDB at {self.address} ({exc}); start "
                                  "it, or unset SUTAZAI_KG_URI to use the embedded one"
                                  ) from None
        self.graph = self.db.select_graph(graph)

    def _writer_graphs(self) -> list[Any]:
        """The main connection plus ``writers - 1`` more, opened on first use."""
        from falkordb import FalkorDB

        while len(self._writers) < self.writers - 1:
            self._writers.append(FalkorDB(**self._connect).select_graph(self.graph_name))
        return [self.graph, *self._writers]

    def _run(self, statement: str, params: dict[str, Any] | None, read_only: bool,
             graph: Any = None) -> Any:
        import redis

        graph = graph if graph is not None else self.graph
        try:
            if read_only:
                return graph.ro_query(statement, params)
            return graph.query(statement, params)
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

    def create_vector_index(self, dimension: int, *, replace: bool = False) -> None:
        if replace:
            with contextlib.suppress(GraphStoreError):  # none yet
                self._run(cypher.FALKORDB_DROP_VECTOR_INDEX, None, False)
        try:
            self._run(cypher.falkordb_vector_index(dimension), None, False)
        except GraphStoreError as exc:
            if "already indexed" not in str(exc):
                raise

    def _read(self, statement: str, params: dict[str, Any] | None = None) -> list[Row]:
        return list(self._run(statement, params, True).result_set)

    def _entity_statements(self, entities: Sequence[Entity]) -> list[Statement]:
        """CREATE batches for entities the resolver knows to be new (see
        cypher.CREATE_ENTITIES; 40 % faster), MERGE batches for the rest."""
        new = entity_rows([e for e in entities if e.stored is False])
        rest = entity_rows([e for e in entities if e.stored is not False])
        return [*self._batches(cypher.CREATE_ENTITIES, new),
                *self._batches(cypher.UPSERT_ENTITIES, rest)]

    def _write(self, statement: str, params: dict[str, Any] | None = None) -> list[Row]:
        return list(self._run_write(statement, params, None).result_set)

    def _run_write(self, statement: str, params: dict[str, Any] | None, graph: Any) -> Any:
        try:
            return self._run(statement, params, False, graph)
        except GraphStoreError as exc:
            if statement is cypher.CREATE_ENTITIES and "unique constraint" in str(exc):
                # another writer created some of them since the read: FalkorDB undid the
                # whole batch, which MERGE now writes
                return self._run(cypher.UPSERT_ENTITIES, params, False, graph)
            raise

    def _write_all(self, statements: Iterable[Statement]) -> None:
        """In order, except that batches of one statement overlap on ``writers``
        connections: FalkorDB applies writes one at a time, but while it runs one batch
        the client (which spends a third of the time turning parameters into text) can
        prepare and send the next. Each group finishes before the next statement starts,
        so the Document node still comes last."""
        for statement, group in groupby(statements, key=lambda s: s[0]):
            batches = [params for _, params in group]
            if len(batches) == 1 or self.writers == 1:
                for params in batches:
                    self._run_write(statement, params, None)
                continue
            graphs = self._writer_graphs()
            with ThreadPoolExecutor(len(graphs)) as pool:
                futures = [pool.submit(self._run_write, statement, params,
                                       graphs[i % len(graphs)])
                           for i, params in enumerate(batches)]
                for future in futures:
                    future.result()

    def query(self, statement: str, params: dict[str, Any] | None = None, *,
              write: bool = False) -> QueryResult:
        if not write and (clause := cypher.writes(statement)):
            raise GraphStoreError(f"the query writes ({clause}); add --write to allow it")
        result = self._run(statement, params or {}, not write)
        columns = [str(h[1]) for h in (result.header or [])]
        return QueryResult(columns=columns,
                           rows=[[plain(v) for v in row] for row in result.result_set])

    def close(self) -> None:
        for graph in self._writers:
            with contextlib.suppress(Exception):
                graph.client.connection.close()
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
