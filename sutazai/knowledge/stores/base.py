"""The graph store interface and the logic every store shares.

A store only has to run Cypher (:meth:`GraphStore._read`, :meth:`GraphStore._write`,
:meth:`GraphStore._write_all`) and create its schema; everything else — upserts in
``UNWIND`` batches, document replacement and removal, statistics, entity views, export —
is written once here on top of :mod:`sutazai.knowledge.cypher`, so FalkorDB and Neo4j
behave the same and a third store costs two small methods.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

from sutazai.errors import NotFoundError
from sutazai.knowledge import cypher
from sutazai.knowledge.models import (
    Citation,
    DocumentGraph,
    DocumentRecord,
    Entity,
    EntityView,
    GraphStats,
    MentionView,
    Neighbour,
    QueryResult,
)

Row = list[Any]
Statement = tuple[str, dict[str, Any]]
SNIPPET_CHARS = 80
CHUNKER = "sutazai-chunker-2"  # the chunking rules' version, for chunks' provenance


def batched(rows: Sequence[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(rows)
    while batch := list(islice(iterator, size)):
        yield batch


class GraphStore(ABC):
    """A property-graph database holding documents, chunks, entities and relations."""

    name: str = "graph"

    def __init__(self, batch_size: int = 1000) -> None:
        self.batch_size = batch_size

    # ----------------------------------------------------------- what a store implements
    @abstractmethod
    def ensure_schema(self) -> None:
        """Create indexes and unique constraints if they do not exist (idempotent)."""

    @abstractmethod
    def _read(self, statement: str, params: dict[str, Any] | None = None) -> list[Row]:
        """Run a read-only statement; rows of plain values."""

    @abstractmethod
    def _write(self, statement: str, params: dict[str, Any] | None = None) -> list[Row]:
        """Run one write statement in its own transaction."""

    @abstractmethod
    def _write_all(self, statements: Iterable[Statement]) -> None:
        """Run statements in order, in one transaction where the store has them."""

    @abstractmethod
    def query(self, statement: str, params: dict[str, Any] | None = None, *,
              write: bool = False) -> QueryResult:
        """A user's Cypher; read-only unless ``write`` (enforced by the store itself)."""

    @abstractmethod
    def close(self) -> None: ...

    # The statements that differ per store (cypher.py has both stores' versions).
    VECTOR_SEARCH: str
    FULLTEXT_SEARCH: str
    FULLTEXT_COUNT: str
    SET_EMBEDDINGS: str

    @abstractmethod
    def create_vector_index(self, dimension: int, *, replace: bool = False) -> None:
        """The chunks' vector index for ``dimension``; ``replace`` drops the old one first
        (another embedding model, another dimension)."""

    def __enter__(self) -> GraphStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------ writing
    def _batches(self, statement: str, rows: Sequence[dict[str, Any]]) -> Iterator[Statement]:
        for batch in batched(rows, self.batch_size):
            yield statement, {"rows": batch}

    def upsert_entities(self, entities: Sequence[Entity]) -> None:
        """Upsert entities in UNWIND batches of ``batch_size``."""
        self._write_all(self._entity_statements(entities))

    def _entity_statements(self, entities: Sequence[Entity]) -> list[Statement]:
        """UNWIND ... MERGE batches; a store may do better (FalkorDB creates new ones)."""
        return list(self._batches(cypher.UPSERT_ENTITIES, entity_rows(entities)))

    def upsert_entity(self, entity: Entity) -> None:
        """One MERGE per entity: the slow way, kept as the benchmark's baseline."""
        [row] = entity_rows([entity])
        self._write(cypher.UPSERT_ENTITY, row)

    def upsert_document(self, graph: DocumentGraph) -> None:
        """Write a document's chunks, entities, mentions and relations, the Document last.

        Every statement is a MERGE on our own ids, so writing the same graph twice changes
        nothing, and an interrupted write is completed by the next ingest (the Document
        node, written last, is what marks a document as stored).
        """
        doc = graph.document
        # every part carries its version's interval (valid_to absent: the current version)
        interval = {"valid_from": graph.valid_from,
                    **({"valid_to": graph.valid_to} if graph.valid_to is not None else {})}
        chunk_rows = [{"id": c.id, "props": {
            "document": c.document, "index": c.index, "start": c.start, "end": c.end,
            "text": c.text, "search_text": " ".join(c.text.split()), "chunk": c.id,
            "extractor": "chunker", "model": CHUNKER,
            "heading": " > ".join(c.heading), **interval,
            **({"page": c.page} if c.page is not None else {})}}
            for c in graph.chunks]
        mention_rows = [{"chunk": m.mention.provenance.chunk, "entity": m.entity,
                         "start": m.mention.start, "props": {
                             "end": m.mention.end, "text": m.mention.text,
                             "type": m.mention.type, "confidence": m.mention.confidence,
                             **interval, **m.mention.provenance.model_dump()}}
                        for m in graph.mentions]
        relation_rows = [{"source": r.source, "target": r.target, "type": r.type,
                          "chunk": r.provenance.chunk, "props": {
                              "confidence": r.confidence, "evidence": r.evidence,
                              "document": r.provenance.document,
                              "extractor": r.provenance.extractor,
                              "model": r.provenance.model, **interval}}
                         for r in graph.relations]
        link_rows = [{"chunk": c.id, "props": {
            "document": doc.id, "chunk": c.id, "extractor": "chunker", "model": CHUNKER}}
            for c in graph.chunks]
        statements: list[Statement] = [
            *self._batches(cypher.UPSERT_CHUNKS, chunk_rows),
            *self._entity_statements(graph.entities),
            *self._batches(cypher.UPSERT_MENTIONS, mention_rows),
            *self._batches(cypher.UPSERT_RELATIONS, relation_rows),
            (cypher.UPSERT_DOCUMENT, {"id": doc.id, "chunks": link_rows, "props": {
                "uri": doc.uri, "title": doc.title, "media_type": doc.media_type,
                "size": doc.size, "chars": len(doc.text), "chunks": len(graph.chunks),
                "document": doc.id, "chunk": "", "extractor": "loader",
                "model": ",".join(graph.extractors), **interval}}),
        ]
        self._write_all(statements)

    def set_interval(self, document_id: str, valid_from: int | None,
                     valid_to: int | None) -> None:
        """Set the interval of one stored version: its document, chunks, mentions and
        relations (the document first, so readers filtering on it see the change first)."""
        params = {"document": document_id, "valid_from": valid_from, "valid_to": valid_to}
        self._write_all([(statement, params) for statement in cypher.SET_DOCUMENT_INTERVAL])

    def delete_document(self, document_id: str) -> int:
        """Remove a document, its chunks, mentions and relations, and the entities it alone
        mentioned; returns how many entities went with it."""
        mentioned = [row[0] for row in self._read(cypher.MENTIONED_BY_DOCUMENT,
                                                  {"document": document_id})]
        params = {"document": document_id}
        self._write_all([(cypher.DELETE_DOCUMENT, params),  # first: never a half document
                         (cypher.DELETE_DOCUMENT_RELATIONS, params),
                         (cypher.DELETE_DOCUMENT_CHUNKS, params)])
        removed = 0
        for batch in batched(mentioned, self.batch_size):
            rows = self._write(cypher.DELETE_ORPHANS, {"ids": batch})
            removed += int(rows[0][0]) if rows else 0
        return removed

    # ------------------------------------------------------------------------ reading
    def document(self, uri: str) -> DocumentRecord | None:
        versions = self.documents_at(uri)
        return versions[0] if versions else None

    def documents_at(self, uri: str) -> list[DocumentRecord]:
        """Documents stored under this path or URI: one, unless a replacement was cut short
        between writing the new version and removing the old."""
        return [_document(row) for row in self._read(cypher.DOCUMENT_BY_URI, {"uri": uri})]

    def document_by_id(self, document_id: str) -> DocumentRecord | None:
        rows = self._read(cypher.DOCUMENT_BY_ID, {"id": document_id})
        return _document(rows[0]) if rows else None

    def find_documents(self, ref: str) -> list[DocumentRecord]:
        """Documents whose uri is ``ref``, or whose id starts with it."""
        by_uri = self.documents_at(ref)
        if by_uri:
            return by_uri
        if len(ref) < 6:
            return []
        return [_document(row) for row in self._read(cypher.DOCUMENTS_BY_PREFIX,
                                                     {"prefix": ref.lower()})]

    def has_leftovers(self, document_id: str) -> bool:
        """Chunks of a document whose write was interrupted (no Document node)."""
        rows = self._read(cypher.CHUNKS_OF, {"document": document_id})
        return bool(rows and rows[0][0])

    def entity_catalog(self, types: Sequence[str]) -> list[Entity]:
        """Every stored entity of these types: what new mentions are resolved against."""
        from sutazai.knowledge.resolve import normalise

        entities = []
        for eid, name, etype, key, aliases, confidence in self._read(
                cypher.ENTITY_CATALOG, {"types": list(types)}):
            aliases = list(aliases or [])
            key = key or normalise(name, etype)
            entities.append(Entity(id=eid, name=name, type=etype, key=key, aliases=aliases,
                                   keys=sorted({key, *(normalise(a, etype) for a in aliases)}
                                               - {""}),
                                   confidence=float(confidence or 0.0), stored=True))
        return entities

    def stats(self, as_of: int | None = None) -> GraphStats:
        """What the graph held at ``as_of`` (epoch ms; default now)."""
        at = {"t": now_ms() if as_of is None else as_of}

        def count(statement: str) -> int:
            rows = self._read(statement, at)
            return int(rows[0][0]) if rows else 0

        by_type = {str(t): int(n) for t, n in self._read(cypher.ENTITIES_BY_TYPE, at)}
        relations = {str(t): int(n) for t, n in self._read(cypher.RELATIONS_BY_TYPE, at)}
        return GraphStats(documents=count(cypher.COUNT_DOCUMENTS),
                          chunks=count(cypher.COUNT_CHUNKS),
                          entities=sum(by_type.values()), relations=sum(relations.values()),
                          mentions=count(cypher.COUNT_MENTIONS),
                          entities_by_type=dict(sorted(by_type.items())),
                          relations_by_type=dict(sorted(relations.items(),
                                                        key=lambda kv: (-kv[1], kv[0]))),
                          store=self.name)

    def entities_named(self, name: str) -> list[Row]:
        """Entities whose id, normalised name or alias matches ``name`` (any type)."""
        from sutazai.knowledge.resolve import normalise

        rows = self._read(cypher.ENTITY_BY_ID, {"id": name})
        if rows:
            return rows
        keys = {normalise(name, t) for t in ("PERSON", "ORG", "OTHER")} - {""}
        for key in sorted(keys):
            rows += [r for r in self._read(cypher.ENTITY_BY_KEY, {"key": key})
                     if r[0] not in {x[0] for x in rows}]
        if not rows:  # an alias: normalised here, as the resolver does (a full scan)
            for eid, etype, aliases in self._read(cypher.ENTITY_ALIASES):
                if any(normalise(a, etype) in keys for a in aliases or []):
                    rows += self._read(cypher.ENTITY_BY_ID, {"id": eid})
        return rows

    def entity(self, name: str, limit: int = 50, as_of: int | None = None) -> list[EntityView]:
        """The entities called ``name`` with neighbours and mentions (with snippets), as the
        versions valid at ``as_of`` (epoch ms; default now) state them."""
        t = now_ms() if as_of is None else as_of
        rows = self.entities_named(name)
        if not rows:
            from rapidfuzz import fuzz, process

            names = [str(r[0]) for r in self._read(cypher.ENTITY_NAMES) if r[0]]
            close = [m[0] for m in process.extract(name, names, scorer=fuzz.WRatio, limit=5,
                                                   score_cutoff=70)]
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else (
                "; 'sutazai kg stats' shows what the graph holds")
            raise NotFoundError(f"no entity named {name!r} in the graph{hint}")
        views = []
        for eid, ename, etype, aliases, confidence in rows:
            neighbours = [Neighbour(direction=direction, type=str(rtype),
                                    confidence=float(c or 0),
                                    entity=o, name=n, entity_type=ot, document=str(d or ""))
                          for direction, statement in (("out", cypher.NEIGHBOURS_OUT),
                                                       ("in", cypher.NEIGHBOURS_IN))
                          for rtype, c, o, n, ot, d in self._read(
                              statement, {"id": eid, "limit": limit, "t": t})]
            mentions = []
            for did, uri, cid, text, cstart, mstart, mend, mtext, mconf, extractor in self._read(
                    cypher.MENTIONS_OF, {"id": eid, "limit": limit, "t": t}):
                mentions.append(MentionView(
                    document=did, uri=uri, chunk=cid, text=mtext,
                    snippet=snippet(text, int(mstart) - int(cstart), int(mend) - int(cstart)),
                    confidence=float(mconf or 0), extractor=str(extractor)))
            views.append(EntityView(id=eid, name=ename, type=etype, aliases=list(aliases or []),
                                    confidence=float(confidence or 0), neighbours=neighbours,
                                    mentions=mentions))
        return views

    # ------------------------------------------------------------------------ search
    def chunks_to_embed(self, model: str, limit: int) -> list[tuple[str, str]]:
        """(id, text) of up to ``limit`` chunks not yet embedded by ``model``."""
        return [(str(cid), str(text or "")) for cid, text in
                self._read(cypher.CHUNKS_TO_EMBED, {"model": model, "limit": limit})]

    def embedding_models(self) -> dict[str, tuple[int, int]]:
        """The models the chunks are embedded with: name -> (dimension, chunks)."""
        return {str(name): (int(dim), int(n))
                for name, dim, n in self._read(cypher.EMBEDDING_MODELS)}

    def backfill_search_text(self) -> int:
        """Give chunks written before full-text search their one-line search text."""
        rows = self._write(cypher.BACKFILL_SEARCH_TEXT)
        return int(rows[0][0]) if rows else 0

    def clear_embeddings(self, keep_dimension: int) -> None:
        """Forget embeddings of another dimension (a new model replaces them)."""
        self._write(cypher.CLEAR_EMBEDDINGS, {"dim": keep_dimension})

    def set_embeddings(self, model: str, vectors: dict[str, list[float]]) -> None:
        rows = [{"id": cid, "vector": vector, "model": model, "dim": len(vector)}
                for cid, vector in vectors.items()]
        self._write_all(self._batches(self.SET_EMBEDDINGS, rows))

    def vector_search(self, vector: list[float], k: int, as_of: int) -> list[tuple[str, float]]:
        """(chunk id, cosine similarity) of the ``k`` nearest chunks valid at ``as_of``. The
        index is asked for more than ``k``, since superseded versions are filtered after."""
        rows = self._read(self.VECTOR_SEARCH, {"vector": vector, "k": k * 4, "t": as_of})
        return [(str(cid), float(sim)) for cid, sim in rows[:k]]

    def fulltext_candidates(self, words: Sequence[str], k: int, as_of: int
                            ) -> list[tuple[str, str]]:
        """(chunk id, search text) of up to ``k`` chunks with any of ``words`` (the store's
        own full-text index finds them; :mod:`..retrieve` ranks them by BM25)."""
        if not words:
            return []
        return [(str(cid), str(text or "")) for cid, text in self._read(
            self.FULLTEXT_SEARCH, {"terms": cypher.fulltext_terms(list(words), self.name),
                                   "k": k, "t": as_of})]

    def document_frequencies(self, words: Sequence[str], as_of: int) -> dict[str, int]:
        """How many chunks valid at ``as_of`` hold each word (as the index stems it)."""
        return {word: int(self._read(self.FULLTEXT_COUNT, {
            "terms": cypher.fulltext_terms([word], self.name), "t": as_of})[0][0])
            for word in words}

    def chunk_text_stats(self, as_of: int) -> tuple[int, float]:
        """(chunks valid at ``as_of``, their mean search-text length in characters)."""
        rows = self._read(cypher.CHUNK_TEXT_STATS, {"t": as_of})
        return (int(rows[0][0]), float(rows[0][1] or 0.0)) if rows else (0, 0.0)

    def entities_with_keys(self, keys: Sequence[str]) -> list[tuple[str, str]]:
        """(id, name) of the entities whose normalised name is one of ``keys``."""
        if not keys:
            return []
        return [(str(eid), str(name)) for eid, name in
                self._read(cypher.ENTITIES_BY_KEYS, {"keys": list(keys)})]

    def chunks_mentioning(self, entity_ids: Sequence[str], k: int, as_of: int, *,
                          neighbours: bool = False) -> list[tuple[str, int]]:
        """(chunk id, how many of the entities it mentions), most first; with
        ``neighbours``, the chunks that mention the entities' related entities instead."""
        if not entity_ids:
            return []
        statement = (cypher.CHUNKS_MENTIONING_NEIGHBOURS if neighbours
                     else cypher.CHUNKS_MENTIONING)
        return [(str(cid), int(found)) for cid, found in
                self._read(statement, {"ids": list(entity_ids), "k": k, "t": as_of})]

    def citations(self, chunk_ids: Sequence[str]) -> dict[str, tuple[str, Citation]]:
        """Each chunk's text and citation, by chunk id (chunks that vanished are absent)."""
        found: dict[str, tuple[str, Citation]] = {}
        for (cid, text, start, end, page, heading, did, uri, title, valid_from,
             valid_to) in self._read(cypher.CHUNKS_BY_ID, {"ids": list(chunk_ids)}):
            text = str(text or "")
            found[str(cid)] = (text, Citation(
                document=str(did), uri=str(uri), title=str(title or ""), chunk=str(cid),
                page=_int(page), heading=str(heading or ""), start=int(start or 0),
                end=int(end or 0), snippet=_passage_snippet(text),
                valid_from=_int(valid_from), valid_to=_int(valid_to)))
        return found

    def export(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """All nodes and edges as plain dictionaries (for GraphML/JSON writers)."""
        nodes = [{"id": nid, "label": lbl, "properties": dict(props or {})}
                 for lbl, nid, props in self._read(cypher.EXPORT_NODES)]
        edges = [{"source": s, "type": t, "target": d, "properties": dict(props or {})}
                 for s, t, d, props in self._read(cypher.EXPORT_EDGES)]
        return nodes, edges


def entity_rows(entities: Iterable[Entity]) -> list[dict[str, Any]]:
    rows = []
    for e in entities:
        p = e.provenance
        rows.append({"id": e.id, "name": e.name, "type": e.type, "key": e.key,
                     "aliases": e.aliases, "confidence": e.confidence,
                     "provenance": [p.document, p.chunk, p.extractor, p.model] if p else []})
    return rows


def _document(row: Row) -> DocumentRecord:
    did, uri, title, chunks, valid_from, valid_to, ingested = row
    return DocumentRecord(id=did, uri=uri, title=title or "", chunks=int(chunks or 0),
                          valid_from=_int(valid_from), valid_to=_int(valid_to),
                          ingested=_int(ingested))


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _passage_snippet(text: str, width: int = 2 * SNIPPET_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[:width].rsplit(" ", 1)[0] + "…"


def snippet(text: str, start: int, end: int, width: int = SNIPPET_CHARS) -> str:
    """The mention in context, marked with brackets, about ``width`` characters each side."""
    start, end = max(0, start), min(len(text), end)
    left = max(0, start - width)
    right = min(len(text), end + width)
    body = f"{text[left:start]}[{text[start:end]}]{text[end:right]}"
    body = " ".join(body.split())
    return ("…" if left else "") + body + ("…" if right < len(text) else "")
