"""The knowledge graph as a service: what the CLI, a KFP component or a DAG task calls.

``open_store`` gives the configured store — the embedded FalkorDB (started here, stopped
on exit), a FalkorDB server (``kg_uri=redis://...``) or Neo4j (``kg_store=neo4j``) — and
``ingest`` runs documents through loading, chunking, extraction, resolution and upsert;
a pipeline runs the same in two steps, ``extract_documents`` then ``upsert_documents``.
A document that fails is recorded in the report and the batch goes on.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sutazai.config import Settings
from sutazai.errors import ConfigError, DocumentError, GraphStoreError, NotFoundError
from sutazai.knowledge import documents
from sutazai.knowledge.answer import Generator
from sutazai.knowledge.extract import ChunkExtractor, SpacyExtractor, load_spacy
from sutazai.knowledge.models import (
    RELATION_MODES,
    Answer,
    Chunk,
    DocumentGraph,
    DocumentRecord,
    EmbedReport,
    ExtractedDocument,
    Extraction,
    ExtractionBatch,
    FailedDocument,
    GraphStats,
    IngestReport,
    LoadedDocument,
    SearchResult,
    SkippedLink,
)
from sutazai.knowledge.resolve import Resolver
from sutazai.knowledge.retrieve import RETRIEVERS
from sutazai.knowledge.stores.base import GraphStore, now_ms
from sutazai.observability.tracing import traced
from sutazai.progress import NULL_PROGRESS, Progress
from sutazai.security.secrets import GRAPH_PASSWORD, optional_secret

log = logging.getLogger(__name__)


@contextlib.contextmanager
def open_store(settings: Settings, *, read_only: bool = False) -> Iterator[GraphStore]:
    """The configured graph store, schema in place; an embedded server lives as long as
    the ``with`` block. ``read_only`` callers may share an embedded server another process
    runs instead of waiting for it."""
    if settings.kg_store == "neo4j":
        if not settings.kg_uri:
            raise ConfigError("kg_store is neo4j but kg_uri is unset; set SUTAZAI_KG_URI, "
                              "e.g. neo4j://neo4j.internal:7687")
        from sutazai.knowledge.stores.neo4j import Neo4jStore

        password = _server_password(settings)
        store: GraphStore = Neo4jStore(settings.kg_uri, settings.kg_user, password,
                                       database=settings.kg_neo4j_database,
                                       batch_size=settings.kg_batch_size)
        with store:
            store.ensure_schema()
            yield store
        return
    from sutazai.knowledge.stores.falkordb import FalkorDBStore

    if settings.kg_uri:
        parsed = urlparse(settings.kg_uri)
        if parsed.scheme not in ("redis", "falkor", "falkordb") or not parsed.hostname:
            raise ConfigError(f"kg_uri {settings.kg_uri!r} is not a FalkorDB address; use "
                              "redis://host:6379, or kg_store=neo4j for a Neo4j URI")
        store = FalkorDBStore(parsed.hostname, parsed.port or 6379, settings.kg_graph,
                              _server_password(settings) or parsed.password,
                              settings.kg_batch_size)
        with store:
            store.ensure_schema()
            yield store
        return
    from sutazai.knowledge.server import EmbeddedFalkorDB, graph_password, running_server

    secret = graph_password(settings)
    shared = running_server(settings.home / "graph") if read_only else None
    if shared is not None:
        try:
            guest = FalkorDBStore(*shared, settings.kg_graph, secret, settings.kg_batch_size)
        except GraphStoreError:
            guest = None  # it stopped meanwhile: start one below
        if guest is not None:
            with guest:
                yield guest
            return
    with EmbeddedFalkorDB(settings.home / "graph", secret) as server, FalkorDBStore(
            server.host, server.port, settings.kg_graph, secret,
            settings.kg_batch_size) as store:
        store.ensure_schema()
        yield store


def _server_password(settings: Settings) -> str | None:
    """The secret ``graph/password`` for a server someone else runs; None when the provider
    has none (a server without authentication, or a password in the FalkorDB URI)."""
    secret = optional_secret(settings, GRAPH_PASSWORD)
    return secret.get_secret_value() if secret is not None else None


def store_label(settings: Settings) -> str:
    """Which store, for reports; never the credentials a URI may carry."""
    if not settings.kg_uri:
        return f"{settings.kg_store} (embedded, {settings.home / 'graph'})"
    parsed = urlparse(settings.kg_uri)
    return f"{settings.kg_store} {parsed.scheme}://{parsed.hostname}:{parsed.port or ''}"


def ingest(settings: Settings, paths: list[str], *, relations: str = "svo",
           follow_links: bool | None = None, valid_from: int | None = None,
           embed: bool = True, progress: Progress = NULL_PROGRESS) -> IngestReport:
    """Ingest files, folders (txt, md, html, pdf inside) and http(s) URIs.

    ``relations``: ``svo`` (spaCy dependencies), ``llm`` (the served model, constrained to
    the declared types), ``both``, or ``none`` (entities only). Unchanged documents are
    skipped; a changed one (same path or URI) becomes its current version and the previous
    one is kept as superseded, valid up to ``valid_from`` (epoch ms; default the date the
    document states, else now). ``follow_links``: follow links out of the folders given
    (default the setting ``kg_follow_links``, off); the links skipped are listed in
    ``links_skipped``. ``embed``: embed the new chunks with the embeddings champion when
    the repository has one (the pipeline runs that as a step of its own).
    """
    _check_relations(relations)
    started = time.monotonic()
    report = IngestReport(store=store_label(settings))
    sources = _expand(settings, paths, follow_links, report)
    with open_store(settings) as store:
        pipeline = _Pipeline(settings, store, relations)
        for source in _each(sources, progress):
            try:
                doc = pipeline.load(source)
                if not pipeline.skip_stored(doc, report, valid_from):
                    chunks, found = pipeline.extract(doc, report)
                    pipeline.write(doc, chunks, found, pipeline.extractor_names, report,
                                   valid_from)
            except DocumentError as exc:  # this document only (see _each)
                report.documents_failed.append(FailedDocument(path=source, error=str(exc)))
        if embed and report.chunks:
            _embed_new(settings, store, report, progress)
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _embed_new(settings: Settings, store: GraphStore, report: IngestReport,
               progress: Progress) -> None:
    """Embed the chunks just written, when the repository has an embeddings model; the
    graph is complete without them (search falls back to full text and the graph)."""
    from sutazai.knowledge.embed import embed_chunks, embedding_model_ref, load_embedder

    if embedding_model_ref(settings) is None:
        report.notes.append("chunks not embedded: no embeddings model in the repository "
                            "(vector search stays off until 'sutazai kg embed')")
        return
    done = embed_chunks(store, load_embedder(settings), progress)
    report.chunks_embedded, report.embedding_model = done.chunks_embedded, done.model


def embed(settings: Settings, progress: Progress = NULL_PROGRESS) -> EmbedReport:
    """Embed every chunk not yet embedded by the embeddings champion: new chunks, and all
    of them after the champion changed. Safe to re-run; a killed run resumes."""
    from sutazai.knowledge.embed import embed_chunks, load_embedder

    embedder = load_embedder(settings)
    with open_store(settings) as store:
        return embed_chunks(store, embedder, progress)


def search(settings: Settings, query: str, *, top: int = 5, as_of: int | None = None,
           use: Sequence[str] = RETRIEVERS) -> SearchResult:
    """Hybrid search (see :mod:`.retrieve`); a read: it never takes the writer's lock."""
    from sutazai.knowledge.retrieve import Retriever, check_query, open_retriever

    check_query(query)
    with open_store(settings, read_only=True) as store:
        retriever: Retriever = open_retriever(settings, store)
        return retriever.search(query, top, as_of=as_of, use=use)


@traced("extract_documents")
def extract_documents(settings: Settings, paths: list[str], *, relations: str = "svo",
                      follow_links: bool | None = None,
                      progress: Progress = NULL_PROGRESS) -> ExtractionBatch:
    """The compute half of an ingest, with no writes: load, chunk, extract.

    A pipeline runs it as a step of its own (the one that needs the model) and hands the
    batch to :func:`upsert_documents`. Documents the store already holds are marked
    unchanged rather than extracted again.
    """
    _check_relations(relations)
    started = time.monotonic()
    batch = ExtractionBatch(report=IngestReport(store=store_label(settings)))
    with open_store(settings, read_only=True) as store:
        pipeline = _Pipeline(settings, store, relations)
        for source in _each(_expand(settings, paths, follow_links, batch.report), progress):
            try:
                doc = pipeline.load(source)
                if pipeline.is_stored(doc):
                    batch.documents.append(ExtractedDocument(source=source, document=doc,
                                                             unchanged=True))
                    continue
                chunks, found = pipeline.extract(doc, batch.report)
            except DocumentError as exc:  # this document only (see _each)
                batch.report.documents_failed.append(FailedDocument(path=source,
                                                                    error=str(exc)))
                continue
            batch.documents.append(ExtractedDocument(
                source=source, document=doc, chunks=chunks, extractions=found,
                extractors=pipeline.extractor_names))
    batch.report.seconds = round(time.monotonic() - started, 3)
    return batch


@traced("upsert_documents")
def upsert_documents(settings: Settings, batch: ExtractionBatch,
                     progress: Progress = NULL_PROGRESS) -> IngestReport:
    """The write half: resolve each extraction against the stored entities and upsert it,
    with the same unchanged/replacement rules as :func:`ingest`."""
    started = time.monotonic()
    report = batch.report.model_copy(deep=True)
    with open_store(settings) as store:
        pipeline = _Pipeline(settings, store, "none")
        bar = progress.task("writing documents", total=len(batch.documents))
        try:
            for item in batch.documents:
                if not pipeline.skip_stored(item.document, report):
                    pipeline.write(item.document, item.chunks, item.extractions,
                                   item.extractors, report)
                bar.advance(1)
        finally:
            bar.close()
    report.seconds = round(report.seconds + time.monotonic() - started, 3)
    return report


def _expand(settings: Settings, paths: list[str], follow_links: bool | None,
            report: IngestReport) -> list[str]:
    """The documents ``paths`` name; links a folder ingest skipped go into the report and,
    once with their count, into the log."""
    follow = settings.kg_follow_links if follow_links is None else follow_links
    skipped: list[SkippedLink] = []
    sources = list(documents.expand(paths, follow_links=follow, skipped=skipped))
    if skipped:
        report.links_skipped = skipped
        shown = ", ".join(f"{link.path} ({link.reason})" for link in skipped[:5])
        log.warning("skipped %d link(s): %s%s; links leading outside the folder are followed "
                    "only with --follow-links (kg_follow_links)", len(skipped), shown,
                    ", ..." if len(skipped) > 5 else "")
    return sources


def _check_relations(relations: str) -> None:
    if relations not in RELATION_MODES:
        raise ConfigError(f"relations must be one of {', '.join(RELATION_MODES)}, "
                          f"not {relations!r}")


def _each(sources: list[str], progress: Progress) -> Iterator[str]:
    """Each source under a progress bar. Callers record a DocumentError against its
    document and go on; an unreachable store or model endpoint would fail every document
    alike, so those stop the batch (what is written stays, and the next run skips it as
    unchanged)."""
    bar = progress.task("ingesting documents", total=_total_bytes(sources))
    try:
        for source in sources:
            yield source
            bar.advance(_size(source))
    finally:
        bar.close()


def ask(settings: Settings, question: str, *, top: int | None = None,
        as_of: int | None = None, generate: bool | str = True,
        generator: Generator | None = None) -> Answer:
    """Retrieve, then answer with cited passages (see :mod:`.answer`); a read.

    The answer is generated by ``generator`` when given (the gateway passes the chat
    engine it serves), else by the chat champion (:func:`.answer.chat_generator`) unless
    ``generate`` is off (False, or a string: the reason, which the answer's notes give);
    otherwise it is extracted."""
    from sutazai.knowledge.answer import answer, chat_generator
    from sutazai.knowledge.retrieve import check_query, open_retriever

    started = time.monotonic()
    check_query(question)
    with open_store(settings, read_only=True) as store:
        retriever = open_retriever(settings, store)
        result = retriever.search(question, top or settings.kg_ask_passages, as_of=as_of)
    why: str | None = None
    if generator is None:
        if generate is True:
            generator, why = chat_generator(settings)
        else:
            why = generate or "answers are not generated (--no-generate)"
    reply = answer(question, result, generator=generator, embedder=retriever.embedder,
                   min_similarity=settings.kg_min_similarity)
    if why and reply.mode == "extractive":
        reply.notes.append(f"{why}: the answer is extracted from the passages")
    reply.seconds = round(time.monotonic() - started, 4)  # retrieval included
    return reply


def graph_stats(settings: Settings, as_of: int | None = None) -> GraphStats:
    """Documents, chunks, entities by type and relations by type (as of a moment)."""
    with open_store(settings, read_only=True) as store:
        stats = store.stats(as_of)
    stats.store = store_label(settings)
    return stats


def remove_document(settings: Settings, ref: str) -> tuple[str, int]:
    """Remove the document with this path, URI or id (prefix); (its uri, entities removed)."""
    with open_store(settings) as store:
        candidates = store.find_documents(ref)
        if not candidates and not documents.is_url(ref):
            candidates = store.find_documents(str(Path(ref).expanduser().resolve()))
        if not candidates:
            raise NotFoundError(f"no document {ref!r} in the graph; give its path, URI or id "
                                "('sutazai kg query \"MATCH (d:Document) RETURN d.id, d.uri\"' "
                                "lists them)")
        if len({c.uri for c in candidates}) > 1:
            raise NotFoundError(f"{ref!r} matches {len(candidates)} documents; give more of "
                                "the id")
        # every version stored under that name (two only after an interrupted replacement)
        removed = sum(store.delete_document(c.id) for c in candidates)
        return candidates[0].uri, removed


class _Pipeline:
    """The per-document steps, with the extractors and the resolver loaded once."""

    def __init__(self, settings: Settings, store: GraphStore, relations: str) -> None:
        self.settings = settings
        self.store = store
        self.relations = relations
        self._extractors: list[ChunkExtractor] | None = None
        self._resolver: Resolver | None = None

    @property
    def extractors(self) -> list[ChunkExtractor]:
        if self._extractors is None:
            nlp, version = load_spacy(self.settings)
            svo = self.relations in ("svo", "both")
            stages: list[ChunkExtractor] = [SpacyExtractor(nlp, version,
                                                           self.settings.kg_entity_types, svo)]
            if self.relations in ("llm", "both"):
                from sutazai.knowledge.llm_extract import LLMExtractor

                stages.append(LLMExtractor.from_settings(self.settings))
            self._extractors = stages
        return self._extractors

    @property
    def resolver(self) -> Resolver:
        if self._resolver is None:
            self._resolver = Resolver(self.store.entity_catalog(self.settings.kg_entity_types),
                                      self.settings.kg_fuzzy_threshold)
        return self._resolver

    @property
    def extractor_names(self) -> list[str]:
        return [f"{stage.name}:{stage.model}" for stage in self.extractors]

    def load(self, source: str) -> LoadedDocument:
        return documents.load(source, max_bytes=int(self.settings.kg_max_document_mib * 2**20),
                              timeout_s=self.settings.http_timeout_s)

    def is_stored(self, doc: LoadedDocument) -> bool:
        """Whether these bytes are stored already, under this name or another (reads only)."""
        return (any(v.id == doc.id for v in self.store.documents_at(doc.uri))
                or self.store.document_by_id(doc.id) is not None)

    def skip_stored(self, doc: LoadedDocument, report: IngestReport,
                    valid_from: int | None = None) -> bool:
        """Count a stored document as unchanged (and mend the intervals an interrupted
        ingest left); False when it must be written.

        Unchanged: these bytes are this name's current version, or the version dated
        ``valid_from``, or are stored under another name (ids are content hashes, so not
        twice). Bytes equal to a superseded version (a revert) are written again as the
        current version: that version's earlier interval is not kept.
        """
        versions = self.store.documents_at(doc.uri)
        same = next((v for v in versions if v.id == doc.id), None)
        if same is not None:
            current = versions[-1].id == same.id
            if current or (valid_from is None and same.valid_to is None) or (
                    valid_from is not None and same.valid_from == valid_from):
                report.documents_unchanged += 1
                self._retime(doc.uri)
                return True
            self._drop([same])  # a revert: written again below, as the latest version
            return False
        twin = self.store.document_by_id(doc.id)
        if twin is not None:
            report.documents_unchanged += 1
            log.info("%s has the content of %s; not ingested twice", doc.uri, twin.uri)
            return True
        return False

    def write(self, doc: LoadedDocument, chunks: list[Chunk], found: list[Extraction],
              extractors: list[str], report: IngestReport, valid_from: int | None = None
              ) -> None:
        """Resolve against the stored entities and upsert this version, valid from
        ``valid_from`` (else the date the document states, else now) up to the next
        version's start; then the previous version ends where this one starts."""
        if self.store.has_leftovers(doc.id):
            self.store.delete_document(doc.id)  # an interrupted earlier write
        others = [v for v in self.store.documents_at(doc.uri) if v.id != doc.id]
        start = valid_from if valid_from is not None else doc.dated or now_ms()
        later = [v.valid_from for v in others if v.valid_from is not None
                 and v.valid_from > start]
        entities, mentions, relations = self.resolver.resolve(found)
        graph = DocumentGraph(document=doc, chunks=chunks, entities=entities, mentions=mentions,
                              relations=relations, extractors=extractors, valid_from=start,
                              valid_to=min(later) if later else None)
        self.store.upsert_document(graph)  # the new version first: never no version
        if others:
            self._retime(doc.uri)
            report.documents_replaced += 1
        report.documents_ingested += 1
        report.chunks += len(graph.chunks)
        report.entities += len(graph.entities)
        report.mentions += len(graph.mentions)
        report.relations += len(graph.relations)

    def _retime(self, uri: str) -> None:
        """Each version of ``uri`` valid from its start to the next one's (the last: open).
        Versions written before intervals existed start when they were ingested."""
        versions = sorted(self.store.documents_at(uri),
                          key=lambda v: (v.valid_from if v.valid_from is not None
                                         else v.ingested or 0, v.ingested or 0))
        for version, after in zip(versions, [*versions[1:], None], strict=True):
            start = version.valid_from if version.valid_from is not None else (
                version.ingested or 0)
            end = None if after is None else (after.valid_from if after.valid_from is not None
                                              else after.ingested)
            if (version.valid_from, version.valid_to) != (start, end):
                self.store.set_interval(version.id, start, end)

    def _drop(self, versions: list[DocumentRecord]) -> None:
        for version in versions:
            self.store.delete_document(version.id)
        if versions:
            self._resolver = None  # entities may have gone with them

    def extract(self, doc: LoadedDocument, report: IngestReport
                ) -> tuple[list[Chunk], list[Extraction]]:
        chunks = documents.chunk(doc, self.settings.kg_chunk_chars,
                                 self.settings.kg_chunk_overlap)
        found: list[Extraction] = []
        for stage in self.extractors:
            found += stage.extract(chunks)
        for extraction in found:
            report.llm_invalid_outputs += extraction.invalid
            report.llm_chunks_skipped += extraction.skipped
            report.relations_dropped += extraction.dropped
            for reason, count in extraction.entities_dropped.items():
                report.entities_dropped[reason] = report.entities_dropped.get(reason, 0) + count
        return chunks, found


def _size(source: str) -> int:
    with contextlib.suppress(OSError):
        return Path(source).stat().st_size
    return 0


def _total_bytes(sources: list[str]) -> int:
    return sum(_size(s) for s in sources)


def as_dict(model: Any) -> Any:
    return model.model_dump(mode="json")
