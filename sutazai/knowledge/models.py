"""Pydantic models at the knowledge graph's boundaries.

Extractors return these, the resolver turns mentions into canonical entities, the stores
write them, and the service reports with them, so every stage can be swapped or tested
alone and a pipeline step can pass them as JSON.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, Field

#: How relations are extracted: spaCy's dependency parse (subject-verb-object), the served
#: model (JSON-schema constrained), both, or none (entities only).
RelationMode = Literal["svo", "llm", "both", "none"]
RELATION_MODES: tuple[str, ...] = get_args(RelationMode)


class Provenance(BaseModel):
    """Where a fact came from: which document and chunk, found by what, with which model."""

    document: str
    chunk: str
    extractor: str  # "spacy-ner", "spacy-svo", "llm"
    model: str  # e.g. "en_core_web_sm-3.8.0" or the LLM's model name


class Chunk(BaseModel):
    """A slice of a document's text; ``start``/``end`` are character offsets in the document's
    extracted text, so ``document.text[start:end] == text`` and a citation can point at it.

    ``page``: the PDF page it lies on (1-based; None for other documents). ``heading``: the
    headings it sits under, outermost first. ``masks``: spans (document offsets) of code,
    URLs, paths and option names: searchable text that never becomes an entity.
    """

    id: str
    document: str
    index: int
    start: int
    end: int
    text: str
    page: int | None = None
    heading: list[str] = Field(default_factory=list)
    masks: list[tuple[int, int]] = Field(default_factory=list)


#: What a block of a document is: kinds of prose, and code (never a source of entities).
BlockKind = Literal["heading", "paragraph", "list_item", "table_row", "quote", "code", "page"]


class Block(BaseModel):
    """One block of a document's extracted text: ``text[start:end]``, under ``heading``."""

    kind: BlockKind
    start: int
    end: int
    heading: list[str] = Field(default_factory=list)
    page: int | None = None


class LoadedDocument(BaseModel):
    """A document read as text. ``id`` is the sha256 of its bytes; ``uri`` is where it lives."""

    id: str
    uri: str
    title: str
    media_type: str
    size: int
    text: str
    # the structure the parser found (empty: one block of plain text), and the spans of the
    # text that are code, URLs, paths or option names (see Chunk.masks)
    blocks: list[Block] = Field(default_factory=list)
    masks: list[tuple[int, int]] = Field(default_factory=list)
    # the date the document says it is of (PDF ModDate, HTML date meta, markdown front
    # matter), epoch ms: when this version became valid unless an ingest is told otherwise
    dated: int | None = None


class Mention(BaseModel):
    """One occurrence of an entity in a chunk (offsets in the document's text)."""

    text: str
    type: str
    start: int
    end: int
    confidence: float = Field(ge=0.0, le=1.0)
    provenance: Provenance


class RelationMention(BaseModel):
    """A relation between two mentions, as an extractor found it in one chunk."""

    subject: Mention
    object: Mention
    type: str
    confidence: float = Field(ge=0.0, le=1.0)
    evidence: str = ""
    provenance: Provenance


class Extraction(BaseModel):
    """What the extractors found in one chunk."""

    chunk: Chunk
    mentions: list[Mention] = Field(default_factory=list)
    relations: list[RelationMention] = Field(default_factory=list)
    skipped: int = 0  # LLM outputs that stayed invalid after retries (chunk-level)
    invalid: int = 0  # invalid LLM outputs seen, retried ones included
    dropped: int = 0  # relations whose ends were not found in the chunk
    # entity candidates dropped, per reason (url, path, file_name, identifier, version,
    # markup, heading, code, term): see extract.drop_reason
    entities_dropped: dict[str, int] = Field(default_factory=dict)


class Entity(BaseModel):
    """A canonical entity: one node, whatever the spelling of its mentions."""

    id: str
    name: str
    type: str
    key: str  # normalised name used for matching
    aliases: list[str] = Field(default_factory=list)
    keys: list[str] = Field(default_factory=list)  # normalised aliases, for lookups
    confidence: float = Field(default=0.0, ge=0.0, le=1.0)
    provenance: Provenance | None = None  # where it was first seen
    # Whether the store already holds it, when the resolver knows (it resolves against the
    # stored entities): lets a store CREATE new ones instead of MERGE. None: unknown.
    stored: bool | None = Field(default=None, exclude=True)


class Relation(BaseModel):
    """A resolved relation between two canonical entities, with its evidence."""

    source: str
    target: str
    type: str
    confidence: float = Field(ge=0.0, le=1.0)
    evidence: str = ""
    provenance: Provenance


class ResolvedMention(BaseModel):
    entity: str
    mention: Mention


class DocumentGraph(BaseModel):
    """Everything one document adds to the graph, ready to upsert."""

    document: LoadedDocument
    chunks: list[Chunk]
    entities: list[Entity]
    mentions: list[ResolvedMention]
    relations: list[Relation]
    extractors: list[str]
    valid_from: int = 0  # the version's interval, epoch ms (valid_to None: current)
    valid_to: int | None = None


class DocumentRecord(BaseModel):
    """A document version as stored; valid from ``valid_from`` up to ``valid_to`` (epoch ms;
    None: the current version, or a graph written before versions had intervals)."""

    id: str
    uri: str
    title: str = ""
    chunks: int = 0
    valid_from: int | None = None
    valid_to: int | None = None
    ingested: int | None = None


class FailedDocument(BaseModel):
    path: str
    error: str


class SkippedLink(BaseModel):
    """A link inside a folder that an ingest did not follow, and why (it leads outside the
    folder and following links was not asked for, or it is broken or a loop)."""

    path: str
    target: str
    reason: str


class IngestReport(BaseModel):
    """What one ingest did; ``documents_failed`` never stops the rest of the batch."""

    documents_ingested: int = 0
    documents_unchanged: int = 0
    documents_replaced: int = 0
    documents_failed: list[FailedDocument] = Field(default_factory=list)
    links_skipped: list[SkippedLink] = Field(default_factory=list)
    chunks: int = 0
    entities: int = 0  # distinct entities written (created or updated)
    mentions: int = 0
    relations: int = 0
    llm_invalid_outputs: int = 0
    llm_chunks_skipped: int = 0
    relations_dropped: int = 0
    entities_dropped: dict[str, int] = Field(default_factory=dict)  # candidates, per reason
    chunks_embedded: int = 0
    embedding_model: str = ""
    notes: list[str] = Field(default_factory=list)
    seconds: float = 0.0
    store: str = ""


class GraphStats(BaseModel):
    documents: int
    chunks: int
    entities: int
    relations: int
    mentions: int
    entities_by_type: dict[str, int]
    relations_by_type: dict[str, int]
    store: str = ""


class Neighbour(BaseModel):
    direction: str  # "out" or "in"
    type: str
    confidence: float
    entity: str
    name: str
    entity_type: str
    document: str


class MentionView(BaseModel):
    document: str
    uri: str
    chunk: str
    text: str
    snippet: str
    confidence: float
    extractor: str


class EntityView(BaseModel):
    """An entity with its neighbours and the mentions that support it."""

    id: str
    name: str
    type: str
    aliases: list[str]
    confidence: float
    neighbours: list[Neighbour]
    mentions: list[MentionView]


class QueryResult(BaseModel):
    columns: list[str]
    rows: list[list[object]]


class ExtractedDocument(BaseModel):
    """One document after the extract half of an ingest, before resolution: what a pipeline's
    extract step hands its upsert step. ``unchanged``: already stored, nothing extracted."""

    source: str
    document: LoadedDocument
    unchanged: bool = False
    chunks: list[Chunk] = Field(default_factory=list)
    extractions: list[Extraction] = Field(default_factory=list)
    extractors: list[str] = Field(default_factory=list)


class ExtractionBatch(BaseModel):
    """The extract step's output: the documents, and a report of what failed so far."""

    documents: list[ExtractedDocument] = Field(default_factory=list)
    report: IngestReport = Field(default_factory=IngestReport)


class Citation(BaseModel):
    """Where a passage lies: its document (and the version's interval), PDF page, heading
    path and character span in the document's extracted text, with a snippet to show."""

    document: str
    uri: str
    title: str = ""
    chunk: str
    page: int | None = None
    heading: str = ""
    start: int
    end: int
    snippet: str
    valid_from: int | None = None
    valid_to: int | None = None


class SearchHit(BaseModel):
    """One retrieved passage: its fused score and its rank in each retriever (None: that
    retriever did not find it)."""

    rank: int
    score: float
    text: str
    citation: Citation
    ranks: dict[str, int | None] = Field(default_factory=dict)
    similarity: float | None = None  # cosine similarity to the query, when embedded


class SearchResult(BaseModel):
    query: str
    as_of: int
    hits: list[SearchHit] = Field(default_factory=list)
    retrievers: list[str] = Field(default_factory=list)  # the ones that ran
    entities: list[str] = Field(default_factory=list)  # entities named in the query
    notes: list[str] = Field(default_factory=list)  # e.g. no embeddings: vector search off
    seconds: float = 0.0


class Answer(BaseModel):
    """An answer with the passages it cites (numbers refer to ``passages``, from 1).

    ``mode``: ``generated`` (the chat model's answer, its citations checked), ``extractive``
    (the best supporting sentences) or ``none`` (nothing relevant was found)."""

    question: str
    answer: str
    mode: Literal["generated", "extractive", "none"]
    cited: list[int] = Field(default_factory=list)
    passages: list[SearchHit] = Field(default_factory=list)
    model: str = ""
    notes: list[str] = Field(default_factory=list)
    as_of: int
    seconds: float = 0.0


class EmbedReport(BaseModel):
    """What an embedding step did: chunks embedded with which model, and how long."""

    model: str
    dimension: int = 0
    chunks_embedded: int = 0
    index_rebuilt: bool = False
    seconds: float = 0.0
