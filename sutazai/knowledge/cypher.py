"""Every Cypher statement SutazAI sends to a graph store, in one place.

Only the subset FalkorDB and Neo4j 5 both run is used (PLATFORM-FACTS, "Knowledge
graph"): fixed labels, ``UNWIND $rows ... MERGE`` upserts keyed on our own ``id``
property, ``SET x += map``, ``timestamp()``, scalar or list-of-scalar properties, no
``CALL {}`` and no APOC. Every value travels as a query parameter; labels and
relationship types are constants checked against a whitelist, so no input ever becomes
Cypher text. Schema statements are the one thing that differs per store.
"""

from __future__ import annotations

import re

LABELS = frozenset({"Document", "Chunk", "Entity"})
RELATIONSHIP_TYPES = frozenset({"HAS_CHUNK", "MENTIONS", "RELATED"})


def label(name: str) -> str:
    """A node label from the whitelist (raises ValueError for anything else)."""
    if name not in LABELS:
        raise ValueError(f"label {name!r} is not one of {sorted(LABELS)}")
    return name


def relationship(name: str) -> str:
    if name not in RELATIONSHIP_TYPES:
        raise ValueError(f"relationship type {name!r} is not one of {sorted(RELATIONSHIP_TYPES)}")
    return name


# ------------------------------------------------------------------------------- schema
# (label, property) pairs: unique ids, and the properties lookups filter on.
UNIQUE = [("Entity", "id"), ("Document", "id"), ("Chunk", "id")]
INDEXED = [("Entity", "key"), ("Document", "uri"), ("Chunk", "document")]
EDGE_INDEXED = [("RELATED", "document")]


def falkordb_schema() -> list[str]:
    """Range indexes first: FalkorDB builds a unique constraint on top of an index."""
    nodes = [f"CREATE INDEX FOR (n:{label(lbl)}) ON (n.{prop})" for lbl, prop in UNIQUE + INDEXED]
    edges = [f"CREATE INDEX FOR ()-[r:{relationship(t)}]-() ON (r.{prop})"
             for t, prop in EDGE_INDEXED]
    return nodes + edges + [FALKORDB_FULLTEXT_INDEX]


def falkordb_constraints(graph: str) -> list[list[str]]:
    """``GRAPH.CONSTRAINT CREATE`` commands (a Redis command, not Cypher, on FalkorDB)."""
    return [["GRAPH.CONSTRAINT", "CREATE", graph, "UNIQUE", "NODE", label(lbl), "PROPERTIES",
             "1", prop] for lbl, prop in UNIQUE]


def neo4j_schema() -> list[str]:
    unique = [f"CREATE CONSTRAINT {lbl.lower()}_{prop} IF NOT EXISTS FOR (n:{label(lbl)}) "
              f"REQUIRE n.{prop} IS UNIQUE" for lbl, prop in UNIQUE]
    nodes = [f"CREATE INDEX {lbl.lower()}_{prop} IF NOT EXISTS FOR (n:{label(lbl)}) ON (n.{prop})"
             for lbl, prop in INDEXED]
    edges = [f"CREATE INDEX {t.lower()}_{prop} IF NOT EXISTS FOR ()-[r:{relationship(t)}]-() "
             f"ON (r.{prop})" for t, prop in EDGE_INDEXED]
    return unique + nodes + edges + [NEO4J_FULLTEXT_INDEX]


# ------------------------------------------------------------- search indexes (per store)
# The vector index's dimension is the embedding model's, known only when chunks are
# embedded (embed.py); ints only, so formatting it into the statement is safe.
def falkordb_vector_index(dimension: int) -> str:
    return (f"CREATE VECTOR INDEX FOR (c:Chunk) ON (c.embedding) "
            f"OPTIONS {{dimension:{int(dimension)}, similarityFunction:'cosine'}}")


FALKORDB_DROP_VECTOR_INDEX = "DROP VECTOR INDEX FOR (c:Chunk) ON (c.embedding)"
# The full-text indexes cover ``search_text``: the chunk's text on one line, since
# FalkorDB's tokenizer does not split on line breaks ("Community\n\nurllib3" would be one
# word) while the chunk's own text keeps them for citations.
FALKORDB_FULLTEXT_INDEX = "CALL db.idx.fulltext.createNodeIndex('Chunk', 'search_text')"


def neo4j_vector_index(dimension: int) -> str:
    return ("CREATE VECTOR INDEX chunk_embedding IF NOT EXISTS FOR (c:Chunk) ON c.embedding "
            f"OPTIONS {{indexConfig: {{`vector.dimensions`: {int(dimension)}, "
            "`vector.similarity_function`: 'cosine'}}")


NEO4J_DROP_VECTOR_INDEX = "DROP INDEX chunk_embedding IF EXISTS"
NEO4J_FULLTEXT_INDEX = ("CREATE FULLTEXT INDEX chunk_text IF NOT EXISTS FOR (c:Chunk) "
                        "ON EACH [c.search_text]")

# Chunks written before search_text existed get it (the embedding step runs this).
BACKFILL_SEARCH_TEXT = """
MATCH (c:Chunk)
WHERE c.search_text IS NULL
SET c.search_text = replace(replace(c.text, '\n', ' '), '\t', ' ')
RETURN count(c)
"""

# A chunk counts at time $t (epoch ms) when its version was valid then: valid_from <= t <
# valid_to, valid_to null for the current version (chunks written before versions had
# intervals count from the epoch).
VALID_AT = ("coalesce({v}.valid_from, 0) <= $t AND ({v}.valid_to IS NULL OR {v}.valid_to > $t)")
_CHUNK_VALID = VALID_AT.format(v="node")

# Each store's index procedures; the statements around them are the same.
_FALKORDB_VECTOR = "db.idx.vector.queryNodes('Chunk', 'embedding', $k, vecf32($vector))"
_NEO4J_VECTOR = "db.index.vector.queryNodes('chunk_embedding', $k, $vector)"
_FALKORDB_FULLTEXT = "db.idx.fulltext.queryNodes('Chunk', $terms)"
_NEO4J_FULLTEXT = "db.index.fulltext.queryNodes('chunk_text', $terms)"


def _vector_search(procedure: str, similarity: str) -> str:
    """Chunks nearest $vector, valid at $t, with their cosine similarity."""
    return f"""
CALL {procedure} YIELD node, score
WITH node, {similarity} AS similarity
WHERE {_CHUNK_VALID}
RETURN node.id, similarity
ORDER BY similarity DESC
"""


def _fulltext_search(procedure: str) -> str:
    """Up to $k chunks valid at $t with any of $terms (fulltext_terms), best first."""
    return f"""
CALL {procedure} YIELD node, score
WITH node, score
WHERE {_CHUNK_VALID}
RETURN node.id, node.search_text
ORDER BY score DESC
LIMIT $k
"""


def _fulltext_count(procedure: str) -> str:
    """How many chunks valid at $t hold $terms (a document frequency, for BM25)."""
    return f"""
CALL {procedure} YIELD node
WITH node
WHERE {_CHUNK_VALID}
RETURN count(node)
"""


# FalkorDB's vector index answers the cosine distance, Neo4j's the similarity.
FALKORDB_VECTOR_SEARCH = _vector_search(_FALKORDB_VECTOR, "1.0 - score")
NEO4J_VECTOR_SEARCH = _vector_search(_NEO4J_VECTOR, "score")
FALKORDB_FULLTEXT_SEARCH = _fulltext_search(_FALKORDB_FULLTEXT)
NEO4J_FULLTEXT_SEARCH = _fulltext_search(_NEO4J_FULLTEXT)
FALKORDB_FULLTEXT_COUNT = _fulltext_count(_FALKORDB_FULLTEXT)
NEO4J_FULLTEXT_COUNT = _fulltext_count(_NEO4J_FULLTEXT)

# The chunks' count and mean length (in characters) at $t: BM25's collection statistics.
CHUNK_TEXT_STATS = f"""
MATCH (c:Chunk)
WHERE {VALID_AT.format(v="c")}
RETURN count(c), avg(size(c.search_text))
"""


def fulltext_terms(words: list[str], store: str) -> str:
    """Any of ``words`` (word characters only: no user text is ever parsed as query
    syntax), in the store's syntax: RediSearch's ``a|b`` on FalkorDB, Lucene's ``a OR b``
    on Neo4j."""
    return ("|" if store == "falkordb" else " OR ").join(words)


# ------------------------------------------------------------------------------- writes
UPSERT_CHUNKS = """
UNWIND $rows AS r
MERGE (c:Chunk {id: r.id})
ON CREATE SET c.created = timestamp()
SET c += r.props
"""

# The statement the benchmark measures: one MERGE per row, batched by UNWIND. Entities
# carry seven properties, no more: on FalkorDB each property costs about as much to set as
# the MERGE itself (benchmarks/kg_upsert.py), so where an entity was first seen is one
# list, ``provenance`` = [document, chunk, extractor, model]. The resolver sends the merged
# aliases and the best confidence seen, so plain SETs suffice.
UPSERT_ENTITIES = """
UNWIND $rows AS r
MERGE (e:Entity {id: r.id})
ON CREATE SET e.provenance = r.provenance
SET e.name = r.name, e.type = r.type, e.key = r.key, e.aliases = r.aliases,
    e.confidence = r.confidence
"""

# The same upsert for one entity: the benchmark's baseline (one round trip per entity).
UPSERT_ENTITY = """
MERGE (e:Entity {id: $id})
ON CREATE SET e.provenance = $provenance
SET e.name = $name, e.type = $type, e.key = $key, e.aliases = $aliases,
    e.confidence = $confidence
"""

# FalkorDB's MERGE costs about 2.5x a CREATE on the server (25 against 10 ms per 1,000
# entities), so on FalkorDB the entities the resolver knows to be new are created; its
# unique constraint turns a race with another writer into an error, and that batch is
# redone with UPSERT_ENTITIES.
CREATE_ENTITIES = """
UNWIND $rows AS r
CREATE (e:Entity {id: r.id, provenance: r.provenance, name: r.name, type: r.type,
                  key: r.key, aliases: r.aliases, confidence: r.confidence})
"""

# Nodes of the shape PLATFORM-FACTS measured (id and name only): the benchmark's yardstick
# for what the entity properties above cost.
UPSERT_BARE_ENTITIES = """
UNWIND $rows AS r
MERGE (e:Entity {id: r.id})
SET e.name = r.name
"""

UPSERT_MENTIONS = """
UNWIND $rows AS r
MATCH (c:Chunk {id: r.chunk})
MATCH (e:Entity {id: r.entity})
MERGE (c)-[m:MENTIONS {start: r.start}]->(e)
SET m += r.props
"""

UPSERT_RELATIONS = """
UNWIND $rows AS r
MATCH (a:Entity {id: r.source})
MATCH (b:Entity {id: r.target})
MERGE (a)-[x:RELATED {type: r.type, chunk: r.chunk}]->(b)
SET x += r.props
"""

# Written last, with its HAS_CHUNK edges in the same (atomic) statement: a Document node
# exists only once all its chunks, mentions, relations and links do.
UPSERT_DOCUMENT = """
MERGE (d:Document {id: $id})
ON CREATE SET d.created = timestamp()
SET d += $props, d.ingested = timestamp()
WITH d
UNWIND $chunks AS r
MATCH (c:Chunk {id: r.chunk})
MERGE (d)-[h:HAS_CHUNK]->(c)
SET h += r.props
"""

# Embeddings are written apart from the chunks (embed.py): FalkorDB stores vectors as
# vecf32, Neo4j as a list of floats its vector index reads.
FALKORDB_SET_EMBEDDINGS = """
UNWIND $rows AS r
MATCH (c:Chunk {id: r.id})
SET c.embedding = vecf32(r.vector), c.embedding_model = r.model, c.embedding_dim = r.dim
"""

NEO4J_SET_EMBEDDINGS = """
UNWIND $rows AS r
MATCH (c:Chunk {id: r.id})
SET c.embedding = r.vector, c.embedding_model = r.model, c.embedding_dim = r.dim
"""

# Chunks whose embedding is missing or was made by another model.
CHUNKS_TO_EMBED = """
MATCH (c:Chunk)
WHERE c.embedding_model IS NULL OR c.embedding_model <> $model
RETURN c.id, c.text
ORDER BY c.id
LIMIT $limit
"""

EMBEDDING_MODELS = """
MATCH (c:Chunk)
WHERE c.embedding_dim IS NOT NULL
RETURN c.embedding_model, c.embedding_dim, count(c)
"""

CLEAR_EMBEDDINGS = """
MATCH (c:Chunk)
WHERE c.embedding_dim IS NOT NULL AND c.embedding_dim <> $dim
SET c.embedding = NULL, c.embedding_model = NULL, c.embedding_dim = NULL
"""

# Versions of one path or URI: each is valid from its valid_from up to the next one's
# (valid_to null: the current one). Its chunks, mentions and relations carry the interval.
_INTERVAL = "SET {v}.valid_from = $valid_from, {v}.valid_to = $valid_to"
SET_DOCUMENT_INTERVAL = [
    f"MATCH (d:Document {{id: $document}}) {_INTERVAL.format(v='d')}",
    f"MATCH (c:Chunk {{document: $document}}) {_INTERVAL.format(v='c')}",
    f"MATCH (:Chunk {{document: $document}})-[m:MENTIONS]->() {_INTERVAL.format(v='m')}",
    f"MATCH ()-[r:RELATED {{document: $document}}]->() {_INTERVAL.format(v='r')}",
]

# -------------------------------------------------------------------------- deletions
MENTIONED_BY_DOCUMENT = """
MATCH (c:Chunk {document: $document})-[:MENTIONS]->(e:Entity)
RETURN DISTINCT e.id
"""

DELETE_DOCUMENT_RELATIONS = """
MATCH ()-[r:RELATED {document: $document}]->()
DELETE r
"""

DELETE_DOCUMENT_CHUNKS = """
MATCH (c:Chunk {document: $document})
DETACH DELETE c
"""

DELETE_DOCUMENT = """
MATCH (d:Document {id: $document})
DETACH DELETE d
"""

# Entities left without any mention (of the ones the removed document mentioned).
DELETE_ORPHANS = """
UNWIND $ids AS id
MATCH (e:Entity {id: id})
OPTIONAL MATCH (e)<-[m:MENTIONS]-()
WITH e, count(m) AS mentions
WHERE mentions = 0
DETACH DELETE e
RETURN count(*)
"""

# ------------------------------------------------------------------------------ reads
_DOCUMENT = "d.id, d.uri, d.title, d.chunks, d.valid_from, d.valid_to, d.ingested"

DOCUMENT_BY_URI = f"""
MATCH (d:Document {{uri: $uri}})
RETURN {_DOCUMENT}
ORDER BY coalesce(d.valid_from, 0), d.ingested
"""

DOCUMENT_BY_ID = f"""
MATCH (d:Document {{id: $id}})
RETURN {_DOCUMENT}
"""

DOCUMENTS_BY_PREFIX = f"""
MATCH (d:Document)
WHERE d.id STARTS WITH $prefix
RETURN {_DOCUMENT}
"""

# A search hit's citation: the chunk, where it sits, and its document.
CHUNKS_BY_ID = """
UNWIND $ids AS id
MATCH (c:Chunk {id: id})
MATCH (d:Document {id: c.document})
RETURN c.id, c.text, c.start, c.end, c.page, c.heading, d.id, d.uri, d.title,
       d.valid_from, d.valid_to
"""

# Graph expansion: entities whose normalised name or alias key is among the query's
# n-grams, the chunks that mention them, and the chunks that mention their neighbours.
ENTITIES_BY_KEYS = """
UNWIND $keys AS k
MATCH (e:Entity {key: k})
RETURN DISTINCT e.id, e.name
"""

_MENTION_VALID = VALID_AT.format(v="c")

CHUNKS_MENTIONING = f"""
UNWIND $ids AS id
MATCH (c:Chunk)-[:MENTIONS]->(e:Entity {{id: id}})
WHERE {_MENTION_VALID}
RETURN c.id, count(DISTINCT e) AS found
ORDER BY found DESC, c.id
LIMIT $k
"""

CHUNKS_MENTIONING_NEIGHBOURS = f"""
UNWIND $ids AS id
MATCH (:Entity {{id: id}})-[r:RELATED]-(n:Entity)<-[:MENTIONS]-(c:Chunk)
WHERE {VALID_AT.format(v="r")} AND {_MENTION_VALID}
RETURN c.id, count(DISTINCT n) AS found
ORDER BY found DESC, c.id
LIMIT $k
"""

CHUNKS_OF = """
MATCH (c:Chunk {document: $document})
RETURN count(c)
"""

ENTITY_CATALOG = """
MATCH (e:Entity)
WHERE e.type IN $types
RETURN e.id, e.name, e.type, e.key, e.aliases, e.confidence
"""

ENTITY_BY_KEY = """
MATCH (e:Entity {key: $key})
RETURN e.id, e.name, e.type, e.aliases, e.confidence
"""

ENTITY_BY_ID = """
MATCH (e:Entity {id: $id})
RETURN e.id, e.name, e.type, e.aliases, e.confidence
"""

ENTITY_ALIASES = """
MATCH (e:Entity)
RETURN e.id, e.type, e.aliases
"""

ENTITY_NAMES = """
MATCH (e:Entity)
RETURN e.name
"""

NEIGHBOURS_OUT = f"""
MATCH (e:Entity {{id: $id}})-[r:RELATED]->(o:Entity)
WHERE {VALID_AT.format(v="r")}
RETURN r.type, r.confidence, o.id, o.name, o.type, r.document
ORDER BY r.confidence DESC, o.name
LIMIT $limit
"""

NEIGHBOURS_IN = f"""
MATCH (e:Entity {{id: $id}})<-[r:RELATED]-(o:Entity)
WHERE {VALID_AT.format(v="r")}
RETURN r.type, r.confidence, o.id, o.name, o.type, r.document
ORDER BY r.confidence DESC, o.name
LIMIT $limit
"""

MENTIONS_OF = f"""
MATCH (c:Chunk)-[m:MENTIONS]->(e:Entity {{id: $id}})
WHERE {VALID_AT.format(v="c")}
MATCH (d:Document {{id: c.document}})
RETURN d.id, d.uri, c.id, c.text, c.start, m.start, m.end, m.text, m.confidence, m.extractor
ORDER BY d.uri, m.start
LIMIT $limit
"""

# What the graph held at time $t: the versions valid then, and the entities they mention.
COUNT_DOCUMENTS = f"MATCH (d:Document) WHERE {VALID_AT.format(v='d')} RETURN count(d)"
COUNT_CHUNKS = f"MATCH (c:Chunk) WHERE {VALID_AT.format(v='c')} RETURN count(c)"
COUNT_MENTIONS = (f"MATCH (c:Chunk)-[m:MENTIONS]->(:Entity) WHERE {VALID_AT.format(v='c')} "
                  "RETURN count(m)")
ENTITIES_BY_TYPE = (f"MATCH (c:Chunk)-[:MENTIONS]->(e:Entity) WHERE {VALID_AT.format(v='c')} "
                    "WITH DISTINCT e RETURN e.type, count(e)")
RELATIONS_BY_TYPE = (f"MATCH (:Entity)-[r:RELATED]->(:Entity) WHERE {VALID_AT.format(v='r')} "
                     "RETURN r.type, count(r)")

EXPORT_NODES = """
MATCH (n)
RETURN labels(n)[0], n.id, properties(n)
"""

EXPORT_EDGES = """
MATCH (a)-[r]->(b)
RETURN a.id, type(r), b.id, properties(r)
"""

# ------------------------------------------------------------- read-only user queries
_STRINGS = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|`[^`]*`")
_COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_WRITE_CLAUSES = re.compile(  # keywords, not properties or parameters named like them
    r"(?<![.$\w])(CREATE|MERGE|DELETE|DETACH|SET|REMOVE|DROP|LOAD\s+CSV|FOREACH)\b"
    r"|(?<![.$\w])CALL\s+(db\.idx|dbms|apoc|gds|db\.create|db\.drop)", re.I)


def writes(statement: str) -> str | None:
    """The first write clause in ``statement`` (outside strings and comments), or None.

    A courtesy check that gives a clear message before the store's own read-only mode
    (FalkorDB's GRAPH.RO_QUERY, Neo4j's READ access mode) refuses the statement anyway.
    """
    bare = _STRINGS.sub("''", _COMMENTS.sub(" ", statement))
    found = _WRITE_CLAUSES.search(bare)
    return found.group(0).upper() if found else None
